// DER SubjectPublicKeyInfo from public key parameters, built with OpenSSL:
// what both backends report as a signing key's public half; and the DER
// form of the ECDSA signatures both backends' tokens return as (r, s).
#pragma once

#include <openssl/params.h>

#include <cstdint>
#include <span>

#include "hsm/secure_element.h"

namespace m2mvault::hsm {

// The SPKI of the public key `params` describe, for OpenSSL key type
// `key_type` ("EC", "RSA"). Throws Error(internal) naming `what` when they
// do not make a valid key.
Bytes spki_from_params(const char* key_type, const OSSL_PARAM* params, const char* what);

// The SPKI of an EC P-256 public key given as its uncompressed point
// (0x04 || X || Y, 65 bytes). Throws Error(internal) when it is no point
// of the curve.
Bytes p256_spki(std::span<const std::uint8_t> point);

// An ECDSA signature given as big-endian r and s, as DER ECDSA-Sig-Value.
Bytes ecdsa_der(std::span<const std::uint8_t> r, std::span<const std::uint8_t> s);

}  // namespace m2mvault::hsm
