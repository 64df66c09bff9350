// Secure-element calls from the vault: hsm::Error becomes the wire's Error.
#pragma once

#include "api/error.h"
#include "hsm/error.h"

namespace m2mvault::vault {

inline ErrorCode code_of(hsm::Failure failure) {
  switch (failure) {
    case hsm::Failure::invalid_argument:
      return ErrorCode::invalid_argument;
    case hsm::Failure::not_found:
      return ErrorCode::not_found;
    case hsm::Failure::unsupported:
      return ErrorCode::unsupported;
    case hsm::Failure::unavailable:
      return ErrorCode::backend_unavailable;
    case hsm::Failure::internal:
      return ErrorCode::internal;
  }
  return ErrorCode::internal;
}

// Runs a secure-element call, turning hsm::Error into the wire error type.
template <typename F>
auto in_token(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const hsm::Error& e) {
    throw Error(code_of(e.failure()), e.what());
  }
}

}  // namespace m2mvault::vault
