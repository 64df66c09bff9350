#include "engine/provider/signature.h"

#include <openssl/core_names.h>
#include <openssl/rsa.h>

#include <cstring>
#include <memory>
#include <string>

#include "api/encoding.h"
#include "engine/provider/key.h"
#include "engine/provider/provider.h"

namespace m2mvault::provider {
namespace {

struct Signing {
  const ProviderContext& provider;
  KeyType type;
  const Key* key = nullptr;
  // On key->pkey() in the software context, sign- or verify-initialized. An
  // ECDSA signature by a vault key needs nothing from it, so there it is made
  // only when parameters are asked for or set (make_op): a TLS handshake
  // then spends no software key context on its signature.
  EvpPkeyCtxPtr op;
  EvpMdCtxPtr md;  // the message digest of digest_sign / digest_verify
  bool signing = false;
  bool initialized = false;  // by sign_init, verify_init or a digest init
  std::string mdname;        // the digest named at init, while op is not made
};

Signing* signing_of(void* ctx) {
  return static_cast<Signing*>(ctx);
}

bool set_digest(EVP_PKEY_CTX* op, const char* mdname) {
  OSSL_PARAM digest[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, const_cast<char*>(mdname), 0),
      OSSL_PARAM_construct_end()};
  return EVP_PKEY_CTX_set_params(op, digest) == 1;
}

// Makes the software operation context (once), initialized as the
// operation and with the digest named at init.
bool make_op(Signing& s) {
  if (s.op) return true;
  if (!s.initialized || s.key == nullptr || s.key->pkey() == nullptr) return false;
  EvpPkeyCtxPtr op(EVP_PKEY_CTX_new_from_pkey(s.provider.software_libctx(), s.key->pkey(), nullptr));
  if (!op) return false;
  // The default provider accepts a sign init on a public key (it fails only
  // in the sign call): a vault key's parameters are handled there too.
  if ((s.signing ? EVP_PKEY_sign_init(op.get()) : EVP_PKEY_verify_init(op.get())) != 1) return false;
  if (!s.mdname.empty() && !set_digest(op.get(), s.mdname.c_str())) return false;
  s.op = std::move(op);
  s.mdname.clear();
  return true;
}

// The digest named by the operation's parameters ("" when none is set).
std::string digest_name(const Signing& s) {
  if (!s.op) return s.mdname;
  char name[64] = "";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, name, sizeof name),
      OSSL_PARAM_construct_end()};
  if (EVP_PKEY_CTX_get_params(s.op.get(), params) != 1) return "";
  return name;
}

bool start_digest(Signing& s, const char* mdname) {
  EvpMdPtr md(EVP_MD_fetch(s.provider.software_libctx(), mdname, nullptr));
  if (!md) {
    raise_error(s.provider, kUnsupported, "unknown digest %s", mdname);
    return false;
  }
  s.md.reset(EVP_MD_CTX_new());
  return s.md && EVP_DigestInit_ex2(s.md.get(), md.get(), nullptr) == 1;
}

int init(void* ctx, void* provkey, const OSSL_PARAM params[], bool signing, const char* mdname) {
  Signing& s = *signing_of(ctx);
  if (provkey != nullptr) s.key = static_cast<const Key*>(provkey);
  if (s.key == nullptr || s.key->pkey() == nullptr) return 0;
  s.signing = signing;
  s.initialized = true;
  s.md.reset();
  s.op.reset();
  s.mdname = mdname != nullptr ? mdname : "";
  const bool deferred = signing && s.type == KeyType::ec && s.key->in_vault() &&
                        (params == nullptr || params[0].key == nullptr);
  if (deferred) return 1;
  if (!make_op(s)) return 0;
  if (params != nullptr && EVP_PKEY_CTX_set_params(s.op.get(), params) != 1) return 0;
  return 1;
}

int digest_init(void* ctx, const char* mdname, void* provkey, const OSSL_PARAM params[],
                bool signing) {
  Signing& s = *signing_of(ctx);
  const char* name = mdname != nullptr && *mdname != '\0' ? mdname : "SHA256";
  if (init(ctx, provkey, params, signing, name) != 1) return 0;
  const std::string chosen = digest_name(s);
  return start_digest(s, chosen.empty() ? name : chosen.c_str()) ? 1 : 0;
}

