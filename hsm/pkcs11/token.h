// The vault's token, opened and logged in: module, slot, PIN, session pools
// and the KEK lookup. Shared by the backend, ensure_kek and the libp11 keys.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "hsm/pkcs11/ck.h"
#include "hsm/pkcs11/module.h"
#include "hsm/pkcs11/pkcs11_backend.h"
#include "hsm/pkcs11/session_pool.h"
#include "hsm/secure_buffer.h"

namespace m2mvault::hsm::pkcs11 {

// The first line of `path`, trimmed. Throws Error(unavailable) naming the file.
SecureBuffer read_pin_file(const std::filesystem::path& path);

// C_Login as CKU_USER; CKR_USER_ALREADY_LOGGED_IN counts as success.
CK_RV login_user(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session, const SecureBuffer& pin);

class Token {
 public:
  // Exports SOFTHSM2_CONF when configured, loads the module, finds the token
  // by label, reads the PIN, opens the session pools and logs in. Throws
  // Error(unavailable) naming the module, token label or PIN file at fault.
  explicit Token(const Config& config);

  CK_FUNCTION_LIST* fn() const noexcept { return module_->fn(); }
  Module& module() const noexcept { return *module_; }
  CK_SLOT_ID slot() const noexcept { return slot_; }
  const std::string& label() const noexcept { return label_; }
  std::string model() const;
  const SecureBuffer& pin() const noexcept { return pin_; }

  // Sessions for operations.
  SessionPool& sessions() noexcept { return *sessions_; }
  // One session for destroying cached objects from any thread; never held
  // while another session is borrowed, so it cannot deadlock.
  SessionPool& housekeeping() noexcept { return *housekeeping_; }

  // The KEK (CKO_SECRET_KEY, CKK_AES, CKA_LABEL kKekLabel), if present.
  std::optional<CK_OBJECT_HANDLE> find_kek();
  // Generates the persistent, private, non-extractable AES-256 KEK.
  CK_OBJECT_HANDLE generate_kek();

  // The audit log's HMAC key (CKK_GENERIC_SECRET, CKA_LABEL kAuditKeyLabel),
  // generated persistent, private and non-extractable when absent.
  CK_OBJECT_HANDLE find_or_generate_audit_key();

 private:
  std::shared_ptr<Module> module_;
  CK_SLOT_ID slot_ = 0;
  std::string label_;
  SecureBuffer pin_;
  std::unique_ptr<SessionPool> housekeeping_;
  std::unique_ptr<SessionPool> sessions_;
};

// Creates the KEK in the session's token (the session must be logged in as user).
CK_OBJECT_HANDLE generate_kek_in(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session);

}  // namespace m2mvault::hsm::pkcs11
