// SIGNATURE for ECDSA and RSA. A vault key's private operation is one `sign`
// request to the daemon with the digest; everything else (verification, and
// signing with software keys) runs in the software library context, which
// also handles the parameters (digest, padding, salt length, AlgorithmIdentifier)
// exactly as the default provider does. One dispatch table
// serves both, per key type.
#pragma once

#include <openssl/core_dispatch.h>

#include "engine/provider/key_reference.h"

namespace m2mvault::provider {

template <KeyType type>
struct SignatureFunctions {
  static void* newctx(void* provctx, const char* propq);
  static const OSSL_PARAM* gettable_ctx_params(void* ctx, void* provctx);
  static const OSSL_PARAM* settable_ctx_params(void* ctx, void* provctx);
  // The dispatch table (signature.cpp): "ECDSA" for ec, "RSA" for rsa.
  static const OSSL_DISPATCH functions[];
};

void signature_freectx(void* ctx);
void* signature_dupctx(void* ctx);
int signature_sign_init(void* ctx, void* provkey, const OSSL_PARAM params[]);
int signature_sign(void* ctx, unsigned char* sig, size_t* siglen, size_t sigsize,
                   const unsigned char* tbs, size_t tbslen);
int signature_verify_init(void* ctx, void* provkey, const OSSL_PARAM params[]);
int signature_verify(void* ctx, const unsigned char* sig, size_t siglen, const unsigned char* tbs,
                     size_t tbslen);
int signature_digest_sign_init(void* ctx, const char* mdname, void* provkey,
                               const OSSL_PARAM params[]);
int signature_digest_update(void* ctx, const unsigned char* data, size_t datalen);
int signature_digest_sign_final(void* ctx, unsigned char* sig, size_t* siglen, size_t sigsize);
int signature_digest_verify_init(void* ctx, const char* mdname, void* provkey,
                                 const OSSL_PARAM params[]);
int signature_digest_verify_final(void* ctx, const unsigned char* sig, size_t siglen);
int signature_get_ctx_params(void* ctx, OSSL_PARAM params[]);
int signature_set_ctx_params(void* ctx, const OSSL_PARAM params[]);

}  // namespace m2mvault::provider
