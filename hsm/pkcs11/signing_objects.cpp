#include "hsm/pkcs11/signing_objects.h"

#include <array>
#include <utility>

#include "hsm/pkcs11/ck_util.h"
#include "hsm/pkcs11/token_objects.h"
#include "hsm/spki.h"

namespace m2mvault::hsm::pkcs11 {

namespace {

// DER DigestInfo up to the digest itself, for SHA-256/384/512 (RFC 8017,
// 9.2, note 1): what CKM_RSA_PKCS signs ahead of the digest.
constexpr std::array<CK_BYTE, 19> kSha256Info{0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60,
                                              0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                                              0x01, 0x05, 0x00, 0x04, 0x20};
constexpr std::array<CK_BYTE, 19> kSha384Info{0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60,
                                              0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                                              0x02, 0x05, 0x00, 0x04, 0x30};
constexpr std::array<CK_BYTE, 19> kSha512Info{0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60,
                                              0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                                              0x03, 0x05, 0x00, 0x04, 0x40};

struct RsaDigest {
  const std::array<CK_BYTE, 19>* info;
  CK_MECHANISM_TYPE hash;
  CK_RSA_PKCS_MGF_TYPE mgf;
};

// The digest an RSA signature names, by its size.
RsaDigest rsa_digest(std::size_t size) {
  switch (size) {
    case 32:
      return {&kSha256Info, CKM_SHA256, CKG_MGF1_SHA256};
    case 48:
      return {&kSha384Info, CKM_SHA384, CKG_MGF1_SHA384};
    case 64:
      return {&kSha512Info, CKM_SHA512, CKG_MGF1_SHA512};
    default:
      throw Error(Failure::invalid_argument, "digest must be 32, 48 or 64 bytes");
  }
}

}  // namespace

Bytes SigningObjects::sign(std::span<const std::uint8_t> object_id, SignatureScheme scheme,
                           std::span<const std::uint8_t> digest) {
  const bool ecdsa = scheme == SignatureScheme::ecdsa;
  if (ecdsa && (digest.empty() || digest.size() > 64)) {
    throw Error(Failure::invalid_argument, "digest must be 1..64 bytes");
  }
  // What the token signs, and how.
  Bytes input(digest.begin(), digest.end());
  CK_MECHANISM mechanism{CKM_ECDSA, nullptr, 0};
  CK_RSA_PKCS_PSS_PARAMS pss{};
  if (!ecdsa) {
    const RsaDigest named = rsa_digest(digest.size());
    if (scheme == SignatureScheme::rsa_pss) {
      pss = CK_RSA_PKCS_PSS_PARAMS{named.hash, named.mgf, digest.size()};  // salt = digest length
      mechanism = CK_MECHANISM{CKM_RSA_PKCS_PSS, &pss, sizeof pss};
    } else {
      input.insert(input.begin(), named.info->begin(), named.info->end());
      mechanism = CK_MECHANISM{CKM_RSA_PKCS, nullptr, 0};
    }
  }

  const Bytes id(object_id.begin(), object_id.end());
  Entry entry = entry_for(id);
  // ECDSA: r || s, each as long as the curve's order; RSA: the modulus's
  // length. 1,024 bytes hold RSA-8192's.
  std::array<CK_BYTE, 1024> raw{};
  Outcome outcome;
  for (int attempt = 0;; ++attempt) {
    if ((entry.key_type == CKK_EC) != ecdsa) {
      throw Error(Failure::invalid_argument, "signature scheme does not fit the key");
    }
    outcome = sign_once(id, entry, mechanism, input, raw);
    if (attempt == 0 &&
        (outcome.rv == CKR_KEY_HANDLE_INVALID || outcome.rv == CKR_OBJECT_HANDLE_INVALID)) {
      // The copy or its original went since it was found: find it once more.
      forget(id);
      entry = entry_for(id);
      continue;
    }
    break;
  }
  check(outcome.rv, outcome.call);
  const CK_ULONG size = outcome.size;
  if (size == 0 || size > raw.size() || (ecdsa && size % 2 != 0)) {
    throw Error(Failure::internal, "C_Sign returned a signature of impossible length");
  }
  const std::span<const std::uint8_t> signature(raw.data(), size);
  if (!ecdsa) return Bytes(signature.begin(), signature.end());
  return ecdsa_der(signature.first(size / 2), signature.last(size / 2));
}

SigningObjects::Outcome SigningObjects::sign_once(const Bytes& object_id, const Entry& entry,
                                                  CK_MECHANISM& mechanism,
                                                  std::span<const CK_BYTE> input,
                                                  std::span<CK_BYTE> out) {
  if (mechanism.mechanism != CKM_RSA_PKCS_PSS) {
    const Armed wanted{CK_INVALID_HANDLE, entry.generation, entry.handle(), mechanism.mechanism};
    if (const auto session = take_armed(object_id, wanted)) {
      CK_ULONG size = out.size();
      // Not const-correct in PKCS#11: C_Sign does not write its input.
      auto* data = const_cast<CK_BYTE*>(input.data());
      if (token_.fn()->C_Sign(*session, data, input.size(), out.data(), &size) == CKR_OK) {
        park(object_id, Armed{*session, wanted.generation, wanted.key, wanted.mechanism});
        return Outcome{CKR_OK, "C_Sign", size};
      }
      // Whatever went wrong, the session is not trusted again; the
      // signature is tried once more the ordinary way, which reports a
      // failure that lasts.
      close_session(*session);
    }
    if (const auto session = take_spare()) {
      const Outcome outcome = init_and_sign(*session, mechanism, entry.handle(), input, out);
      if (outcome.rv == CKR_OK) {
        park(object_id, Armed{*session, wanted.generation, wanted.key, wanted.mechanism});
        return outcome;
      }
      close_session(*session);
      // A session the module dropped says nothing of the key: the pool's
      // session answers instead. Any other failure is the signature's.
      if (outcome.rv != CKR_SESSION_HANDLE_INVALID && outcome.rv != CKR_SESSION_CLOSED) {
        return outcome;
      }
    }
  }
  auto lease = token_.sessions().borrow();
  return init_and_sign(lease.handle(), mechanism, entry.handle(), input, out);
}

SigningObjects::Outcome SigningObjects::init_and_sign(CK_SESSION_HANDLE session,
                                                      CK_MECHANISM& mechanism, CK_OBJECT_HANDLE key,
                                                      std::span<const CK_BYTE> input,
                                                      std::span<CK_BYTE> out) {
  CK_FUNCTION_LIST* fn = token_.fn();
  if (const CK_RV rv = fn->C_SignInit(session, &mechanism, key); rv != CKR_OK) {
    return Outcome{rv, "C_SignInit", 0};
  }
  CK_ULONG size = out.size();
  auto* data = const_cast<CK_BYTE*>(input.data());
  const CK_RV rv = fn->C_Sign(session, data, input.size(), out.data(), &size);
  return Outcome{rv, "C_Sign", size};
}

void SigningObjects::park(const Bytes& object_id, const Armed& armed) noexcept {
  try {
    std::lock_guard lock(mutex_);
    parked_.emplace_back(object_id, armed);
  } catch (...) {  // std::bad_alloc: the session is closed instead
    close_session(armed.session);
  }
}

void SigningObjects::arm_pending() noexcept {
  // Only what is parked now: under load, other connections park sessions
  // as fast as one thread could arm them, and this thread has a request of
  // its own to wait for.
  std::vector<std::pair<Bytes, Armed>> batch;
  {
    std::lock_guard lock(mutex_);
    batch.swap(parked_);
  }
  CK_FUNCTION_LIST* fn = token_.fn();
  for (const auto& [object_id, armed] : batch) {
    CK_MECHANISM mechanism{armed.mechanism, nullptr, 0};
    if (fn->C_SignInit(armed.session, &mechanism, armed.key) != CKR_OK) {
      close_session(armed.session);  // its state is unknown; a new one is cheap
      continue;
    }
    bool current = false;
    try {
      std::lock_guard lock(mutex_);
      const auto it = entries_.find(object_id);
      // The key may have been forgotten or replaced while it was armed.
      current = it != entries_.end() && it->second.generation == armed.generation;
      if (current) armed_[object_id].push_back(armed);
    } catch (...) {  // std::bad_alloc: the session is closed instead
      current = false;
    }
    if (!current) close_session(armed.session);
  }
}

std::optional<CK_SESSION_HANDLE> SigningObjects::take_armed(const Bytes& object_id,
                                                            const Armed& wanted) {
  std::vector<Armed> stale;
  {
    std::lock_guard lock(mutex_);
    const auto it = armed_.find(object_id);
    if (it == armed_.end()) return std::nullopt;
    const Armed armed = it->second.back();
    if (armed.generation == wanted.generation && armed.mechanism == wanted.mechanism) {
      it->second.pop_back();
      if (it->second.empty()) armed_.erase(it);
      return armed.session;
    }
    // Armed for an entry that is gone (forget() and entry_for() disarm, so
    // this is a second line of defence): none of them may sign.
    stale = disarm_locked(object_id);
  }
  for (const Armed& armed : stale) close_session(armed.session);
  return std::nullopt;
}

std::optional<CK_SESSION_HANDLE> SigningObjects::take_spare() {
  CK_SESSION_HANDLE stolen = CK_INVALID_HANDLE;
  {
    std::lock_guard lock(mutex_);
    if (!parked_.empty()) {  // not armed yet, or nobody arms (no arm_pending() caller)
      const CK_SESSION_HANDLE session = parked_.back().second.session;
      parked_.pop_back();
      return session;
    }
    if (opened_ >= limit_) {
      // All in use or armed: take one from the key with the most armed.
      auto most = armed_.end();
      for (auto it = armed_.begin(); it != armed_.end(); ++it) {
        if (most == armed_.end() || it->second.size() > most->second.size()) most = it;
      }
      if (most == armed_.end()) return std::nullopt;
      stolen = most->second.back().session;
      most->second.pop_back();
      if (most->second.empty()) armed_.erase(most);
    }
    ++opened_;  // reserved before the lock is released; undone on failure
  }
  if (stolen != CK_INVALID_HANDLE) close_session(stolen);  // ends its operation
  CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
  if (token_.fn()->C_OpenSession(token_.slot(), CKF_SERIAL_SESSION, nullptr, nullptr, &session) !=
      CKR_OK) {
    std::lock_guard lock(mutex_);
    --opened_;
    limit_ = opened_;  // the module has no more to give: do not ask each time
    return std::nullopt;
  }
  return session;
}

std::vector<SigningObjects::Armed> SigningObjects::disarm_locked(const Bytes& object_id) noexcept {
  std::vector<Armed> out;
  if (const auto it = armed_.find(object_id); it != armed_.end()) {
    out.swap(it->second);
    armed_.erase(it);
  }
  return out;
}

void SigningObjects::close_session(CK_SESSION_HANDLE session) noexcept {
  // Closing a session ends the operation active in it; the session objects
  // it would take along are never made in these sessions.
  token_.fn()->C_CloseSession(session);
  std::lock_guard lock(mutex_);
  --opened_;
}

std::size_t SigningObjects::sessions_open() const {
  std::lock_guard lock(mutex_);
  return opened_;
}

std::size_t SigningObjects::sessions_armed() const {
  std::lock_guard lock(mutex_);
  std::size_t armed = 0;
  for (const auto& [id, sessions] : armed_) armed += sessions.size();
  return armed;
}

void SigningObjects::forget(std::span<const std::uint8_t> object_id) {
  const Bytes id(object_id.begin(), object_id.end());
  std::vector<Armed> disarmed;
  {
    std::shared_ptr<const SessionObject> gone;  // destroyed after the lock is released
    std::lock_guard lock(mutex_);
    if (auto it = entries_.find(id); it != entries_.end()) {
      gone = std::move(it->second.copy);
      entries_.erase(it);
    }
    disarmed = disarm_locked(id);
  }
  for (const Armed& armed : disarmed) close_session(armed.session);
}

void SigningObjects::clear() noexcept {
  std::map<Bytes, std::vector<Armed>> armed;
  std::vector<std::pair<Bytes, Armed>> parked;
  {
    std::map<Bytes, Entry> gone;  // destroyed after the lock is released
    std::lock_guard lock(mutex_);
    gone.swap(entries_);
    armed.swap(armed_);
    parked.swap(parked_);
  }
  for (const auto& [id, sessions] : armed) {
    for (const Armed& session : sessions) close_session(session.session);
  }
  for (const auto& [id, session] : parked) close_session(session.session);
}

SigningObjects::Entry SigningObjects::entry_for(const Bytes& object_id) {
  const auto now = std::chrono::steady_clock::now();
  {
    std::lock_guard lock(mutex_);
    if (auto it = entries_.find(object_id);
        it != entries_.end() && now - it->second.found < kRecheck) {
      return it->second;
    }
  }
  // Copies are made in a pool session: those live as long as the token, and
  // a session object goes with the session that made it.
  auto session = token_.sessions().borrow();
  const auto found = find_vault_objects(token_.fn(), session.handle(), object_id, CKO_PRIVATE_KEY);
  if (found.empty()) {
    forget(object_id);
    throw Error(Failure::not_found, "no private key " + to_hex(object_id));
  }
  {
    std::lock_guard lock(mutex_);
    if (auto it = entries_.find(object_id);
        it != entries_.end() && it->second.original == found.front()) {
      it->second.found = now;
      return it->second;
    }
  }
  Entry fresh = make_entry(session.handle(), found.front());
  fresh.found = now;
  std::vector<Armed> disarmed;
  Entry result;
  {
    std::shared_ptr<const SessionObject> replaced;  // destroyed after the lock is released
    std::lock_guard lock(mutex_);
    fresh.generation = ++generations_;
    Entry& slot = entries_[object_id];
    replaced = std::move(slot.copy);
    slot = fresh;
    disarmed = disarm_locked(object_id);
    result = slot;
  }
  for (const Armed& armed : disarmed) close_session(armed.session);
  return result;
}

SigningObjects::Entry SigningObjects::make_entry(CK_SESSION_HANDLE session,
                                                 CK_OBJECT_HANDLE original) {
  CK_FUNCTION_LIST* fn = token_.fn();
  Entry entry;
  entry.original = original;
  entry.key_type = get_ulong_attribute(fn, session, original, CKA_KEY_TYPE);
  if (entry.key_type != CKK_EC && entry.key_type != CKK_RSA) {
    throw Error(Failure::unsupported, "the vault signs with EC and RSA keys only");
  }
  CK_BBOOL no = CK_FALSE;
  std::array copy_template{attr(CKA_TOKEN, no)};
  CK_OBJECT_HANDLE copy = CK_INVALID_HANDLE;
  if (fn->C_CopyObject(session, original, copy_template.data(), copy_template.size(), &copy) ==
      CKR_OK) {
    entry.copy = std::make_shared<const SessionObject>(token_.housekeeping(), copy, 0);
  }
  return entry;
}

}  // namespace m2mvault::hsm::pkcs11
