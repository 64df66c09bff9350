#include "hsm/pkcs11/libp11_keys.h"

#include <libp11.h>
#include <openssl/rsa.h>

#include <algorithm>
#include <cstring>

#include "hsm/pkcs11/ck_util.h"
#include "hsm/pkcs11/openssl_ptr.h"

namespace m2mvault::hsm::pkcs11 {
namespace {

// The process's libp11 context for one module. Held for the whole process
// and never unloaded (see libp11_keys.h), so it has no destructor work.
struct Libp11Context {
  PKCS11_CTX* ctx = nullptr;
  PKCS11_SLOT* slots = nullptr;
  unsigned int slot_count = 0;
  std::mutex mutex;  // libp11's enumeration and login state are not thread-safe
  std::map<std::string, bool> logged_in;
};

// Call with the context's mutex held.
void load(Libp11Context& context, const std::filesystem::path& module) {
  if (context.ctx == nullptr) {
    context.ctx = PKCS11_CTX_new();
    if (context.ctx == nullptr) throw Error(Failure::internal, "PKCS11_CTX_new failed");
  }
  if (PKCS11_CTX_load(context.ctx, module.c_str()) != 0) {
    throw Error(Failure::unavailable, "libp11 cannot load PKCS#11 module " + module.string());
  }
  if (PKCS11_enumerate_slots(context.ctx, &context.slots, &context.slot_count) != 0) {
    context.slots = nullptr;
    context.slot_count = 0;
    throw Error(Failure::unavailable, "libp11 cannot list the slots of " + module.string());
  }
}

Libp11Context& context_for(const std::filesystem::path& module) {
  static std::mutex registry_mutex;
  static std::map<std::filesystem::path, std::unique_ptr<Libp11Context>> registry;
  std::lock_guard lock(registry_mutex);
  auto& context = registry[module];
  if (!context) context = std::make_unique<Libp11Context>();
  return *context;
}

std::string cache_key(const std::string& token, const TokenKeyRef& ref) {
  return token + '\n' + to_hex(ref.object_id) + '\n' + ref.object_label;
}

bool matches(const PKCS11_KEY& key, const TokenKeyRef& ref) {
  if (!ref.object_id.empty() && (key.id_len != ref.object_id.size() ||
                                 std::memcmp(key.id, ref.object_id.data(), key.id_len) != 0)) {
    return false;
  }
  if (!ref.object_label.empty() && (key.label == nullptr || ref.object_label != key.label)) {
    return false;
  }
  return true;
}

std::string describe(const TokenKeyRef& ref) {
  return ref.object_id.empty() ? "labelled '" + ref.object_label + "'" : to_hex(ref.object_id);
}

const EVP_MD* digest_for(std::size_t size) {
  switch (size) {
    case 32:
      return EVP_sha256();
    case 48:
      return EVP_sha384();
    case 64:
      return EVP_sha512();
    default:
      throw Error(Failure::invalid_argument, "digest must be 32, 48 or 64 bytes");
  }
}

}  // namespace

Libp11Keys::Libp11Keys(std::filesystem::path module, std::string vault_token_label,
                       SecureBuffer pin)
    : module_(std::move(module)),
      vault_token_label_(std::move(vault_token_label)),
      pin_(std::move(pin)) {}

std::string Libp11Keys::token_of(const TokenKeyRef& ref) const {
  return ref.token_label.empty() ? vault_token_label_ : ref.token_label;
}

std::shared_ptr<EVP_PKEY> Libp11Keys::private_key(const TokenKeyRef& ref) {
  if (ref.object_id.empty() && ref.object_label.empty()) {
    throw Error(Failure::invalid_argument, "key reference names neither an id nor a label");
  }
  const std::string token = token_of(ref);
  const std::string key_name = cache_key(token, ref);
  {
    std::lock_guard lock(mutex_);
    if (auto found = cache_.find(key_name); found != cache_.end()) return found->second;
  }

  Libp11Context& context = context_for(module_);
  std::lock_guard lock(context.mutex);
  if (context.slots == nullptr) load(context, module_);

  PKCS11_SLOT* slot = nullptr;
  for (unsigned int i = 0; i < context.slot_count; ++i) {
    PKCS11_SLOT* candidate = &context.slots[i];
    if (candidate->token != nullptr && candidate->token->initialized &&
        candidate->token->label != nullptr && token == candidate->token->label) {
      slot = candidate;
      break;
    }
  }
  if (slot == nullptr) throw Error(Failure::not_found, "no token labelled '" + token + "'");

  if (!context.logged_in[token]) {
    // libp11 wants a C string; the copy lives in locked memory and is wiped.
    SecureBuffer pin(pin_.size() + 1);
    std::memcpy(pin.data(), pin_.data(), pin_.size());
    if (PKCS11_login(slot, 0, reinterpret_cast<const char*>(pin.data())) != 0) {
      throw Error(Failure::unavailable, "libp11 login to token '" + token + "' failed");
    }
    context.logged_in[token] = true;
  }

  PKCS11_KEY* keys = nullptr;
  unsigned int key_count = 0;
  if (PKCS11_enumerate_keys(slot->token, &keys, &key_count) != 0) {
    throw Error(Failure::unavailable, "libp11 cannot list the keys of token '" + token + "'");
  }
  PKCS11_KEY* key = nullptr;
  for (unsigned int i = 0; i < key_count; ++i) {
    if (keys[i].isPrivate && matches(keys[i], ref)) {
      key = &keys[i];
      break;
    }
  }
  if (key == nullptr) {
    throw Error(Failure::not_found,
                "no private key " + describe(ref) + " in token '" + token + "'");
  }
  EvpPkeyPtr pkey(PKCS11_get_private_key(key));
  if (!pkey) {
    throw Error(Failure::unsupported, "libp11 cannot use private key " + describe(ref) +
                                          " (is its public-key object missing?)");
  }
  std::shared_ptr<EVP_PKEY> shared(pkey.release(), OpenSslDeleter<EVP_PKEY_free>());
  std::lock_guard cache_lock(mutex_);
  cache_.emplace(key_name, shared);
  return shared;
}

void Libp11Keys::forget(std::span<const std::uint8_t> object_id) {
  const std::string needle = '\n' + to_hex(object_id) + '\n';
  std::lock_guard lock(mutex_);
  std::erase_if(cache_,
                [&](const auto& entry) { return entry.first.find(needle) != std::string::npos; });
}

Bytes sign_digest_with(EVP_PKEY* key, SignatureScheme scheme,
                       std::span<const std::uint8_t> digest) {
  const int type = EVP_PKEY_get_base_id(key);
  const bool ec_scheme = scheme == SignatureScheme::ecdsa;
  if ((type == EVP_PKEY_EC) != ec_scheme || (!ec_scheme && type != EVP_PKEY_RSA)) {
    throw Error(Failure::invalid_argument, "signature scheme does not fit the key");
  }
  if (digest.empty() || digest.size() > 64) {
    throw Error(Failure::invalid_argument, "digest must be 1..64 bytes");
  }
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new(key, nullptr));
  if (!ctx || EVP_PKEY_sign_init(ctx.get()) <= 0) {
    throw Error(Failure::internal, "EVP_PKEY_sign_init failed");
  }
  if (!ec_scheme) {
    const bool pss = scheme == SignatureScheme::rsa_pss;
    if (EVP_PKEY_CTX_set_rsa_padding(ctx.get(), pss ? RSA_PKCS1_PSS_PADDING : RSA_PKCS1_PADDING) <=
            0 ||
        EVP_PKEY_CTX_set_signature_md(ctx.get(), digest_for(digest.size())) <= 0 ||
        (pss && EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx.get(), RSA_PSS_SALTLEN_DIGEST) <= 0)) {
      throw Error(Failure::internal, "setting the RSA signature parameters failed");
    }
  }
  std::size_t size = 0;
  if (EVP_PKEY_sign(ctx.get(), nullptr, &size, digest.data(), digest.size()) <= 0) {
    throw Error(Failure::internal, "EVP_PKEY_sign failed");
  }
  Bytes signature(size);
  if (EVP_PKEY_sign(ctx.get(), signature.data(), &size, digest.data(), digest.size()) <= 0) {
    throw Error(Failure::internal, "EVP_PKEY_sign failed in the token");
  }
  signature.resize(size);
  return signature;
}

}  // namespace m2mvault::hsm::pkcs11
