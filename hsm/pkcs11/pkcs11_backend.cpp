// The SecureElement on a PKCS#11 token: wrapped secrets, HMACs and the
// vault's own signing keys through the PKCS#11 API; adopted keys (and the
// handshakes the daemon runs) through libp11.
#include "hsm/pkcs11/pkcs11_backend.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <variant>

#include "hsm/audit_epochs.h"
#include "hsm/pkcs11/ck_util.h"
#include "hsm/pkcs11/libp11_keys.h"
#include "hsm/pkcs11/openssl_ptr.h"
#include "hsm/pkcs11/public_key.h"
#include "hsm/pkcs11/signing_objects.h"
#include "hsm/pkcs11/token.h"
#include "hsm/pkcs11/token_objects.h"
#include "hsm/pkcs11/unwrap_cache.h"
#include "hsm/pkcs11/wrapped_secret.h"

namespace m2mvault::hsm::pkcs11 {
namespace {

// A session on a token other than the vault's (adopted keys), logged in with
// the vault's PIN, closed when the scope ends.
class ForeignSession {
 public:
  ForeignSession(Module& module, const std::string& label, const SecureBuffer& pin)
      : fn_(module.fn()) {
    const auto slot = module.find_token(label);
    if (!slot) throw Error(Failure::not_found, "no token labelled '" + label + "'");
    check(fn_->C_OpenSession(*slot, CKF_SERIAL_SESSION, nullptr, nullptr, &session_),
          "C_OpenSession", Failure::unavailable);
    if (const CK_RV rv = login_user(fn_, session_, pin); rv != CKR_OK) {
      fn_->C_CloseSession(session_);
      throw Error(Failure::unavailable, "C_Login to token '" + label + "' failed: " + rv_name(rv));
    }
  }
  ForeignSession(const ForeignSession&) = delete;
  ForeignSession& operator=(const ForeignSession&) = delete;
  ~ForeignSession() { fn_->C_CloseSession(session_); }
  CK_SESSION_HANDLE handle() const noexcept { return session_; }

 private:
  CK_FUNCTION_LIST* fn_;
  CK_SESSION_HANDLE session_ = CK_INVALID_HANDLE;
};

class Pkcs11Backend final : public SecureElement {
 public:
  explicit Pkcs11Backend(const Config& config)
      : config_(config), token_(std::make_unique<Token>(config)), cache_(config.unwrap_cache) {
    const auto kek = token_->find_kek();
    if (!kek) {
      throw Error(Failure::unavailable, "KEK missing: token '" + config.token_label +
                                            "' has no key labelled '" + kKekLabel + "'");
    }
    kek_ = *kek;
    audit_key_ = token_->find_or_generate_audit_key();
    signer_ = std::make_unique<Libp11Keys>(config.module, config.token_label,
                                           SecureBuffer::copy_of(token_->pin().span()));
  }

  ~Pkcs11Backend() override {
    signing_.clear();
    cache_.clear();
  }

  BackendInfo info() const override {
    return BackendInfo{"pkcs11", config_.module.string(), token_->label(), token_->model()};
  }

  Bytes wrap_secret(std::span<const std::uint8_t> secret) override {
    auto session = token_->sessions().borrow();
    return wrap_secret_with(fn(), session.handle(), kek_, secret);
  }

  SecureBuffer unwrap_secret(std::span<const std::uint8_t> blob) override {
    auto session = token_->sessions().borrow();
    const auto key = unwrapped(session, blob);
    return read_secret(fn(), session.handle(), key->handle(), key->length());
  }

  Bytes derive_wrapped_secret(const SecretRef& parent,
                              std::span<const std::uint8_t> data) override {
    Hmac mac = hmac_sha256(parent, data);
    const SecureBuffer derived = SecureBuffer::copy_of(mac);
    OPENSSL_cleanse(mac.data(), mac.size());
    return wrap_secret(derived.span());
  }

  WrappedWithMac wrap_secret_with_mac(std::span<const std::uint8_t> secret,
                                      std::span<const std::uint8_t> mac_data) override {
    auto session = token_->sessions().borrow();
    WrappedWithMac out{};
    out.blob = wrap_secret_with(fn(), session.handle(), kek_, secret, mac_data, &out.mac);
    return out;
  }

