// The vault's own signing keys as the token signs with them: CKM_ECDSA,
// CKM_RSA_PKCS or CKM_RSA_PKCS_PSS through the PKCS#11 API on a session copy
// of the private key.
//
// Why a copy: SoftHSM2 keeps token objects in files and, on every C_SignInit
// with one, opens, locks and reads the token's generation file and the
// object's file (16 system calls, measured with strace). A session copy
// (C_CopyObject with CKA_TOKEN false) lives in the module's memory, keeps
// CKA_SENSITIVE and CKA_EXTRACTABLE of its original, and is gone when the
// daemon is. A token that refuses the copy is signed with through the token
// object itself. Why not libp11 here: it adds a fork check per call and an
// EVP_PKEY to keep, for a mechanism the API offers directly.
//
// A copy outlives its original if someone destroys the token object outside
// the vault; the original is looked up again at most kRecheck after it was
// last found, and the copy is dropped when it is gone or replaced.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>

#include "hsm/pkcs11/token.h"
#include "hsm/pkcs11/unwrap_cache.h"
#include "hsm/secure_element.h"

namespace m2mvault::hsm::pkcs11 {

class SigningObjects {
 public:
  static constexpr std::chrono::seconds kRecheck{1};

  explicit SigningObjects(Token& token) : token_(token) {}
  ~SigningObjects() { clear(); }
  SigningObjects(const SigningObjects&) = delete;
  SigningObjects& operator=(const SigningObjects&) = delete;

  // The signature of `digest` by the vault's private key with this CKA_ID,
  // as SecureElement::sign_digest makes it: ECDSA as DER (digest 1..64
  // bytes); RSA PKCS#1 v1.5 or PSS (salt = digest length) with the digest
  // named by its size (32, 48, 64). Throws Error(not_found) when there is no
  // such key, Error(invalid_argument) when the scheme does not fit the key.
  Bytes sign(std::span<const std::uint8_t> object_id, SignatureScheme scheme,
             std::span<const std::uint8_t> digest);

  // Drops the copy of this key (before or after its token objects go).
  void forget(std::span<const std::uint8_t> object_id);
  void clear();

 private:
  struct Entry {
    CK_OBJECT_HANDLE original = CK_INVALID_HANDLE;
    CK_KEY_TYPE key_type = CKK_EC;
    std::shared_ptr<const SessionObject> copy;  // null: the token refused one
    std::chrono::steady_clock::time_point found;
    CK_OBJECT_HANDLE handle() const noexcept { return copy ? copy->handle() : original; }
  };

  Entry entry_for(CK_SESSION_HANDLE session, const Bytes& object_id);
  Entry make_entry(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE original);

  Token& token_;
  std::mutex mutex_;
  std::map<Bytes, Entry> entries_;
};

}  // namespace m2mvault::hsm::pkcs11
