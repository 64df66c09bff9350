// DECODER for m2mvault key reference files (key_reference.h): from the DER
// PrivateKeyInfo that the default provider's PEM-to-DER step makes of the
// file (in OSSL_STORE's file: loader and in PEM_read_bio_PrivateKey, which
// nginx and curl use), to a vault key object (key.h).
#pragma once

#include <openssl/core_dispatch.h>

namespace m2mvault::provider {

extern const OSSL_DISPATCH kEcKeyReferenceDecoderFunctions[];
extern const OSSL_DISPATCH kRsaKeyReferenceDecoderFunctions[];

}  // namespace m2mvault::provider
