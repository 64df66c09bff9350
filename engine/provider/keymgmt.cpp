#include "engine/provider/keymgmt.h"

#include <openssl/core_names.h>
#include <openssl/err.h>

#include <memory>

#include "engine/provider/key.h"
#include "engine/provider/provider.h"

namespace m2mvault::provider {
namespace {

const char* software_name(KeyType type) {
  return type == KeyType::ec ? "EC" : "RSA";
}

Key* key_of(void* keydata) {
  return static_cast<Key*>(keydata);
}
const Key* key_of(const void* keydata) {
  return static_cast<const Key*>(keydata);
}

// A key generation: a generation context in the software library context,
// plus an optional template key whose domain parameters are copied.
struct Generation {
  const ProviderContext& provider;
  KeyType type;
  int selection;
  EvpPkeyCtxPtr ctx;
  const Key* templ = nullptr;
};

}  // namespace

template <KeyType type>
void* KeymgmtFunctions<type>::new_key(void* provctx) {
  return std::make_unique<Key>(*static_cast<ProviderContext*>(provctx), type).release();
}

template <KeyType type>
void* KeymgmtFunctions<type>::load(const void* reference, size_t reference_size) {
  auto key = take_key_reference(reference, reference_size);
  if (!key || key->type() != type) return nullptr;
  return key.release();
}

template <KeyType type>
const OSSL_PARAM* KeymgmtFunctions<type>::gettable_params(void* provctx) {
  return EVP_KEYMGMT_gettable_params(
      static_cast<ProviderContext*>(provctx)->software_keymgmt(type));
}

template <KeyType type>
const OSSL_PARAM* KeymgmtFunctions<type>::settable_params(void* provctx) {
  return EVP_KEYMGMT_settable_params(
      static_cast<ProviderContext*>(provctx)->software_keymgmt(type));
}

template <KeyType type>
const OSSL_PARAM* KeymgmtFunctions<type>::gen_settable_params(void*, void* provctx) {
  return EVP_KEYMGMT_gen_settable_params(
      static_cast<ProviderContext*>(provctx)->software_keymgmt(type));
}

template <KeyType type>
void* KeymgmtFunctions<type>::gen_init(void* provctx, int selection, const OSSL_PARAM params[]) {
  const auto& provider = *static_cast<ProviderContext*>(provctx);
  auto generation =
      std::make_unique<Generation>(Generation{provider, type, selection, nullptr, nullptr});
  generation->ctx.reset(
      EVP_PKEY_CTX_new_from_name(provider.software_libctx(), software_name(type), nullptr));
  if (!generation->ctx) return nullptr;
  const bool keypair = (selection & OSSL_KEYMGMT_SELECT_KEYPAIR) != 0 || type == KeyType::rsa;
  const int ok = keypair ? EVP_PKEY_keygen_init(generation->ctx.get())
                         : EVP_PKEY_paramgen_init(generation->ctx.get());
  if (ok != 1) return nullptr;
  if (params != nullptr && EVP_PKEY_CTX_set_params(generation->ctx.get(), params) != 1) {
    return nullptr;
  }
  return generation.release();
}

template <KeyType type>
const OSSL_DISPATCH KeymgmtFunctions<type>::functions[] = {
    {OSSL_FUNC_KEYMGMT_NEW, reinterpret_cast<void (*)()>(new_key)},
    {OSSL_FUNC_KEYMGMT_FREE, reinterpret_cast<void (*)()>(free_key)},
    {OSSL_FUNC_KEYMGMT_LOAD, reinterpret_cast<void (*)()>(load)},
    {OSSL_FUNC_KEYMGMT_GET_PARAMS, reinterpret_cast<void (*)()>(get_params)},
    {OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, reinterpret_cast<void (*)()>(gettable_params)},
    {OSSL_FUNC_KEYMGMT_SET_PARAMS, reinterpret_cast<void (*)()>(set_params)},
    {OSSL_FUNC_KEYMGMT_SETTABLE_PARAMS, reinterpret_cast<void (*)()>(settable_params)},
    {OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, reinterpret_cast<void (*)()>(query_operation_name)},
    {OSSL_FUNC_KEYMGMT_HAS, reinterpret_cast<void (*)()>(has)},
    {OSSL_FUNC_KEYMGMT_MATCH, reinterpret_cast<void (*)()>(match)},
    {OSSL_FUNC_KEYMGMT_VALIDATE, reinterpret_cast<void (*)()>(validate)},
    {OSSL_FUNC_KEYMGMT_IMPORT, reinterpret_cast<void (*)()>(import)},
    {OSSL_FUNC_KEYMGMT_IMPORT_TYPES, reinterpret_cast<void (*)()>(key_types)},
    {OSSL_FUNC_KEYMGMT_EXPORT, reinterpret_cast<void (*)()>(export_key)},
    {OSSL_FUNC_KEYMGMT_EXPORT_TYPES, reinterpret_cast<void (*)()>(key_types)},
    {OSSL_FUNC_KEYMGMT_DUP, reinterpret_cast<void (*)()>(dup)},
    {OSSL_FUNC_KEYMGMT_GEN_INIT, reinterpret_cast<void (*)()>(gen_init)},
    {OSSL_FUNC_KEYMGMT_GEN_SET_TEMPLATE, reinterpret_cast<void (*)()>(gen_set_template)},
    {OSSL_FUNC_KEYMGMT_GEN_SET_PARAMS, reinterpret_cast<void (*)()>(gen_set_params)},
    {OSSL_FUNC_KEYMGMT_GEN_SETTABLE_PARAMS, reinterpret_cast<void (*)()>(gen_settable_params)},
    {OSSL_FUNC_KEYMGMT_GEN, reinterpret_cast<void (*)()>(gen)},
    {OSSL_FUNC_KEYMGMT_GEN_CLEANUP, reinterpret_cast<void (*)()>(gen_cleanup)},
    {0, nullptr}};

template struct KeymgmtFunctions<KeyType::ec>;
template struct KeymgmtFunctions<KeyType::rsa>;

void free_key(void* keydata) {
  std::unique_ptr<Key> owned(key_of(keydata));
}

int get_params(void* keydata, OSSL_PARAM params[]) {
  const Key* key = key_of(keydata);
  if (key == nullptr || key->pkey() == nullptr) return 0;
  return EVP_PKEY_get_params(key->pkey(), params);
}

int set_params(void* keydata, const OSSL_PARAM params[]) {
  Key* key = key_of(keydata);
  if (key == nullptr || key->pkey() == nullptr) return 0;
  if (key->in_vault()) {
    // The public half of a vault key is the token's: it cannot be replaced.
    return OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY) == nullptr &&
           OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_PUB_KEY) == nullptr;
  }
  if (EVP_PKEY_set_params(key->pkey(), const_cast<OSSL_PARAM*>(params)) != 1) return 0;
  key->refresh_contents();
  return 1;
}

