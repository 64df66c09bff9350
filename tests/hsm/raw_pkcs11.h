// A raw PKCS#11 session for tests: what any caller holding the user PIN can
// do to the token, without going through the backend.
#pragma once

#include <dlfcn.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "hsm/pkcs11/ck.h"

namespace m2mvault::hsm::testing {

class RawSession {
 public:
  RawSession(const std::string& module, const std::string& token_label, const std::string& pin);
  ~RawSession();
  RawSession(const RawSession&) = delete;
  RawSession& operator=(const RawSession&) = delete;

  CK_FUNCTION_LIST* fn() const { return fn_; }
  CK_SESSION_HANDLE handle() const { return session_; }
  CK_RV login_rv() const { return login_rv_; }

  std::vector<CK_OBJECT_HANDLE> find(std::vector<CK_ATTRIBUTE> templ);
  // Objects with CKA_TOKEN true (public and private, as the user sees them).
  std::size_t count_token_objects();
  // CKA_VALUE of an object: the return code of C_GetAttributeValue.
  CK_RV read_value_rv(CK_OBJECT_HANDLE object);
  // A fresh extractable AES-256 session key allowed to wrap.
  CK_OBJECT_HANDLE make_wrapping_key();
  // C_WrapKey(CKM_AES_KEY_WRAP_PAD, wrapping_key, object): the return code.
  CK_RV wrap_rv(CK_OBJECT_HANDLE wrapping_key, CK_OBJECT_HANDLE object);

 private:
  void* library_ = nullptr;
  CK_FUNCTION_LIST* fn_ = nullptr;
  CK_SESSION_HANDLE session_ = CK_INVALID_HANDLE;
  CK_RV login_rv_ = CKR_OK;
};

}  // namespace m2mvault::hsm::testing
