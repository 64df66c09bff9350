// What the server hands the daemon core: who is asking (from the kernel,
// never from the request) and a validated request envelope.
#pragma once

#include <sys/types.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace m2mvault::api {

// The peer of a connection, from SO_PEERCRED and SO_PEERGROUPS.
struct Principal {
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = static_cast<gid_t>(-1);
  pid_t pid = 0;
  std::vector<gid_t> groups;  // supplementary groups
  std::string exe;            // /proc/<pid>/exe when the connection was made ("" if unknown)
};

struct Request {
  nlohmann::json id;      // echoed in the response (number or string)
  std::string op;         // e.g. "key.import"
  nlohmann::json params;  // always an object (empty when absent)
};

// Implemented by the vault. Returns the `result` object of the response, or
// throws m2mvault::Error (any other exception becomes `internal`, with a
// message that reveals nothing). Called concurrently from several threads.
class RequestHandler {
 public:
  virtual ~RequestHandler() = default;
  virtual nlohmann::json handle(const Principal& principal, const Request& request) = 0;
  // Runs on the connection's thread after a reply has been sent, before it
  // waits for the next request: work that need not delay a reply. Skipped
  // when the connection's next request has already arrived, or no handler
  // slot is free at that moment. Must not throw.
  virtual void after_reply() noexcept {}
};

}  // namespace m2mvault::api
