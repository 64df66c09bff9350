#include "engine/tls/tls_errors.h"

#include <openssl/err.h>

#include <string>

namespace m2mvault::tls {
namespace {

struct LastError {
  m2mvault_tls_error code = M2MVAULT_TLS_OK;
  std::string message;
};
thread_local LastError last_error;

// Reason codes are the m2mvault_tls_error values; their texts are loaded
// once into OpenSSL's string table under a library code of our own.
ERR_STRING_DATA reason_strings[] = {
    {ERR_PACK(0, 0, M2MVAULT_TLS_INVALID_ARGUMENT), "invalid argument"},
    {ERR_PACK(0, 0, M2MVAULT_TLS_NOT_FOUND), "psk identity not found in the vault"},
    {ERR_PACK(0, 0, M2MVAULT_TLS_DENIED), "psk.release denied by the vault policy"},
    {ERR_PACK(0, 0, M2MVAULT_TLS_CONFLICT), "conflict"},
    {ERR_PACK(0, 0, M2MVAULT_TLS_EXPIRED), "vault key expired"},
    {ERR_PACK(0, 0, M2MVAULT_TLS_UNSUPPORTED), "vault key not usable as a TLS PSK"},
    {ERR_PACK(0, 0, M2MVAULT_TLS_BACKEND_UNAVAILABLE), "m2mvaultd unavailable"},
    {ERR_PACK(0, 0, M2MVAULT_TLS_INTERNAL), "internal error"},
    {0, nullptr},
};
ERR_STRING_DATA library_name[] = {{0, "m2mvault-tls"}, {0, nullptr}};

int error_library() {
  static const int lib = [] {
    const int code = ERR_get_next_error_library();
    ERR_load_strings(code, reason_strings);
    library_name[0].error = ERR_PACK(code, 0, 0);
    ERR_load_strings(0, library_name);
    return code;
  }();
  return lib;
}

}  // namespace

m2mvault_tls_error to_tls_error(ErrorCode code) {
  switch (code) {
    case ErrorCode::invalid_argument:
      return M2MVAULT_TLS_INVALID_ARGUMENT;
    case ErrorCode::not_found:
      return M2MVAULT_TLS_NOT_FOUND;
    case ErrorCode::denied:
      return M2MVAULT_TLS_DENIED;
    case ErrorCode::conflict:
      return M2MVAULT_TLS_CONFLICT;
    case ErrorCode::expired:
      return M2MVAULT_TLS_EXPIRED;
    case ErrorCode::unsupported:
      return M2MVAULT_TLS_UNSUPPORTED;
    case ErrorCode::backend_unavailable:
      return M2MVAULT_TLS_BACKEND_UNAVAILABLE;
    case ErrorCode::internal:
    case ErrorCode::handshake_failed:
      return M2MVAULT_TLS_INTERNAL;
  }
  return M2MVAULT_TLS_INTERNAL;
}

void report_error(m2mvault_tls_error code, std::string_view message) {
  last_error.code = code;
  last_error.message = std::string(m2mvault_tls_error_name(code)) + ": " + std::string(message);
  ERR_raise_data(error_library(), static_cast<int>(code), "%s", last_error.message.c_str());
}

void clear_last_error() {
  last_error.code = M2MVAULT_TLS_OK;
  last_error.message.clear();
}

}  // namespace m2mvault::tls

extern "C" {

m2mvault_tls_error m2mvault_tls_last_error(void) {
  return m2mvault::tls::last_error.code;
}

const char* m2mvault_tls_last_error_message(void) {
  return m2mvault::tls::last_error.message.c_str();
}

void m2mvault_tls_clear_error(void) {
  m2mvault::tls::clear_last_error();
}

const char* m2mvault_tls_error_name(m2mvault_tls_error code) {
  switch (code) {
    case M2MVAULT_TLS_OK:
      return "ok";
    case M2MVAULT_TLS_INVALID_ARGUMENT:
      return "invalid_argument";
    case M2MVAULT_TLS_NOT_FOUND:
      return "not_found";
    case M2MVAULT_TLS_DENIED:
      return "denied";
    case M2MVAULT_TLS_CONFLICT:
      return "conflict";
    case M2MVAULT_TLS_EXPIRED:
      return "expired";
    case M2MVAULT_TLS_UNSUPPORTED:
      return "unsupported";
    case M2MVAULT_TLS_BACKEND_UNAVAILABLE:
      return "backend_unavailable";
    case M2MVAULT_TLS_INTERNAL:
      return "internal";
  }
  return "internal";
}

}  // extern "C"
