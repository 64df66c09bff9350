// The CLI's TCP mode for the handshakes the daemon runs: it carries TLS
// records between a TCP peer and the daemon's handshake.start/step
// messages. Only ciphertext and public handshake messages pass through
// here; every secret stays in the daemon.
#pragma once

#include <chrono>
#include <nlohmann/json.hpp>
#include <string>

#include "api/client.h"

namespace m2mvault::tools {

// A connected socket to `host:port` (or `[v6]:port`). Throws
// Error(invalid_argument) for a malformed address and Error(handshake_failed)
// when no connection is made within `timeout`.
int connect_tcp(const std::string& address, std::chrono::milliseconds timeout);

// Listens on `host:port` and returns the first connection accepted within
// `timeout`; the listening socket is closed.
int accept_one(const std::string& address, std::chrono::milliseconds timeout);

// Relays a handshake the daemon has started (`started` is handshake.start's
// result, so a bad credential fails before any connection is made) until it
// completes; returns the last handshake.step result (with the stored key).
// Closes `fd`. A peer that hangs up, or stays silent for `timeout`, ends the
// handshake with Error(handshake_failed), and the daemon's session is aborted.
nlohmann::json relay_handshake(api::Client& client, int fd, nlohmann::json started,
                               std::chrono::milliseconds timeout);

}  // namespace m2mvault::tools
