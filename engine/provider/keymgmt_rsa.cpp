// KEYMGMT "RSA": vault RSA keys and every ordinary RSA key (keymgmt.h).
#include <openssl/core_names.h>
#include <openssl/params.h>

#include "engine/provider/keymgmt.h"

namespace m2mvault::provider {
namespace {

using Functions = KeymgmtFunctions<KeyType::rsa>;

const char* query_operation_name(int operation_id) {
  switch (operation_id) {
    case OSSL_OP_SIGNATURE:
    case OSSL_OP_ASYM_CIPHER:
      return "RSA";
    default:
      return nullptr;
  }
}

const OSSL_PARAM kRsaKeyTypes[] = {OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, nullptr, 0),
                                   OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, nullptr, 0),
                                   OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_D, nullptr, 0),
                                   OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_FACTOR1, nullptr, 0),
                                   OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_FACTOR2, nullptr, 0),
                                   OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_EXPONENT1, nullptr, 0),
                                   OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_EXPONENT2, nullptr, 0),
                                   OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_COEFFICIENT1, nullptr, 0),
                                   OSSL_PARAM_END};

const OSSL_PARAM* key_types(int) {
  return kRsaKeyTypes;
}

}  // namespace

const OSSL_DISPATCH kRsaKeymgmtFunctions[] = {
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