int has(const void* keydata, int selection) {
  const Key* key = key_of(keydata);
  if (key == nullptr) return 0;
  bool ok = true;
  if ((selection & OSSL_KEYMGMT_SELECT_ALL_PARAMETERS) != 0) ok = ok && key->has_parameters();
  if ((selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) != 0) ok = ok && key->has_public();
  if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0) ok = ok && key->has_private();
  return ok ? 1 : 0;
}

int match(const void* keydata1, const void* keydata2, int selection) {
  const Key* a = key_of(keydata1);
  const Key* b = key_of(keydata2);
  if (a == nullptr || b == nullptr || a->pkey() == nullptr || b->pkey() == nullptr) return 0;
  if ((selection & OSSL_KEYMGMT_SELECT_KEYPAIR) != 0) return EVP_PKEY_eq(a->pkey(), b->pkey()) == 1;
  if ((selection & OSSL_KEYMGMT_SELECT_ALL_PARAMETERS) != 0) {
    return EVP_PKEY_parameters_eq(a->pkey(), b->pkey()) == 1;
  }
  return 1;
}

int validate(const void* keydata, int selection, int checktype) {
  const Key* key = key_of(keydata);
  if (key == nullptr || key->pkey() == nullptr) return 0;
  EvpPkeyCtxPtr ctx(
      EVP_PKEY_CTX_new_from_pkey(key->provider().software_libctx(), key->pkey(), nullptr));
  if (!ctx) return 0;
  const bool quick = checktype == OSSL_KEYMGMT_VALIDATE_QUICK_CHECK;
  if ((selection & OSSL_KEYMGMT_SELECT_ALL_PARAMETERS) != 0 && key->type() == KeyType::ec &&
      EVP_PKEY_param_check(ctx.get()) != 1) {
    return 0;
  }
  if ((selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) != 0 &&
      (quick ? EVP_PKEY_public_check_quick(ctx.get()) : EVP_PKEY_public_check(ctx.get())) != 1) {
    return 0;
  }
  // A vault key's private half is checked by the token that made it.
  if (!key->in_vault() && (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0) {
    const bool pair = (selection & OSSL_KEYMGMT_SELECT_KEYPAIR) == OSSL_KEYMGMT_SELECT_KEYPAIR;
    if ((pair ? EVP_PKEY_pairwise_check(ctx.get()) : EVP_PKEY_private_check(ctx.get())) != 1) {
      return 0;
    }
  }
  return 1;
}

int import(void* keydata, int selection, const OSSL_PARAM params[]) {
  Key* key = key_of(keydata);
  if (key == nullptr || key->in_vault()) return 0;
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(key->provider().software_libctx(),
                                               software_name(key->type()), nullptr));
  EVP_PKEY* imported = nullptr;
  if (!ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &imported, selection, const_cast<OSSL_PARAM*>(params)) != 1) {
    return 0;
  }
  key->set_software(EvpPkeyPtr(imported));
  return 1;
}

