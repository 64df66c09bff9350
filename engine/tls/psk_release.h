// psk.release through a small pool of daemon connections: the one place the
// library talks to m2mvaultd and the one place a PSK passes through it.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>

namespace m2mvault::tls {

// What the vault says about a released key, without its value.
struct ReleasedKey {
  std::string name;
  std::string kind;                   // "kpsa" or "kc"
  std::string id;                     // the identifier: the psk_identity
  std::optional<std::string> entity;  // AE-ID/CSE-ID the key is bound to
};

// Calls psk.release with `params` ({"id": ...} or {"key": ...}) on the
// daemon at `socket_path` and decodes the key straight into `out`; returns
// the key's metadata and sets `out_len`. The base64 text in the response is
// wiped. Throws m2mvault::Error: the daemon's code (not_found, denied,
// expired, unsupported, ...), backend_unavailable when it cannot be reached
// (after one retry on a fresh connection), invalid_argument when the key is
// longer than `out`, internal for a malformed answer. `out` holds nothing
// after a throw.
ReleasedKey release_psk(const std::string& socket_path, const nlohmann::json& params,
                        std::span<std::uint8_t> out, std::size_t& out_len);

// A psk_identity worth asking the vault about: 1..256 printable ASCII
// characters. Anything else (a TLS 1.3 ticket, binary junk) is not a vault
// identifier and is refused locally.
bool plausible_identity(std::string_view identity);

// The socket to use for a caller's `socket_path` argument (NULL: the
// environment, else the default), resolved once at configuration time.
std::string resolve_socket_path(const char* socket_path);

}  // namespace m2mvault::tls
