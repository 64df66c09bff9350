// How libm2mvault-tls reports a failure: one entry on OpenSSL's error queue
// (library "m2mvault-tls", a reason per wire code) and the calling thread's
// last error, both carrying the same one-line message.
#pragma once

#include <string_view>

#include "api/error.h"
#include "engine/tls/m2mvault_tls.h"

namespace m2mvault::tls {

m2mvault_tls_error to_tls_error(ErrorCode code);

// Records `code` and `message` as the thread's last error and raises them
// on OpenSSL's error queue. `message` must carry no key bytes.
void report_error(m2mvault_tls_error code, std::string_view message);
inline void report_error(const Error& e) {
  report_error(to_tls_error(e.code()), e.what());
}

// Forgets the thread's last error (a call that succeeds starts clean).
void clear_last_error();

}  // namespace m2mvault::tls
