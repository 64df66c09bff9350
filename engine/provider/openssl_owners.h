// unique_ptr owners for the OpenSSL handles the provider holds, in the style
// of hsm/pkcs11/openssl_ptr.h.
#pragma once

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/provider.h>
#include <openssl/store.h>

#include <memory>

#include "hsm/pkcs11/openssl_ptr.h"

namespace m2mvault::provider {

using hsm::pkcs11::EvpPkeyCtxPtr;
using hsm::pkcs11::EvpPkeyPtr;
using hsm::pkcs11::OpenSslDeleter;
using hsm::pkcs11::ParamPtr;

using BioPtr = std::unique_ptr<BIO, OpenSslDeleter<BIO_free>>;
using EvpMdPtr = std::unique_ptr<EVP_MD, OpenSslDeleter<EVP_MD_free>>;
using EvpMdCtxPtr = std::unique_ptr<EVP_MD_CTX, OpenSslDeleter<EVP_MD_CTX_free>>;
using EvpKeymgmtPtr = std::unique_ptr<EVP_KEYMGMT, OpenSslDeleter<EVP_KEYMGMT_free>>;
using EvpSignaturePtr = std::unique_ptr<EVP_SIGNATURE, OpenSslDeleter<EVP_SIGNATURE_free>>;
using LibCtxPtr = std::unique_ptr<OSSL_LIB_CTX, OpenSslDeleter<OSSL_LIB_CTX_free>>;
// For programs that open m2mvault: URIs through OSSL_STORE (tests, benchmarks).
using StoreCtxPtr = std::unique_ptr<OSSL_STORE_CTX, OpenSslDeleter<OSSL_STORE_close>>;
using StoreInfoPtr = std::unique_ptr<OSSL_STORE_INFO, OpenSslDeleter<OSSL_STORE_INFO_free>>;

// Unloading a provider returns 1 or 0; the deleter ignores it.
inline void unload_provider(OSSL_PROVIDER* provider) {
  (void)OSSL_PROVIDER_unload(provider);
}
using ProviderPtr = std::unique_ptr<OSSL_PROVIDER, OpenSslDeleter<unload_provider>>;

}  // namespace m2mvault::provider
