#include "api/client.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "api/framing.h"

namespace m2mvault::api {
namespace {

[[noreturn]] void unavailable(const std::string& what) {
  throw Error(ErrorCode::backend_unavailable, what);
}

}  // namespace

std::filesystem::path default_socket_path() {
  const char* env = std::getenv("M2MVAULT_SOCKET");
  if (env && *env) return env;
  return kDefaultSocketPath;
}

Client::Client(const std::filesystem::path& socket_path, std::chrono::milliseconds timeout)
    : timeout_(timeout) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string path = socket_path.string();
  if (path.size() >= sizeof(addr.sun_path)) {
    throw Error(ErrorCode::invalid_argument, "socket path is too long: " + path);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) unavailable(std::string("cannot create a socket: ") + std::strerror(errno));
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int err = errno;
    ::close(fd_);
    fd_ = -1;
    unavailable("cannot reach m2mvaultd at " + path + ": " + std::strerror(err));
  }
}

Client::~Client() {
  if (fd_ >= 0) ::close(fd_);
}

Client::Client(Client&& other) noexcept
    : fd_(other.fd_), next_id_(other.next_id_), timeout_(other.timeout_) {
  other.fd_ = -1;
}

Client& Client::operator=(Client&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    next_id_ = other.next_id_;
    timeout_ = other.timeout_;
    other.fd_ = -1;
  }
  return *this;
}

void Client::send_raw(std::string_view bytes) {
  if (fd_ < 0) unavailable("not connected to m2mvaultd");
  while (!bytes.empty()) {
    ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      unavailable(std::string("lost the connection to m2mvaultd: ") + std::strerror(errno));
    }
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
}

std::uint64_t Client::send(std::string_view op, const nlohmann::json& params) {
  const std::uint64_t id = next_id_++;
  send_raw(encode_frame({{"v", kProtocolVersion}, {"id", id}, {"op", op}, {"params", params}}));
  return id;
}

nlohmann::json Client::receive() {
  if (fd_ < 0) unavailable("not connected to m2mvaultd");
  auto read_exact = [this](char* out, std::size_t n) {
    while (n > 0) {
      ssize_t r = ::recv(fd_, out, n, 0);
      if (r == 0) unavailable("m2mvaultd closed the connection");
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) unavailable("timed out waiting for m2mvaultd");
        unavailable(std::string("lost the connection to m2mvaultd: ") + std::strerror(errno));
      }
      out += r;
      n -= static_cast<std::size_t>(r);
    }
  };
  std::uint8_t header[4];
  read_exact(reinterpret_cast<char*>(header), 4);
  const std::uint32_t n = decode_frame_length(header);
  if (n == 0 || n > kMaxFrameBytes) unavailable("m2mvaultd sent a malformed frame");
  std::string body(n, '\0');
  read_exact(body.data(), n);
  auto message = nlohmann::json::parse(body, nullptr, false);
  if (!message.is_object()) unavailable("m2mvaultd sent a malformed response");
  return message;
}

nlohmann::json Client::call(std::string_view op, const nlohmann::json& params) {
  const std::uint64_t id = send(op, params);
  nlohmann::json response = receive();
  auto rid = response.find("id");
  if (rid == response.end() || !rid->is_number_unsigned() || rid->get<std::uint64_t>() != id) {
    // A response without our id answers a frame the daemon could not parse.
    if (auto err = response.find("error"); err != response.end() && err->is_object()) {
      auto code = error_code_from_string(err->value("code", "internal"));
      throw Error(code.value_or(ErrorCode::internal), err->value("message", "request failed"));
    }
    unavailable("m2mvaultd answered out of order");
  }
  if (auto err = response.find("error"); err != response.end()) {
    std::string code_text = err->is_object() ? err->value("code", "internal") : "internal";
    std::string message =
        err->is_object() ? err->value("message", "request failed") : "request failed";
    throw Error(error_code_from_string(code_text).value_or(ErrorCode::internal), message);
  }
  auto result = response.find("result");
  if (result == response.end()) unavailable("m2mvaultd sent a response without a result");
  return *result;
}

}  // namespace m2mvault::api
