// The daemon's Unix-socket front end. It only frames, reads the peer's
// credentials and enforces transport limits; every decision about what a
// request may do belongs to the RequestHandler.
//
// Each connection is served by its own thread with blocking waits, so a
// request wakes exactly the thread that answers it (no hand-off between
// threads on the way), and a handler that blocks holds up only its own
// connection. Clients hold few, long-lived connections (the provider keeps
// one per thread), so max_connections bounds the threads.
#pragma once

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <memory>

#include "api/protocol.h"

namespace m2mvault::api {

struct ServerConfig {
  std::filesystem::path socket_path;
  std::size_t max_frame_bytes = 1u << 20;
  // A frame must arrive whole within this time of its first byte.
  std::chrono::milliseconds frame_timeout{10'000};
  // A connection with no request in flight is closed after this long.
  std::chrono::milliseconds idle_timeout{std::chrono::minutes(10)};
  std::size_t max_connections = 512;
  // Handlers running at once; a request beyond waits for one to finish.
  // Handlers may block (HSM, fsync), so this is more than the cores.
  std::size_t threads = 8;
  // Open connections one principal may hold (0: no limit beyond
  // max_connections); asked for each new connection, so it may change.
  std::function<std::size_t(const Principal&)> connections_per_principal;
};

class Server {
 public:
  // Creates the socket's directory (mode 0755) if missing and binds the
  // socket (mode 0666). A stale socket file left by a dead daemon is
  // replaced; a live daemon on the path is an error (Error(conflict)).
  Server(ServerConfig config, RequestHandler& handler);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Serves until stop() is called; returns after all threads have joined.
  void run();
  // Thread-safe and async-signal-unsafe: call from a normal thread (the
  // daemon uses a signal_set inside run()).
  void stop();

  std::size_t connection_count() const;

  struct Impl;  // defined in server.cpp, where connections need it

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace m2mvault::api
