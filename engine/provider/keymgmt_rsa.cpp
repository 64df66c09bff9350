// KEYMGMT "RSA": vault RSA keys and every ordinary RSA key (keymgmt.h).
#include <openssl/core_names.h>
#include <openssl/params.h>

#include "engine/provider/keymgmt.h"

namespace m2mvault::provider {

template <>
const char* KeymgmtFunctions<KeyType::rsa>::query_operation_name(int operation_id) {
  switch (operation_id) {
    case OSSL_OP_SIGNATURE:
    case OSSL_OP_ASYM_CIPHER:
      return "RSA";
    default:
      return nullptr;
  }
}

namespace {

const OSSL_PARAM kRsaKeyTypes[] = {OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, nullptr, 0),
                                   OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, nullptr, 0),
                                   OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_D, nullptr, 0),
                                   OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_FACTOR1, nullptr, 0),
                                   OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_FACTOR2, nullptr, 0),
                                   OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_EXPONENT1, nullptr, 0),
                                   OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_EXPONENT2, nullptr, 0),
                                   OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_COEFFICIENT1, nullptr, 0),
                                   OSSL_PARAM_END};

}  // namespace

template <>
const OSSL_PARAM* KeymgmtFunctions<KeyType::rsa>::key_types(int) {
  return kRsaKeyTypes;
}

}  // namespace m2mvault::provider
