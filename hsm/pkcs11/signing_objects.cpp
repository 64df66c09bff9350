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

  CK_FUNCTION_LIST* fn = token_.fn();
  const Bytes id(object_id.begin(), object_id.end());
  auto session = token_.sessions().borrow();
  Entry entry = entry_for(session.handle(), id);
  const auto fits = [&](const Entry& e) {
    if ((e.key_type == CKK_EC) != ecdsa) {
      throw Error(Failure::invalid_argument, "signature scheme does not fit the key");
    }
  };
  fits(entry);
  CK_RV rv = fn->C_SignInit(session.handle(), &mechanism, entry.handle());
  if (rv == CKR_KEY_HANDLE_INVALID || rv == CKR_OBJECT_HANDLE_INVALID) {
    // The copy or its original went since it was found: find it once more.
    forget(id);
    entry = entry_for(session.handle(), id);
    fits(entry);
    rv = fn->C_SignInit(session.handle(), &mechanism, entry.handle());
  }
  check(rv, "C_SignInit");
  // ECDSA: r || s, each as long as the curve's order; RSA: the modulus's
  // length. 1,024 bytes hold RSA-8192's.
  std::array<CK_BYTE, 1024> raw{};
  CK_ULONG size = raw.size();
  check(fn->C_Sign(session.handle(), input.data(), input.size(), raw.data(), &size), "C_Sign");
  if (size == 0 || size > raw.size() || (ecdsa && size % 2 != 0)) {
    throw Error(Failure::internal, "C_Sign returned a signature of impossible length");
  }
  const std::span<const std::uint8_t> signature(raw.data(), size);
  if (!ecdsa) return Bytes(signature.begin(), signature.end());
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
