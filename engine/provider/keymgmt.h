// KEYMGMT for EC and RSA: vault keys (name + public half) and ordinary
// software keys alike. Everything about a key's public half, and everything
// about software keys, is delegated to the default provider in the
// provider's software library context. The parts that differ by
// type are in keymgmt_ec.cpp and keymgmt_rsa.cpp.
#pragma once

#include <openssl/core_dispatch.h>

#include "engine/provider/key_reference.h"

namespace m2mvault::provider {

// The functions both tables share, for a key type.
template <KeyType type>
struct KeymgmtFunctions {
  static void* new_key(void* provctx);
  static void* gen_init(void* provctx, int selection, const OSSL_PARAM params[]);
  static void* load(const void* reference, size_t reference_size);
  static const OSSL_PARAM* gettable_params(void* provctx);
  static const OSSL_PARAM* settable_params(void* provctx);
  static const OSSL_PARAM* gen_settable_params(void* genctx, void* provctx);
  // Per type, in keymgmt_ec.cpp and keymgmt_rsa.cpp.
  static const char* query_operation_name(int operation_id);
  static const OSSL_PARAM* key_types(int selection);
  // The dispatch table (keymgmt.cpp).
  static const OSSL_DISPATCH functions[];
};

template <>
const char* KeymgmtFunctions<KeyType::ec>::query_operation_name(int operation_id);
template <>
const OSSL_PARAM* KeymgmtFunctions<KeyType::ec>::key_types(int selection);
template <>
const char* KeymgmtFunctions<KeyType::rsa>::query_operation_name(int operation_id);
template <>
const OSSL_PARAM* KeymgmtFunctions<KeyType::rsa>::key_types(int selection);

// Type-independent functions (the key object knows its type).
void free_key(void* keydata);
int get_params(void* keydata, OSSL_PARAM params[]);
int set_params(void* keydata, const OSSL_PARAM params[]);
int has(const void* keydata, int selection);
int match(const void* keydata1, const void* keydata2, int selection);
int validate(const void* keydata, int selection, int checktype);
int import(void* keydata, int selection, const OSSL_PARAM params[]);
int export_key(void* keydata, int selection, OSSL_CALLBACK* param_cb, void* cbarg);
void* dup(const void* keydata, int selection);
int gen_set_template(void* genctx, void* templ);
int gen_set_params(void* genctx, const OSSL_PARAM params[]);
void* gen(void* genctx, OSSL_CALLBACK* cb, void* cbarg);
void gen_cleanup(void* genctx);

}  // namespace m2mvault::provider