int export_key(void* keydata, int selection, OSSL_CALLBACK* param_cb, void* cbarg) {
  const Key* key = key_of(keydata);
  if (key == nullptr || key->pkey() == nullptr) return 0;
  // A vault key's private half never leaves the token. Failing here (quietly:
  // OpenSSL tries this while looking for an implementation) is what makes
  // EVP_DigestSignInit fall back to our own SIGNATURE instead of signing in
  // the default provider with the public half alone.
  if (key->in_vault() && (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0) return 0;
  return EVP_PKEY_export(key->pkey(), selection, param_cb, cbarg);
}

void* dup(const void* keydata, int) {
  const Key* key = key_of(keydata);
  if (key == nullptr) return nullptr;
  return key->duplicate().release();
}

int gen_set_template(void* genctx, void* templ) {
  auto* generation = static_cast<Generation*>(genctx);
  generation->templ = key_of(templ);
  return generation->templ != nullptr;
}

int gen_set_params(void* genctx, const OSSL_PARAM params[]) {
  auto* generation = static_cast<Generation*>(genctx);
  return EVP_PKEY_CTX_set_params(generation->ctx.get(), params);
}

void* gen(void* genctx, OSSL_CALLBACK*, void*) {
  auto* generation = static_cast<Generation*>(genctx);
  if (generation->templ != nullptr && generation->templ->pkey() != nullptr) {
    // The template's domain parameters (an EC group) go to the generation.
    OSSL_PARAM* domain = nullptr;
    if (EVP_PKEY_todata(generation->templ->pkey(), EVP_PKEY_KEY_PARAMETERS, &domain) != 1) {
      return nullptr;
    }
    ParamPtr owned(domain);
    if (EVP_PKEY_CTX_set_params(generation->ctx.get(), domain) != 1) return nullptr;
  }
  EVP_PKEY* made = nullptr;
  if (EVP_PKEY_generate(generation->ctx.get(), &made) != 1) return nullptr;
  auto key = std::make_unique<Key>(generation->provider, generation->type);
  key->set_software(EvpPkeyPtr(made));
  return key.release();
}

void gen_cleanup(void* genctx) {
  std::unique_ptr<Generation> owned(static_cast<Generation*>(genctx));
}

}  // namespace m2mvault::provider
