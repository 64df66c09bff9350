// The DER SubjectPublicKeyInfo of a token public-key object, built with
// OpenSSL from its PKCS#11 attributes.
#pragma once

#include <array>
#include <cstdint>

#include "hsm/pkcs11/ck.h"
#include "hsm/secure_element.h"

namespace m2mvault::hsm::pkcs11 {

// DER of the prime256v1 OID, the CKA_EC_PARAMS of a P-256 key.
inline constexpr std::array<std::uint8_t, 10> kP256Params{0x06, 0x08, 0x2a, 0x86, 0x48,
                                                          0xce, 0x3d, 0x03, 0x01, 0x07};

struct PublicKey {
  Bytes spki;
  SigningAlgorithm algorithm;
};

// Reads CKA_KEY_TYPE and the key's public attributes. Throws
// Error(unsupported) unless the key is EC P-256 or RSA-2048.
PublicKey read_public_key(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session,
                          CK_OBJECT_HANDLE public_object);

}  // namespace m2mvault::hsm::pkcs11
