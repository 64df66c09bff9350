// The C++ client of the m2mvault socket, used by the CLI and the provider.
// Plain POSIX sockets and blocking I/O; one Client per thread (not shared).
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "api/error.h"

namespace m2mvault::api {

// $M2MVAULT_SOCKET if set, else kDefaultSocketPath.
inline constexpr const char* kDefaultSocketPath = "/run/m2mvault/m2mvault.sock";
std::filesystem::path default_socket_path();

class Client {
 public:
  // Connects; throws Error(backend_unavailable) naming the path when the
  // daemon cannot be reached.
  explicit Client(const std::filesystem::path& socket_path,
                  std::chrono::milliseconds timeout = std::chrono::seconds(30));
  ~Client();
  Client(Client&& other) noexcept;
  Client& operator=(Client&& other) noexcept;
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Sends one request and waits for its response. Returns `result`; a response
  // carrying `error` is thrown as Error with its code and message. Transport
  // failures throw Error(backend_unavailable).
  nlohmann::json call(std::string_view op, const nlohmann::json& params = nlohmann::json::object());

  // Pipelining: send() queues requests on the wire and returns their ids;
  // receive() returns the next whole response object (as sent by the daemon,
  // with `id` and `result` or `error`), in order.
  std::uint64_t send(std::string_view op, const nlohmann::json& params = nlohmann::json::object());
  nlohmann::json receive();

  // False once a transport failure has closed the connection; a request that
  // failed while this stays true was answered by the daemon with an error.
  bool connected() const noexcept { return fd_ >= 0; }

  // Raw access for tests of the transport: write bytes as they are.
  void send_raw(std::string_view bytes);

 private:
  // Closes the connection (a broken stream cannot be resynchronized) and
  // throws Error(backend_unavailable) naming the socket.
  [[noreturn]] void fail(const std::string& what);
  void wipe_buffer() noexcept;

  int fd_ = -1;
  std::uint64_t next_id_ = 1;
  std::chrono::milliseconds timeout_;
  std::string socket_path_;  // for error messages
  std::string buffer_;       // the frame being sent or received, reused
};

}  // namespace m2mvault::api
