// KEYMGMT "EC": vault EC keys and every ordinary EC key (keymgmt.h).
#include <openssl/core_names.h>
#include <openssl/params.h>

#include "engine/provider/keymgmt.h"

namespace m2mvault::provider {
namespace {

using Functions = KeymgmtFunctions<KeyType::ec>;

const char* query_operation_name(int operation_id) {
  switch (operation_id) {
    case OSSL_OP_SIGNATURE:
      return "ECDSA";
    case OSSL_OP_KEYEXCH:
      return "ECDH";
    default:
      return nullptr;
  }
}

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

const OSSL_PARAM* key_types(int) {
  return kEcKeyTypes;
}

}  // namespace

const OSSL_DISPATCH kEcKeymgmtFunctions[] = {
    {OSSL_FUNC_KEYMGMT_NEW, reinterpret_cast<void (*)()>(Functions::new_key)},
    {OSSL_FUNC_KEYMGMT_FREE, reinterpret_cast<void (*)()>(free_key)},
    {OSSL_FUNC_KEYMGMT_LOAD, reinterpret_cast<void (*)()>(Functions::load)},
    {OSSL_FUNC_KEYMGMT_GET_PARAMS, reinterpret_cast<void (*)()>(get_params)},
    {OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, reinterpret_cast<void (*)()>(Functions::gettable_params)},
    {OSSL_FUNC_KEYMGMT_SET_PARAMS, reinterpret_cast<void (*)()>(set_params)},
    {OSSL_FUNC_KEYMGMT_SETTABLE_PARAMS, reinterpret_cast<void (*)()>(Functions::settable_params)},
    {OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, reinterpret_cast<void (*)()>(query_operation_name)},
    {OSSL_FUNC_KEYMGMT_HAS, reinterpret_cast<void (*)()>(has)},
    {OSSL_FUNC_KEYMGMT_MATCH, reinterpret_cast<void (*)()>(match)},
    {OSSL_FUNC_KEYMGMT_VALIDATE, reinterpret_cast<void (*)()>(validate)},
    {OSSL_FUNC_KEYMGMT_IMPORT, reinterpret_cast<void (*)()>(import)},
    {OSSL_FUNC_KEYMGMT_IMPORT_TYPES, reinterpret_cast<void (*)()>(key_types)},
    {OSSL_FUNC_KEYMGMT_EXPORT, reinterpret_cast<void (*)()>(export_key)},
    {OSSL_FUNC_KEYMGMT_EXPORT_TYPES, reinterpret_cast<void (*)()>(key_types)},
    {OSSL_FUNC_KEYMGMT_DUP, reinterpret_cast<void (*)()>(dup)},
    {OSSL_FUNC_KEYMGMT_GEN_INIT, reinterpret_cast<void (*)()>(Functions::gen_init)},
    {OSSL_FUNC_KEYMGMT_GEN_SET_TEMPLATE, reinterpret_cast<void (*)()>(gen_set_template)},
    {OSSL_FUNC_KEYMGMT_GEN_SET_PARAMS, reinterpret_cast<void (*)()>(gen_set_params)},
    {OSSL_FUNC_KEYMGMT_GEN_SETTABLE_PARAMS,
     reinterpret_cast<void (*)()>(Functions::gen_settable_params)},
    {OSSL_FUNC_KEYMGMT_GEN, reinterpret_cast<void (*)()>(gen)},
    {OSSL_FUNC_KEYMGMT_GEN_CLEANUP, reinterpret_cast<void (*)()>(gen_cleanup)},
    {0, nullptr}};

}  // namespace m2mvault::provider