// The daemon's `scheme` for this operation, or nullptr (error raised) when the
// daemon cannot make the signature asked for.
const char* vault_scheme(const Signing& s, size_t digest_size) {
  if (digest_size != 32 && digest_size != 48 && digest_size != 64) {
    raise_error(s.provider, kUnsupported,
                "m2mvaultd signs SHA-256, SHA-384 or SHA-512 digests, not %zu bytes", digest_size);
    return nullptr;
  }
  if (s.type == KeyType::ec) return "ecdsa";
  const std::string md = digest_name(s);
  EvpMdPtr fetched(md.empty() ? nullptr
                              : EVP_MD_fetch(s.provider.software_libctx(), md.c_str(), nullptr));
  if (!fetched || static_cast<size_t>(EVP_MD_get_size(fetched.get())) != digest_size) {
    raise_error(s.provider, kUnsupported,
                "RSA signing with a vault key needs the digest set (SHA-256, -384 or -512)");
    return nullptr;
  }
  int padding = RSA_PKCS1_PADDING;
  int saltlen = RSA_PSS_SALTLEN_DIGEST;
  char mgf1[64] = "";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_int(OSSL_SIGNATURE_PARAM_PAD_MODE, &padding),
                         OSSL_PARAM_construct_end()};
  if (!s.op || EVP_PKEY_CTX_get_params(s.op.get(), params) != 1) return nullptr;
  if (padding == RSA_PKCS1_PADDING) return "rsa-pkcs1";
  if (padding != RSA_PKCS1_PSS_PADDING) {
    raise_error(s.provider, kUnsupported, "m2mvaultd signs RSA with PKCS#1 v1.5 or PSS padding");
    return nullptr;
  }
  OSSL_PARAM pss[] = {
      OSSL_PARAM_construct_int(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, &saltlen),
      OSSL_PARAM_construct_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_DIGEST, mgf1, sizeof mgf1),
      OSSL_PARAM_construct_end()};
  if (EVP_PKEY_CTX_get_params(s.op.get(), pss) != 1) return nullptr;
  // The daemon's PSS uses a salt as long as the digest and MGF1 with the
  // same digest (what TLS 1.2 and 1.3 use); "auto" verifiers accept it too.
  const bool salt_ok = saltlen == RSA_PSS_SALTLEN_DIGEST || saltlen == RSA_PSS_SALTLEN_AUTO ||
                       saltlen == static_cast<int>(digest_size);
  const bool mgf1_ok = mgf1[0] == '\0' || EVP_MD_is_a(fetched.get(), mgf1);
  if (!salt_ok || !mgf1_ok) {
    raise_error(s.provider, kUnsupported,
                "m2mvaultd signs RSA-PSS only with salt length = digest length and MGF1 = digest");
    return nullptr;
  }
  return "rsa-pss";
}

int vault_sign(const Signing& s, unsigned char* sig, size_t* siglen, size_t sigsize,
               const unsigned char* digest, size_t digest_size) {
  const char* scheme = vault_scheme(s, digest_size);
  if (scheme == nullptr) return 0;
  std::string encoded;
  try {
    const auto result = s.key->provider().daemon->call(
        "sign", {{"key", s.key->vault_name()},
                 {"digest", encoding::base64_encode({digest, digest_size})},
                 {"scheme", scheme}});
    encoded = result.at("signature").get<std::string>();
  } catch (const Error& error) {
    raise_daemon_error(s.provider, error, s.key->vault_name());
    return 0;
  } catch (const nlohmann::json::exception&) {
    raise_error(s.provider, kDaemonError, "unexpected answer from m2mvaultd signing with %s",
                s.key->vault_name().c_str());
    return 0;
  } catch (const std::exception& failure) {  // no exception may reach OpenSSL
    raise_error(s.provider, kDaemonError, "signing with %s failed: %s", s.key->vault_name().c_str(),
                failure.what());
    return 0;
  }
  auto signature = encoding::base64_decode(encoded);
  if (!signature || signature->size() > sigsize) {
    raise_error(s.provider, kDaemonError, "m2mvaultd returned a malformed signature for %s",
                s.key->vault_name().c_str());
    return 0;
  }
  std::memcpy(sig, signature->data(), signature->size());
  *siglen = signature->size();
  return 1;
}

}  // namespace

template <KeyType type>
void* SignatureFunctions<type>::newctx(void* provctx, const char*) {
  return std::make_unique<Signing>(Signing{*static_cast<ProviderContext*>(provctx), type, nullptr,
                                           nullptr, nullptr, false, false, {}})
      .release();
}

template <KeyType type>
const OSSL_PARAM* SignatureFunctions<type>::gettable_ctx_params(void*, void* provctx) {
  auto* provider = static_cast<ProviderContext*>(provctx);
  return EVP_SIGNATURE_gettable_ctx_params(type == KeyType::ec
                                               ? provider->software_ecdsa.get()
                                               : provider->software_rsa_signature.get());
}

template <KeyType type>
const OSSL_PARAM* SignatureFunctions<type>::settable_ctx_params(void*, void* provctx) {
  auto* provider = static_cast<ProviderContext*>(provctx);
  return EVP_SIGNATURE_settable_ctx_params(type == KeyType::ec
                                               ? provider->software_ecdsa.get()
                                               : provider->software_rsa_signature.get());
}

template <KeyType type>
const OSSL_DISPATCH SignatureFunctions<type>::functions[] = {
    {OSSL_FUNC_SIGNATURE_NEWCTX, reinterpret_cast<void (*)()>(newctx)},
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
    {OSSL_FUNC_SIGNATURE_GETTABLE_CTX_PARAMS, reinterpret_cast<void (*)()>(gettable_ctx_params)},
    {OSSL_FUNC_SIGNATURE_SET_CTX_PARAMS, reinterpret_cast<void (*)()>(signature_set_ctx_params)},
    {OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS, reinterpret_cast<void (*)()>(settable_ctx_params)},
    {0, nullptr}};

