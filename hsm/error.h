// Errors raised at the secure-element boundary. The vault maps them onto the
// wire codes; messages name the object or the PKCS#11/TPM return code, never
// key material.
#pragma once

#include <stdexcept>
#include <string>

namespace m2mvault::hsm {

enum class Failure {
  invalid_argument,  // the caller asked for something malformed (bad length, bad algorithm)
  not_found,         // the object referenced does not exist in the token
  unsupported,       // the token or backend cannot do this
  unavailable,       // the token cannot be reached/opened/logged into, or its KEK is missing
  internal,          // anything else (an unexpected return code)
};

class Error : public std::runtime_error {
 public:
  Error(Failure failure, const std::string& message)
      : std::runtime_error(message), failure_(failure) {}
  Failure failure() const noexcept { return failure_; }

 private:
  Failure failure_;
};

}  // namespace m2mvault::hsm
