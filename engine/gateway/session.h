// One client connection of the gateway: the TLS handshake (bounded by a
// timeout), the connection to the CSE, the plaintext relay both ways, and
// one log line naming the authenticated peer (TR-0038 7.1.2: the MN-CSE
// associates the session with the AE-ID).
#pragma once

#include <openssl/ssl.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

namespace m2mvault::gateway {

struct SessionLimits {
  std::chrono::milliseconds handshake_timeout{10'000};
  std::chrono::milliseconds connect_timeout{5'000};
  std::chrono::milliseconds idle_timeout{300'000};
};

// What one session did; the gateway logs it as one line.
struct SessionRecord {
  std::string peer;     // client address
  std::string outcome;  // "closed", "handshake_failed", "forward_failed", "timeout", "shutdown"
  std::string reason;   // why it ended early ("" when it did not)
  std::string entity;   // AE-ID/CSE-ID bound to the PSK, or from the client certificate
  std::string kpsa_id;  // psk_identity of a PSK session
  std::string subject;  // client certificate subject (certificate sessions)
  std::string protocol, cipher;
  std::uint64_t bytes_in = 0;   // client -> CSE (plaintext)
  std::uint64_t bytes_out = 0;  // CSE -> client
  std::chrono::milliseconds duration{0};
};

// Serves the accepted connection `client_fd` (takes ownership) and returns
// what happened. `stop_fd` becomes readable when the gateway shuts down.
SessionRecord serve_session(SSL_CTX* ctx, int client_fd, const std::string& forward_address,
                            const SessionLimits& limits, int stop_fd);

// The record as one line: `session peer=… entity=… kpsa_id=… …`.
std::string format_record(const SessionRecord& record);

}  // namespace m2mvault::gateway
