// An EVP_PKEY for a TPM signing key, for libssl and X509_REQ_sign: the public
// half is the key's, its ECDSA signatures are made by TPM2_Sign.
#pragma once

#include <openssl/types.h>

#include <memory>

#include "hsm/tpm2/tpm2.h"

namespace m2mvault::hsm::tpm2 {

// The key of `blob` (a signing-key blob) as an EC EVP_PKEY whose private
// operation calls tpm->sign_digest(). The EVP_PKEY keeps `tpm` alive. Any
// digest length is taken as ECDSA takes it on P-256 (the leftmost 256 bits;
// a shorter digest as the same integer). Throws Error(invalid_argument) for
// a blob that is not a signing key.
std::shared_ptr<EVP_PKEY> make_private_key(std::shared_ptr<Tpm2> tpm,
                                           std::span<const std::uint8_t> blob);

// A digest as one TPM2_Sign with ECDSA-SHA-256 takes it on P-256: the same
// integer ECDSA would use (truncated to 32 bytes, or zero-padded on the left).
Bytes p256_digest(std::span<const std::uint8_t> digest);

}  // namespace m2mvault::hsm::tpm2
