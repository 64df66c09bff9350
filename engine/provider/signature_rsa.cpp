// SIGNATURE "RSA" (PKCS#1 v1.5 and PSS): vault keys sign in the daemon, everything else in software
// (signature.h).
#include "engine/provider/signature.h"

namespace m2mvault::provider {
namespace {
using Functions = SignatureFunctions<KeyType::rsa>;
}  // namespace

const OSSL_DISPATCH kRsaSignatureFunctions[] = {
    {OSSL_FUNC_SIGNATURE_NEWCTX, reinterpret_cast<void (*)()>(Functions::newctx)},
    {OSSL_FUNC_SIGNATURE_FREECTX, reinterpret_cast<void (*)()>(signature_freectx)},
    {OSSL_FUNC_SIGNATURE_DUPCTX, reinterpret_cast<void (*)()>(signature_dupctx)},
    {OSSL_FUNC_SIGNATURE_SIGN_INIT, reinterpret_cast<void (*)()>(signature_sign_init)},
    {OSSL_FUNC_SIGNATURE_SIGN, reinterpret_cast<void (*)()>(signature_sign)},
    {OSSL_FUNC_SIGNATURE_VERIFY_INIT, reinterpret_cast<void (*)()>(signature_verify_init)},
    {OSSL_FUNC_SIGNATURE_VERIFY, reinterpret_cast<void (*)()>(signature_verify)},
    {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_INIT,
     reinterpret_cast<void (*)()>(signature_digest_sign_init)},
    {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_UPDATE, reinterpret_cast<void (*)()>(signature_digest_update)},
    {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_FINAL,
     reinterpret_cast<void (*)()>(signature_digest_sign_final)},
    {OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_INIT,
     reinterpret_cast<void (*)()>(signature_digest_verify_init)},
    {OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_UPDATE,
     reinterpret_cast<void (*)()>(signature_digest_update)},
    {OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_FINAL,
     reinterpret_cast<void (*)()>(signature_digest_verify_final)},
    {OSSL_FUNC_SIGNATURE_GET_CTX_PARAMS, reinterpret_cast<void (*)()>(signature_get_ctx_params)},
    {OSSL_FUNC_SIGNATURE_GETTABLE_CTX_PARAMS,
     reinterpret_cast<void (*)()>(Functions::gettable_ctx_params)},
    {OSSL_FUNC_SIGNATURE_SET_CTX_PARAMS, reinterpret_cast<void (*)()>(signature_set_ctx_params)},
    {OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS,
     reinterpret_cast<void (*)()>(Functions::settable_ctx_params)},
    {0, nullptr}};

}  // namespace m2mvault::provider
