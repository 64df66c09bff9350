// The gateway's accept loop: a thread per connection, at most
// `max_connections` at once (more are accepted and closed at once with a
// log line), and a clean stop: stop() — safe from a signal handler — makes
// the loop and every session end; run() returns when they all have.
#pragma once

#include <openssl/ssl.h>

#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <string>

#include "engine/gateway/session.h"

namespace m2mvault::gateway {

class Gateway {
 public:
  // `log` receives one line per session (and per refused connection); it
  // is called from session threads, one call at a time.
  Gateway(SSL_CTX* ctx, int listen_fd, std::string forward_address, SessionLimits limits,
          std::size_t max_connections, std::function<void(const std::string&)> log);
  ~Gateway();
  Gateway(const Gateway&) = delete;
  Gateway& operator=(const Gateway&) = delete;

  // Serves until stop(); then waits up to `drain` for sessions to end.
  // Returns the number of sessions still running after that (0: clean).
  std::size_t run(std::chrono::milliseconds drain);

  // Async-signal-safe.
  void stop() noexcept;

 private:
  void session_thread(int fd);
  void emit(const std::string& line);

  SSL_CTX* ctx_;
  int listen_fd_;
  std::string forward_;
  SessionLimits limits_;
  std::size_t max_connections_;
  std::function<void(const std::string&)> log_;
  int stop_pipe_[2] = {-1, -1};

  std::mutex mutex_;  // guards active_ and log_
  std::condition_variable idle_;
  std::size_t active_ = 0;
};

}  // namespace m2mvault::gateway
