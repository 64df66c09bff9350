#include "api/client.h"

#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "api/framing.h"

namespace m2mvault::api {
namespace {

std::string errno_text(int err) {
  return std::strerror(err);
}

// Appends the JSON text of `value` to `out`; throws nlohmann::json::type_error
// on invalid UTF-8. (Public API only: one short copy per request.)
void append_json(std::string& out, const nlohmann::json& value) {
  out += value.dump(-1, ' ', false, nlohmann::json::error_handler_t::strict);
}

// A string member of an error object, or `fallback` when absent or mistyped.
std::string string_field(const nlohmann::json& object, const char* key, const char* fallback) {
  auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : fallback;
}

[[noreturn]] void throw_error_response(const nlohmann::json& error) {
  if (!error.is_object()) throw Error(ErrorCode::internal, "request failed");
  // A code from a newer daemon that this client does not know is `internal`.
  const auto code = error_code_from_string(string_field(error, "code", "internal"));
  throw Error(code.value_or(ErrorCode::internal), string_field(error, "message", "request failed"));
}

// After a failed send: the daemon may have refused the connection with an
// error frame and hung up (too many connections). That frame, if it is
// waiting whole in the socket, says more than "broken pipe".
void throw_pending_refusal(int fd) {
  char buf[4096];
  ssize_t n;
  do {
    n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 4) return;
  const auto len = decode_frame_length(reinterpret_cast<const std::uint8_t*>(buf));
  if (len == 0 || len > static_cast<std::size_t>(n) - 4) return;
  auto message = nlohmann::json::parse(std::string_view(buf + 4, len), nullptr, false);
  if (!message.is_object()) return;
  if (auto err = message.find("error"); err != message.end()) throw_error_response(*err);
}

}  // namespace

std::filesystem::path default_socket_path() {
  const char* env = std::getenv("M2MVAULT_SOCKET");
  if (env && *env) return env;
  return kDefaultSocketPath;
}

Client::Client(const std::filesystem::path& socket_path, std::chrono::milliseconds timeout)
    : timeout_(timeout), socket_path_(socket_path.string()) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path_.empty() || socket_path_.size() >= sizeof(addr.sun_path)) {
    throw Error(ErrorCode::invalid_argument,
                "socket path is empty or too long: '" + socket_path_ + "'");
  }
  std::memcpy(addr.sun_path, socket_path_.c_str(), socket_path_.size() + 1);
  fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) fail("cannot create a socket: " + errno_text(errno));
  // Bounds connect() (a full backlog), every send() and every recv().
  if (timeout.count() > 0) {
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
    if (::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
        ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0) {
      fail("cannot set the socket timeout: " + errno_text(errno));
    }
  }
  while (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    if (errno == EINTR) continue;
    if (errno == EISCONN) break;  // an interrupted connect() completed anyway
    const int err = errno;
    fail(err == EAGAIN ? "cannot reach m2mvaultd: connection timed out (daemon too busy)"
                       : "cannot reach m2mvaultd: " + errno_text(err));
  }
}

Client::~Client() {
  if (fd_ >= 0) ::close(fd_);
  wipe_buffer();
}

// A frame may carry a key on its way in (key.import) or out (psk.release):
// it does not outlive its use. (The parsed JSON is the caller's to wipe.)
void Client::wipe_buffer() noexcept {
  if (!buffer_.empty()) ::explicit_bzero(buffer_.data(), buffer_.size());
}

Client::Client(Client&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      next_id_(other.next_id_),
      timeout_(other.timeout_),
      socket_path_(std::move(other.socket_path_)),
      buffer_(std::move(other.buffer_)) {}

Client& Client::operator=(Client&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
    next_id_ = other.next_id_;
    timeout_ = other.timeout_;
    socket_path_ = std::move(other.socket_path_);
    buffer_ = std::move(other.buffer_);
  }
  return *this;
}

void Client::fail(const std::string& what) {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  throw Error(ErrorCode::backend_unavailable, what + " (socket " + socket_path_ + ")");
}

