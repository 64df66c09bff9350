#include "engine/provider/store.h"

#include <openssl/core_names.h>
#include <openssl/params.h>
#include <openssl/store.h>

#include <memory>
#include <string>
#include <string_view>

#include "api/encoding.h"
#include "engine/provider/key.h"
#include "engine/provider/provider.h"

namespace m2mvault::provider {
namespace {

constexpr std::string_view kScheme = "m2mvault:";

struct StoreLoad {
  const ProviderContext& provider;
  std::string name;
  int expect = 0;  // an OSSL_STORE_INFO_* type, 0 for any
  bool done = false;
};

// The key name of a URI: everything after the scheme, %XX unescaped.
std::optional<std::string> key_name_of(std::string_view uri) {
  if (!uri.starts_with(kScheme)) return std::nullopt;
  uri.remove_prefix(kScheme.size());
  std::string name;
  for (std::size_t i = 0; i < uri.size(); ++i) {
    if (uri[i] != '%') {
      name.push_back(uri[i]);
      continue;
    }
    if (i + 2 >= uri.size()) return std::nullopt;
    const int hi = encoding::hex_value(uri[i + 1]);
    const int lo = encoding::hex_value(uri[i + 2]);
    if (hi < 0 || lo < 0) return std::nullopt;
    name.push_back(static_cast<char>(hi << 4 | lo));
    i += 2;
  }
  if (name.empty()) return std::nullopt;
  return name;
}

void* open(void* provctx, const char* uri) {
  const auto& provider = *static_cast<ProviderContext*>(provctx);
  auto name = key_name_of(uri);
  if (!name) {
    raise_error(provider, kNotAVaultKey, "not an m2mvault:<key name> URI: %s", uri);
    return nullptr;
  }
  return std::make_unique<StoreLoad>(StoreLoad{provider, std::move(*name)}).release();
}

const OSSL_PARAM kSettable[] = {OSSL_PARAM_int(OSSL_STORE_PARAM_EXPECT, nullptr), OSSL_PARAM_END};

const OSSL_PARAM* settable_ctx_params(void*) {
  return kSettable;
}

int set_ctx_params(void* loaderctx, const OSSL_PARAM params[]) {
  auto* load = static_cast<StoreLoad*>(loaderctx);
  const OSSL_PARAM* p = OSSL_PARAM_locate_const(params, OSSL_STORE_PARAM_EXPECT);
  return p == nullptr || OSSL_PARAM_get_int(p, &load->expect) == 1;
}

int load(void* loaderctx, OSSL_CALLBACK* object_cb, void* object_cbarg, OSSL_PASSPHRASE_CALLBACK*,
         void*) {
  auto* load = static_cast<StoreLoad*>(loaderctx);
  if (load->done) return 0;
  load->done = true;
  if (load->expect != 0 && load->expect != OSSL_STORE_INFO_PKEY) return 0;
  auto key = load_vault_key(load->provider, load->name, std::nullopt);
  if (!key) return 0;
  return pass_key_reference(std::move(key), object_cb, object_cbarg);
}

int eof(void* loaderctx) {
  return static_cast<StoreLoad*>(loaderctx)->done ? 1 : 0;
}

int close(void* loaderctx) {
  std::unique_ptr<StoreLoad> owned(static_cast<StoreLoad*>(loaderctx));
  return 1;
}

}  // namespace

const OSSL_DISPATCH kStoreFunctions[] = {
    {OSSL_FUNC_STORE_OPEN, reinterpret_cast<void (*)()>(open)},
    {OSSL_FUNC_STORE_SETTABLE_CTX_PARAMS, reinterpret_cast<void (*)()>(settable_ctx_params)},
    {OSSL_FUNC_STORE_SET_CTX_PARAMS, reinterpret_cast<void (*)()>(set_ctx_params)},
    {OSSL_FUNC_STORE_LOAD, reinterpret_cast<void (*)()>(load)},
    {OSSL_FUNC_STORE_EOF, reinterpret_cast<void (*)()>(eof)},
    {OSSL_FUNC_STORE_CLOSE, reinterpret_cast<void (*)()>(close)},
    {0, nullptr}};

}  // namespace m2mvault::provider
