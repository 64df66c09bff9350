// The one error type of m2mvault: a stable wire code plus a one-line human
// message that names the thing at fault. Messages never carry key bytes.
#pragma once

#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace m2mvault {

// The stable error codes of the wire protocol (api/PROTOCOL.md).
enum class ErrorCode {
  invalid_argument,
  not_found,
  denied,
  conflict,
  expired,
  unsupported,
  backend_unavailable,
  internal,
  handshake_failed,  // a TLS handshake the daemon ran failed (peer refused or not verified)
};

constexpr std::string_view to_string(ErrorCode code) {
  switch (code) {
    case ErrorCode::invalid_argument:
      return "invalid_argument";
    case ErrorCode::not_found:
      return "not_found";
    case ErrorCode::denied:
      return "denied";
    case ErrorCode::conflict:
      return "conflict";
    case ErrorCode::expired:
      return "expired";
    case ErrorCode::unsupported:
      return "unsupported";
    case ErrorCode::backend_unavailable:
      return "backend_unavailable";
    case ErrorCode::internal:
      return "internal";
    case ErrorCode::handshake_failed:
      return "handshake_failed";
  }
  return "internal";
}

// Parses a wire code; unknown strings give nullopt (a newer daemon's code).
inline std::optional<ErrorCode> error_code_from_string(std::string_view s) {
  for (auto c :
       {ErrorCode::invalid_argument, ErrorCode::not_found, ErrorCode::denied, ErrorCode::conflict,
        ErrorCode::expired, ErrorCode::unsupported, ErrorCode::backend_unavailable,
        ErrorCode::internal, ErrorCode::handshake_failed}) {
    if (to_string(c) == s) return c;
  }
  return std::nullopt;
}

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

}  // namespace m2mvault