  WrappedWithMac derive_wrapped_secret_with_mac(const SecretRef& parent,
                                                std::span<const std::uint8_t> data,
                                                std::span<const std::uint8_t> mac_data) override {
    Hmac mac = hmac_sha256(parent, data);
    const SecureBuffer derived = SecureBuffer::copy_of(mac);
    OPENSSL_cleanse(mac.data(), mac.size());
    return wrap_secret_with_mac(derived.span(), mac_data);
  }

  Bytes new_object_id() override {
    Bytes id(16);
    auto session = token_->sessions().borrow();
    check(fn()->C_GenerateRandom(session.handle(), id.data(), id.size()), "C_GenerateRandom");
    return id;
  }

  // The token holds the key: no blob.
  Bytes create_token_secret(std::span<const std::uint8_t> object_id,
                            std::span<const std::uint8_t> secret) override {
    auto session = token_->sessions().borrow();
    create_secret_object(fn(), session.handle(), object_id, secret);
    return {};
  }

  GeneratedKey generate_signing_key(std::span<const std::uint8_t> object_id,
                                    SigningAlgorithm algorithm) override {
    auto session = token_->sessions().borrow();
    return {generate_key_pair(fn(), session.handle(), object_id, algorithm), {}};
  }

  AdoptedKey adopt_signing_key(const TokenKeyRef& ref) override {
    AdoptedKey adopted{};
    with_session(ref.token_label, [&](CK_SESSION_HANDLE session) {
      const auto privates = find_referenced_objects(fn(), session, ref, CKO_PRIVATE_KEY);
      if (privates.empty()) {
        throw Error(Failure::not_found,
                    "no private key " + describe(ref) + " in token '" + token_of(ref) + "'");
      }
      adopted.object_id = get_bytes_attribute(fn(), session, privates.front(), CKA_ID);
      TokenKeyRef exact{ref.token_label, adopted.object_id,
                        adopted.object_id.empty() ? ref.object_label : std::string()};
      const auto publics = find_referenced_objects(fn(), session, exact, CKO_PUBLIC_KEY);
      if (publics.empty()) {
        throw Error(Failure::not_found,
                    "private key " + describe(ref) + " has no public-key object beside it");
      }
      const PublicKey key = read_public_key(fn(), session, publics.front());
      adopted.public_key = key.spki;
      adopted.algorithm = key.algorithm;
    });
    // Proves libp11 can reach it before the vault records it.
    signer_->private_key(TokenKeyRef{ref.token_label, adopted.object_id,
                                     adopted.object_id.empty() ? ref.object_label : ""});
    return adopted;
  }

  bool token_object_exists(std::span<const std::uint8_t> object_id) override {
    check_object_id(object_id);
    auto session = token_->sessions().borrow();
    auto present = [&](CK_OBJECT_CLASS cls) {
      return !find_vault_objects(fn(), session.handle(), object_id, cls).empty();
    };
    // A key pair counts only when whole: a crash inside C_GenerateKeyPair can
    // leave the public half alone.
    return present(CKO_SECRET_KEY) || (present(CKO_PRIVATE_KEY) && present(CKO_PUBLIC_KEY));
  }

  void destroy_token_object(std::span<const std::uint8_t> object_id) override {
    check_object_id(object_id);
    signer_->forget(object_id);
    signing_.forget(object_id);
    {
      std::lock_guard lock(handles_mutex_);
      secret_handles_.erase(Bytes(object_id.begin(), object_id.end()));
    }
    {
      auto session = token_->sessions().borrow();
      for (CK_OBJECT_HANDLE object :
           find_vault_objects(fn(), session.handle(), object_id, CK_UNAVAILABLE_INFORMATION)) {
        const CK_RV rv = fn()->C_DestroyObject(session.handle(), object);
        if (rv != CKR_OK && rv != CKR_OBJECT_HANDLE_INVALID)
          fail_call(Failure::internal, "C_DestroyObject", rv);
      }
    }
    // Once more: a signature that began before the key was removed may
    // have copied it again (and armed a session for it) in between.
    signing_.forget(object_id);
  }

  std::vector<Bytes> list_vault_objects() override {
    auto session = token_->sessions().borrow();
    return list_vault_ids(fn(), session.handle());
  }

