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
//
// Signatures made ready ahead: after an ECDSA or RSA PKCS#1 v1.5 signature
// (mechanisms that do not depend on the digest), the session it used is
// parked, and arm_pending() runs C_SignInit on it again with the same key,
// so that the next such signature with that key needs only C_Sign. The
// daemon calls arm_pending() after it has sent its reply, when the client
// no longer waits. Measured on SoftHSM2 with P-256, 3 ms after the last
// call: C_SignInit 167 us and C_Sign 86 us; C_Sign alone on an armed
// session 135 us. These sessions are the object's own (at most
// kMaxSessions), never the token's pool: an armed session cannot run
// another signature (HMAC) or a search. An armed session is closed, which
// ends its operation, whenever its key is forgotten or replaced, so it
// never signs for a key the vault dropped. PSS is not armed: its
// parameters name the digest.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <utility>
#include <vector>

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

  // Arms the sessions parked by signatures before the call (see above);
  // those parked meanwhile wait for the next call. Never throws: a session
  // that cannot be armed is closed.
  void arm_pending() noexcept;

  // Drops the copy of this key (before or after its token objects go) and
  // closes the sessions armed with it.
  void forget(std::span<const std::uint8_t> object_id);
  // Drops every copy and closes every session of this object's own.
  void clear() noexcept;

  // Sessions of this object's own: opened, and of those armed (tests).
  std::size_t sessions_open() const;
  std::size_t sessions_armed() const;

  static constexpr std::size_t kMaxSessions = 32;

 private:
  struct Entry {
    CK_OBJECT_HANDLE original = CK_INVALID_HANDLE;
    CK_KEY_TYPE key_type = CKK_EC;
    std::shared_ptr<const SessionObject> copy;  // null: the token refused one
    std::chrono::steady_clock::time_point found;
    // Told apart from every entry before it: a module may hand out the
    // handle of a destroyed object again.
    std::uint64_t generation = 0;
    CK_OBJECT_HANDLE handle() const noexcept { return copy ? copy->handle() : original; }
  };

  // An own session with C_SignInit(mechanism, key) done, or to be done,
  // for the entry of that generation.
  struct Armed {
    CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
    std::uint64_t generation = 0;
    CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
    CK_MECHANISM_TYPE mechanism = CKM_ECDSA;
  };
  struct Outcome {
    CK_RV rv = CKR_OK;
    const char* call = "C_Sign";  // what failed, when rv says so
    CK_ULONG size = 0;            // of the signature
  };

  // The key's entry: from memory within kRecheck of its last look-up, else
  // looked up in a session borrowed from the token's pool (never call this
  // while holding one: the pool may have a single session).
  Entry entry_for(const Bytes& object_id);
  Entry make_entry(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE original);
  // One attempt on an armed, a spare or a pool session.
  Outcome sign_once(const Bytes& object_id, const Entry& entry, CK_MECHANISM& mechanism,
                    std::span<const CK_BYTE> input, std::span<CK_BYTE> out);
  Outcome init_and_sign(CK_SESSION_HANDLE session, CK_MECHANISM& mechanism, CK_OBJECT_HANDLE key,
                        std::span<const CK_BYTE> input, std::span<CK_BYTE> out);
  std::optional<CK_SESSION_HANDLE> take_armed(const Bytes& object_id, const Armed& wanted);
  std::optional<CK_SESSION_HANDLE> take_spare();
  void park(const Bytes& object_id, const Armed& armed) noexcept;
  // Takes the key's armed sessions out (mutex_ held; allocates nothing).
  std::vector<Armed> disarm_locked(const Bytes& object_id) noexcept;
  void close_session(CK_SESSION_HANDLE session) noexcept;

  Token& token_;
  mutable std::mutex mutex_;
  std::map<Bytes, Entry> entries_;
  std::uint64_t generations_ = 0;
  std::size_t opened_ = 0;                       // own sessions open
  std::size_t limit_ = kMaxSessions;             // lowered if the module refuses more
  std::vector<std::pair<Bytes, Armed>> parked_;  // own, to be armed
  std::map<Bytes, std::vector<Armed>> armed_;    // own, C_SignInit done
};

}  // namespace m2mvault::hsm::pkcs11