void Client::send_raw(std::string_view bytes) {
  if (fd_ < 0) fail("not connected to m2mvaultd");
  while (!bytes.empty()) {
    const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        fail("timed out after " + std::to_string(timeout_.count()) + " ms sending to m2mvaultd");
      }
      const int err = errno;
      if (err == EPIPE || err == ECONNRESET) {
        try {
          throw_pending_refusal(fd_);
        } catch (const Error&) {
          ::close(std::exchange(fd_, -1));
          throw;
        }
      }
      fail("lost the connection to m2mvaultd: " + errno_text(err));
    }
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
}

std::uint64_t Client::send(std::string_view op, const nlohmann::json& params) {
  const std::uint64_t id = next_id_;
  // Serialized straight into the frame buffer: no copy of params.
  buffer_.assign(4, '\0');
  buffer_ += R"({"v":1,"id":)";
  buffer_ += std::to_string(id);
  buffer_ += R"(,"op":)";
  try {
    append_json(buffer_, nlohmann::json(op));
    buffer_ += R"(,"params":)";
    // `{}` at a call site is null, not an empty object.
    if (params.is_null()) {
      buffer_ += "{}";
    } else {
      append_json(buffer_, params);
    }
  } catch (const nlohmann::json::exception&) {
    throw Error(ErrorCode::invalid_argument, "the request is not valid UTF-8");
  }
  buffer_ += '}';
  const std::size_t n = buffer_.size() - 4;
  if (n > kMaxFrameBytes) {
    throw Error(ErrorCode::invalid_argument, "the request of " + std::to_string(n) +
                                                 " bytes exceeds the frame limit of " +
                                                 std::to_string(kMaxFrameBytes) + " bytes");
  }
  buffer_[0] = static_cast<char>(n >> 24);
  buffer_[1] = static_cast<char>(n >> 16);
  buffer_[2] = static_cast<char>(n >> 8);
  buffer_[3] = static_cast<char>(n);
  send_raw(buffer_);
  wipe_buffer();
  ++next_id_;
  return id;
}

nlohmann::json Client::receive() {
  if (fd_ < 0) fail("not connected to m2mvaultd");
  auto read_exact = [this](char* out, std::size_t n) {
    while (n > 0) {
      const ssize_t r = ::recv(fd_, out, n, 0);
      if (r == 0) fail("m2mvaultd closed the connection");
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          fail("timed out after " + std::to_string(timeout_.count()) + " ms waiting for m2mvaultd");
        }
        fail("lost the connection to m2mvaultd: " + errno_text(errno));
      }
      out += r;
      n -= static_cast<std::size_t>(r);
    }
  };
  std::uint8_t header[4];
  read_exact(reinterpret_cast<char*>(header), 4);
  const std::uint32_t n = decode_frame_length(header);
  if (n == 0 || n > kMaxFrameBytes) {
    fail("m2mvaultd sent a frame of " + std::to_string(n) + " bytes (limit " +
         std::to_string(kMaxFrameBytes) + ")");
  }
  buffer_.resize(n);
  read_exact(buffer_.data(), n);
  auto message = nlohmann::json::parse(buffer_, nullptr, /*allow_exceptions=*/false);
  wipe_buffer();
  if (!message.is_object()) fail("m2mvaultd sent a response that is not a JSON object");
  return message;
}

nlohmann::json Client::call(std::string_view op, const nlohmann::json& params) {
  const std::uint64_t id = send(op, params);
  nlohmann::json response = receive();
  const auto rid = response.find("id");
  const bool ours =
      rid != response.end() && rid->is_number_unsigned() && rid->get<std::uint64_t>() == id;
  if (auto err = response.find("error"); err != response.end()) {
    // An error without our id refuses the connection itself (too many
    // connections) or answers a frame the daemon could not read.
    throw_error_response(*err);
  }
  if (!ours) fail("m2mvaultd answered a different request");
  auto result = response.find("result");
  if (result == response.end()) fail("m2mvaultd sent a response without a result");
  return std::move(*result);
}

}  // namespace m2mvault::api