  Hmac hmac_sha256(const SecretRef& key, std::span<const std::uint8_t> data) override {
    auto session = token_->sessions().borrow();
    if (const auto* wrapped = std::get_if<WrappedSecretRef>(&key)) {
      const auto unwrapped_key = unwrapped(session, wrapped->blob);
      return token_hmac(fn(), session.handle(), unwrapped_key->handle(), data);
    }
    const auto& ref = std::get<TokenKeyRef>(key);
    if (!ref.token_label.empty() && ref.token_label != token_->label()) {
      throw Error(Failure::unsupported, "HMAC keys are only used from the vault's token");
    }
    if (!ref.object_label.empty()) {
      const auto found = find_referenced_objects(fn(), session.handle(), ref, CKO_SECRET_KEY);
      if (found.empty()) throw Error(Failure::not_found, "no secret key " + describe(ref));
      return token_hmac(fn(), session.handle(), found.front(), data);
    }
    // A Ke is HMAC'd for every derivation: its handle is kept rather than
    // searched for each time. A stale handle (object gone) is looked up again.
    CK_OBJECT_HANDLE handle = secret_handle(session.handle(), ref.object_id, /*refresh=*/false);
    try {
      return token_hmac(fn(), session.handle(), handle, data);
    } catch (const Error&) {
      handle = secret_handle(session.handle(), ref.object_id, /*refresh=*/true);
      return token_hmac(fn(), session.handle(), handle, data);
    }
  }

  Bytes sign_digest(const TokenKeyRef& key, SignatureScheme scheme,
                    std::span<const std::uint8_t> digest) override {
    if (is_vault_key(key)) {
      check_object_id(key.object_id);
      return signing_.sign(key.object_id, scheme, digest);
    }
    const auto pkey = signer_->private_key(key);
    return sign_digest_with(pkey.get(), scheme, digest);
  }

  void prepare() noexcept override { signing_.arm_pending(); }

  Hmac audit_mac(std::span<const std::uint8_t> data) override {
    auto session = token_->sessions().borrow();
    return token_hmac(fn(), session.handle(), audit_key_, data);
  }

  Bytes begin_audit_epoch() override { return epochs_.begin(); }

  Hmac audit_epoch_mac(std::span<const std::uint8_t> data) override { return epochs_.mac(data); }

  Hmac audit_epoch_mac_for(std::span<const std::uint8_t> nonce,
                           std::span<const std::uint8_t> data) override {
    return epochs_.mac_for(nonce, data);
  }

  // A private token data object, replaced as a whole (destroy, then create:
  // not every token lets CKA_VALUE of a data object be modified).
  void store_audit_checkpoint(std::span<const std::uint8_t> value) override {
    std::lock_guard lock(checkpoint_mutex_);
    auto session = token_->sessions().borrow();
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL yes = CK_TRUE;
    std::array create{attr(CKA_CLASS, cls),
                      attr(CKA_TOKEN, yes),
                      attr(CKA_PRIVATE, yes),
                      attr_string(CKA_LABEL, kAuditCheckpointLabel),
                      attr_string(CKA_APPLICATION, "m2mvault"),
                      attr_bytes(CKA_VALUE, value)};
    CK_OBJECT_HANDLE created = CK_INVALID_HANDLE;
    // The new object is made before the old one goes: a crash in between
    // leaves two, and load_audit_checkpoint() takes the later sequence.
    check(fn()->C_CreateObject(session.handle(), create.data(), create.size(), &created),
          "C_CreateObject (audit checkpoint)", Failure::unavailable);
    for (CK_OBJECT_HANDLE old : checkpoint_objects(session.handle())) {
      if (old != created) fn()->C_DestroyObject(session.handle(), old);
    }
  }

  std::optional<Bytes> load_audit_checkpoint() override {
    std::lock_guard lock(checkpoint_mutex_);
    auto session = token_->sessions().borrow();
    std::optional<Bytes> best;
    for (CK_OBJECT_HANDLE h : checkpoint_objects(session.handle())) {
      Bytes value = get_bytes_attribute(fn(), session.handle(), h, CKA_VALUE);
      // The value starts with the big-endian sequence number.
      if (!best || value > *best) best = std::move(value);
    }
    return best;
  }

  std::shared_ptr<EVP_PKEY> private_key(const TokenKeyRef& key) override {
    return signer_->private_key(key);
  }