template struct SignatureFunctions<KeyType::ec>;
template struct SignatureFunctions<KeyType::rsa>;

void signature_freectx(void* ctx) {
  std::unique_ptr<Signing> owned(signing_of(ctx));
}

void* signature_dupctx(void* ctx) {
  const Signing& s = *signing_of(ctx);
  auto copy =
      std::make_unique<Signing>(Signing{s.provider, s.type, s.key, nullptr, nullptr, s.signing,
                                        s.initialized, s.mdname});
  if (s.op) {
    copy->op.reset(EVP_PKEY_CTX_dup(s.op.get()));
    if (!copy->op) return nullptr;
  }
  if (s.md) {
    copy->md.reset(EVP_MD_CTX_new());
    if (!copy->md || EVP_MD_CTX_copy_ex(copy->md.get(), s.md.get()) != 1) return nullptr;
  }
  return copy.release();
}

int signature_sign_init(void* ctx, void* provkey, const OSSL_PARAM params[]) {
  return init(ctx, provkey, params, true, nullptr);
}

int signature_verify_init(void* ctx, void* provkey, const OSSL_PARAM params[]) {
  return init(ctx, provkey, params, false, nullptr);
}

int signature_sign(void* ctx, unsigned char* sig, size_t* siglen, size_t sigsize,
                   const unsigned char* tbs, size_t tbslen) {
  const Signing& s = *signing_of(ctx);
  if (!s.initialized || !s.signing) return 0;
  if (sig == nullptr) {
    *siglen = static_cast<size_t>(EVP_PKEY_get_size(s.key->pkey()));
    return 1;
  }
  if (s.key->in_vault()) return vault_sign(s, sig, siglen, sigsize, tbs, tbslen);
  if (!s.op) return 0;  // made at init for every key outside the vault
  *siglen = sigsize;
  return EVP_PKEY_sign(s.op.get(), sig, siglen, tbs, tbslen);
}

int signature_verify(void* ctx, const unsigned char* sig, size_t siglen, const unsigned char* tbs,
                     size_t tbslen) {
  const Signing& s = *signing_of(ctx);
  if (!s.op || s.signing) return 0;
  return EVP_PKEY_verify(s.op.get(), sig, siglen, tbs, tbslen);
}

int signature_digest_sign_init(void* ctx, const char* mdname, void* provkey,
                               const OSSL_PARAM params[]) {
  return digest_init(ctx, mdname, provkey, params, true);
}

int signature_digest_verify_init(void* ctx, const char* mdname, void* provkey,
                                 const OSSL_PARAM params[]) {
  return digest_init(ctx, mdname, provkey, params, false);
}

int signature_digest_update(void* ctx, const unsigned char* data, size_t datalen) {
  const Signing& s = *signing_of(ctx);
  return s.md && EVP_DigestUpdate(s.md.get(), data, datalen) == 1;
}

int signature_digest_sign_final(void* ctx, unsigned char* sig, size_t* siglen, size_t sigsize) {
  const Signing& s = *signing_of(ctx);
  if (!s.md) return 0;
  if (sig == nullptr) return signature_sign(ctx, nullptr, siglen, sigsize, nullptr, 0);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_size = 0;
  if (EVP_DigestFinal_ex(s.md.get(), digest, &digest_size) != 1) return 0;
  return signature_sign(ctx, sig, siglen, sigsize, digest, digest_size);
}

int signature_digest_verify_final(void* ctx, const unsigned char* sig, size_t siglen) {
  const Signing& s = *signing_of(ctx);
  if (!s.md) return 0;
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_size = 0;
  if (EVP_DigestFinal_ex(s.md.get(), digest, &digest_size) != 1) return 0;
  return signature_verify(ctx, sig, siglen, digest, digest_size);
}

int signature_get_ctx_params(void* ctx, OSSL_PARAM params[]) {
  Signing& s = *signing_of(ctx);
  return make_op(s) ? EVP_PKEY_CTX_get_params(s.op.get(), params) : 0;
}

int signature_set_ctx_params(void* ctx, const OSSL_PARAM params[]) {
  Signing& s = *signing_of(ctx);
  if (params == nullptr || params[0].key == nullptr) return s.initialized ? 1 : 0;
  if (!make_op(s)) return 0;
  if (EVP_PKEY_CTX_set_params(s.op.get(), const_cast<OSSL_PARAM*>(params)) != 1) return 0;
  // A digest chosen after init (before any data) replaces the message digest.
  if (s.md && OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_DIGEST) != nullptr) {
    const std::string name = digest_name(s);
    if (!name.empty() && !start_digest(s, name.c_str())) return 0;
  }
  return 1;
}

}  // namespace m2mvault::provider
