// The provider's link to m2mvaultd: a pool of api::Client connections, one in
// use per thread at a time, that survives fork() (a child never uses its
// parent's sockets) and daemon restarts (a bounded reconnect).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string_view>
#include <vector>

#include "api/client.h"

namespace m2mvault::provider {

// backend_unavailable as the daemon's own answer (its token or audit log
// failed), as opposed to a daemon that could not be reached.
class DaemonUnavailable : public Error {
 public:
  explicit DaemonUnavailable(const Error& answer) : Error(answer) {}
};

class DaemonLink {
 public:
  explicit DaemonLink(std::filesystem::path socket_path);
  ~DaemonLink();
  DaemonLink(const DaemonLink&) = delete;
  DaemonLink& operator=(const DaemonLink&) = delete;

  const std::filesystem::path& socket_path() const { return socket_path_; }

  // Sends one request on an idle pooled connection (or a new one) and returns
  // its result. A lost or refused connection (backend_unavailable) is retried
  // on a fresh connection for up to kReconnectWindow. A backend_unavailable
  // answer from the daemon is not: the request may have run (a sign counts a
  // use of a key with a usage limit), so it is thrown as DaemonUnavailable.
  // Otherwise throws m2mvault::Error as api::Client does.
  nlohmann::json call(std::string_view op, const nlohmann::json& params);

  static constexpr std::chrono::milliseconds kReconnectWindow{2000};

  // fork() handlers (registered once per process): hold every pool's lock
  // across fork(), and in the child drop the parent's connections.
  static void before_fork();
  static void after_fork_in_parent();
  static void after_fork_in_child();

 private:
  // An idle connection (pooled = true) or a new one; throws when the daemon
  // cannot be reached.
  std::unique_ptr<api::Client> acquire(bool& pooled);
  void release(std::unique_ptr<api::Client> client);
  void forget_inherited_connections();

  const std::filesystem::path socket_path_;
  std::mutex mutex_;
  std::vector<std::unique_ptr<api::Client>> idle_;  // guarded by mutex_
  pid_t owner_pid_;                                 // the process idle_ belongs to
};

}  // namespace m2mvault::provider