  Bytes public_key(const TokenKeyRef& key) override {
    Bytes spki;
    with_session(key.token_label, [&](CK_SESSION_HANDLE session) {
      const bool vault_key = is_vault_key(key);
      if (vault_key) check_object_id(key.object_id);
      const auto found = vault_key
                             ? find_vault_objects(fn(), session, key.object_id, CKO_PUBLIC_KEY)
                             : find_referenced_objects(fn(), session, key, CKO_PUBLIC_KEY);
      if (found.empty()) throw Error(Failure::not_found, "no public key " + describe(key));
      spki = read_public_key(fn(), session, found.front()).spki;
    });
    return spki;
  }

 private:
  CK_FUNCTION_LIST* fn() const noexcept { return token_->fn(); }

  // The handle of the vault's token secret with this CKA_ID, from the cache
  // unless `refresh`. Handles of token objects stay valid for the process.
  CK_OBJECT_HANDLE secret_handle(CK_SESSION_HANDLE session, const Bytes& object_id, bool refresh) {
    if (!refresh) {
      std::lock_guard lock(handles_mutex_);
      if (auto it = secret_handles_.find(object_id); it != secret_handles_.end()) return it->second;
    }
    const auto found = find_vault_objects(fn(), session, object_id, CKO_SECRET_KEY);
    std::lock_guard lock(handles_mutex_);
    if (found.empty()) {
      secret_handles_.erase(object_id);
      throw Error(Failure::not_found, "no secret key " + to_hex(object_id));
    }
    secret_handles_[object_id] = found.front();
    return found.front();
  }

  std::vector<CK_OBJECT_HANDLE> checkpoint_objects(CK_SESSION_HANDLE session) {
    CK_OBJECT_CLASS cls = CKO_DATA;
    std::array query{attr(CKA_CLASS, cls), attr_string(CKA_LABEL, kAuditCheckpointLabel)};
    return find_objects(fn(), session, query);
  }

  std::string token_of(const TokenKeyRef& ref) const {
    return ref.token_label.empty() ? token_->label() : ref.token_label;
  }

  // The vault's own keys carry no token or object label; adopted ones
  // always name their token.
  static bool is_vault_key(const TokenKeyRef& ref) {
    return ref.token_label.empty() && ref.object_label.empty();
  }

  static std::string describe(const TokenKeyRef& ref) {
    return ref.object_id.empty() ? "labelled '" + ref.object_label + "'" : to_hex(ref.object_id);
  }

  // Runs `work` with a session on the token labelled `label` (the vault's when empty).
  template <typename Work>
  void with_session(const std::string& label, Work&& work) {
    if (label.empty() || label == token_->label()) {
      auto session = token_->sessions().borrow();
      work(session.handle());
    } else {
      const ForeignSession session(token_->module(), label, token_->pin());
      work(session.handle());
    }
  }

  // The session object holding `blob`'s secret, from the cache or unwrapped now.
  std::shared_ptr<const SessionObject> unwrapped(const SessionPool::Lease& session,
                                                 std::span<const std::uint8_t> blob) {
    const ParsedBlob parsed = parse_blob(blob);
    const auto digest = UnwrapCache::digest_of(blob);
    if (auto cached = cache_.find(digest)) return cached;
    const CK_OBJECT_HANDLE handle = unwrap_blob(fn(), session.handle(), kek_, parsed);
    return cache_.insert(digest, std::make_shared<const SessionObject>(token_->housekeeping(),
                                                                       handle, parsed.length));
  }

  Config config_;
  std::unique_ptr<Token> token_;
  CK_OBJECT_HANDLE kek_ = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE audit_key_ = CK_INVALID_HANDLE;
  std::mutex checkpoint_mutex_;
  AuditEpochs epochs_{[this](std::span<const std::uint8_t> data) { return audit_mac(data); }};
  // After token_: their session objects go before the sessions close.
  UnwrapCache cache_;
  SigningObjects signing_{*token_};
  std::unique_ptr<Libp11Keys> signer_;
  std::mutex handles_mutex_;
  std::map<Bytes, CK_OBJECT_HANDLE> secret_handles_;
};

}  // namespace

std::unique_ptr<SecureElement> open(const Config& config) {
  return std::make_unique<Pkcs11Backend>(config);
}

void ensure_kek(const Config& config) {
  Token token(config);
  if (!token.find_kek()) token.generate_kek();
}

}  // namespace m2mvault::hsm::pkcs11
