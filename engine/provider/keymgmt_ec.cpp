// KEYMGMT "EC": vault EC keys and every ordinary EC key (keymgmt.h).
#include <openssl/core_names.h>
#include <openssl/params.h>

#include "engine/provider/keymgmt.h"

namespace m2mvault::provider {

template <>
const char* KeymgmtFunctions<KeyType::ec>::query_operation_name(int operation_id) {
  switch (operation_id) {
    case OSSL_OP_SIGNATURE:
      return "ECDSA";
    case OSSL_OP_KEYEXCH:
      return "ECDH";
    default:
      return nullptr;
  }
}

namespace {

const OSSL_PARAM kEcKeyTypes[] = {
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_FIELD_TYPE, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_EC_P, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_EC_A, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_EC_B, nullptr, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_EC_GENERATOR, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_EC_ORDER, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_EC_COFACTOR, nullptr, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_EC_SEED, nullptr, 0),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_USE_COFACTOR_ECDH, nullptr),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_EC_INCLUDE_PUBLIC, nullptr),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_PRIV_KEY, nullptr, 0),
    OSSL_PARAM_END};

}  // namespace

template <>
const OSSL_PARAM* KeymgmtFunctions<KeyType::ec>::key_types(int) {
  return kEcKeyTypes;
}

}  // namespace m2mvault::provider
