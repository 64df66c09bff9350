#include "hsm/pkcs11/signing_objects.h"

#include <array>
#include <utility>

#include "hsm/pkcs11/ck_util.h"
#include "hsm/pkcs11/token_objects.h"
#include "hsm/spki.h"

namespace m2mvault::hsm::pkcs11 {

Bytes SigningObjects::sign_ecdsa(std::span<const std::uint8_t> object_id,
                                 std::span<const std::uint8_t> digest) {
  if (digest.empty() || digest.size() > 64) {
    throw Error(Failure::invalid_argument, "digest must be 1..64 bytes");
  }
  CK_FUNCTION_LIST* fn = token_.fn();
  const Bytes id(object_id.begin(), object_id.end());
  auto session = token_.sessions().borrow();
  CK_MECHANISM mechanism{CKM_ECDSA, nullptr, 0};
  Entry entry = entry_for(session.handle(), id);
  CK_RV rv = fn->C_SignInit(session.handle(), &mechanism, entry.handle());
  if (rv == CKR_KEY_HANDLE_INVALID || rv == CKR_OBJECT_HANDLE_INVALID) {
    // The copy or its original went since it was found: find it once more.
    forget(id);
    entry = entry_for(session.handle(), id);
    rv = fn->C_SignInit(session.handle(), &mechanism, entry.handle());
  }
  check(rv, "C_SignInit (CKM_ECDSA)");
  // r || s, each as long as the curve's order: 132 bytes hold P-521's.
  std::array<CK_BYTE, 132> raw{};
  CK_ULONG size = raw.size();
  check(fn->C_Sign(session.handle(), const_cast<CK_BYTE*>(digest.data()), digest.size(), raw.data(),
                   &size),
        "C_Sign (CKM_ECDSA)");
  if (size == 0 || size % 2 != 0 || size > raw.size()) {
    throw Error(Failure::internal, "C_Sign (CKM_ECDSA) returned a signature of odd length");
  }
  const std::span<const std::uint8_t> signature(raw.data(), size);
  return ecdsa_der(signature.first(size / 2), signature.last(size / 2));
}

void SigningObjects::forget(std::span<const std::uint8_t> object_id) {
  std::shared_ptr<const SessionObject> gone;  // destroyed after the lock is released
  std::lock_guard lock(mutex_);
  if (auto it = entries_.find(Bytes(object_id.begin(), object_id.end())); it != entries_.end()) {
    gone = std::move(it->second.copy);
    entries_.erase(it);
  }
}

void SigningObjects::clear() {
  std::map<Bytes, Entry> gone;
  std::lock_guard lock(mutex_);
  gone.swap(entries_);
}

SigningObjects::Entry SigningObjects::entry_for(CK_SESSION_HANDLE session, const Bytes& object_id) {
  const auto now = std::chrono::steady_clock::now();
  {
    std::lock_guard lock(mutex_);
    if (auto it = entries_.find(object_id);
        it != entries_.end() && now - it->second.found < kRecheck) {
      return it->second;
    }
  }
  const auto found = find_vault_objects(token_.fn(), session, object_id, CKO_PRIVATE_KEY);
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
  Entry fresh = make_entry(session, found.front());
  fresh.found = now;
  std::shared_ptr<const SessionObject> replaced;  // destroyed after the lock is released
  std::lock_guard lock(mutex_);
  Entry& slot = entries_[object_id];
  replaced = std::move(slot.copy);
  slot = fresh;
  return slot;
}

SigningObjects::Entry SigningObjects::make_entry(CK_SESSION_HANDLE session,
                                                 CK_OBJECT_HANDLE original) {
  CK_FUNCTION_LIST* fn = token_.fn();
  if (get_ulong_attribute(fn, session, original, CKA_KEY_TYPE) != CKK_EC) {
    throw Error(Failure::invalid_argument, "signature scheme does not fit the key");
  }
  Entry entry;
  entry.original = original;
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
