#include "tools/tls_relay.h"

#include <fmt/format.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "api/encoding.h"
#include "api/error.h"

namespace m2mvault::tools {
namespace {

using Clock = std::chrono::steady_clock;

struct HostPort {
  std::string host;
  std::string port;
};

HostPort split_address(const std::string& address) {
  std::string host, port;
  if (!address.empty() && address.front() == '[') {
    const auto close = address.find(']');
    if (close == std::string::npos || close + 1 >= address.size() || address[close + 1] != ':')
      throw Error(ErrorCode::invalid_argument,
                  fmt::format("'{}' is not host:port or [v6]:port", address));
    host = address.substr(1, close - 1);
    port = address.substr(close + 2);
  } else {
    const auto colon = address.rfind(':');
    if (colon == std::string::npos || colon == 0)
      throw Error(ErrorCode::invalid_argument, fmt::format("'{}' is not host:port", address));
    host = address.substr(0, colon);
    port = address.substr(colon + 1);
  }
  if (port.empty() || port.find_first_not_of("0123456789") != std::string::npos ||
      std::stoul(port.substr(0, 6)) > 65535)
    throw Error(ErrorCode::invalid_argument, fmt::format("'{}' has no valid port", address));
  return {host, port};
}

struct AddrInfo {
  addrinfo* list = nullptr;
  ~AddrInfo() {
    if (list) freeaddrinfo(list);
  }
};

AddrInfo resolve(const HostPort& hp, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (passive) hints.ai_flags = AI_PASSIVE;
  AddrInfo info;
  const int rc =
      getaddrinfo(hp.host.empty() ? nullptr : hp.host.c_str(), hp.port.c_str(), &hints, &info.list);
  if (rc != 0)
    throw Error(ErrorCode::invalid_argument,
                fmt::format("cannot resolve '{}': {}", hp.host, gai_strerror(rc)));
  return info;
}

int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return left.count() > 0 ? static_cast<int>(left.count()) : 0;
}

// Waits for `events` on `fd` until `deadline`; false on timeout.
bool wait_for(int fd, short events, Clock::time_point deadline) {
  while (true) {
    pollfd p{fd, events, 0};
    const int rc = ::poll(&p, 1, remaining_ms(deadline));
    if (rc > 0) return true;
    if (rc == 0) return false;
    if (errno != EINTR) return false;
  }
}

void write_all(int fd, const std::vector<std::uint8_t>& bytes, Clock::time_point deadline) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::send(fd, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
    if (n > 0) {
      done += static_cast<std::size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!wait_for(fd, POLLOUT, deadline))
        throw Error(ErrorCode::handshake_failed, "timed out sending to the peer");
    } else {
      throw Error(ErrorCode::handshake_failed,
                  fmt::format("sending to the peer failed: {}", std::strerror(errno)));
    }
  }
}

}  // namespace

int connect_tcp(const std::string& address, std::chrono::milliseconds timeout) {
  const HostPort hp = split_address(address);
  const AddrInfo info = resolve(hp, false);
  const auto deadline = Clock::now() + timeout;
  std::string last = "no address";
  for (addrinfo* a = info.list; a; a = a->ai_next) {
    const int fd =
        ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) continue;
    int rc = ::connect(fd, a->ai_addr, a->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      if (wait_for(fd, POLLOUT, deadline)) {
        int err = 0;
        socklen_t len = sizeof err;
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        errno = err;
        rc = err == 0 ? 0 : -1;
      } else {
        errno = ETIMEDOUT;
      }
    }
    if (rc == 0) return fd;
    last = std::strerror(errno);
    ::close(fd);
  }
  throw Error(ErrorCode::handshake_failed, fmt::format("cannot connect to {}: {}", address, last));
}

int accept_one(const std::string& address, std::chrono::milliseconds timeout) {
  const HostPort hp = split_address(address);
  const AddrInfo info = resolve(hp, true);
  for (addrinfo* a = info.list; a; a = a->ai_next) {
    const int listener = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (listener < 0) continue;
    const int on = 1;
    ::setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (::bind(listener, a->ai_addr, a->ai_addrlen) != 0 || ::listen(listener, 1) != 0) {
      const std::string why = std::strerror(errno);
      ::close(listener);
      throw Error(ErrorCode::invalid_argument,
                  fmt::format("cannot listen on {}: {}", address, why));
    }
    const bool ready = wait_for(listener, POLLIN, Clock::now() + timeout);
    const int fd = ready ? ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK) : -1;
    ::close(listener);
    if (fd < 0)
      throw Error(ErrorCode::handshake_failed,
                  fmt::format("no peer connected to {} within {} s", address,
                              std::chrono::duration_cast<std::chrono::seconds>(timeout).count()));
    return fd;
  }
  throw Error(ErrorCode::invalid_argument, fmt::format("cannot listen on {}", address));
}

nlohmann::json relay_handshake(api::Client& client, int fd, nlohmann::json started,
                               std::chrono::milliseconds timeout) {
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  // `timeout` bounds each silence of the peer, not the whole exchange.
  auto deadline = Clock::now() + timeout;
  nlohmann::json progress = std::move(started);
  const std::string session = progress.at("session").get<std::string>();
  try {
    std::vector<std::uint8_t> buffer(16 * 1024);
    while (true) {
      const auto output = encoding::base64_decode(progress.at("output").get<std::string>());
      if (!output) throw Error(ErrorCode::internal, "the daemon sent invalid base64");
      write_all(fd, *output, deadline);
      if (progress.at("done").get<bool>()) return progress;
      ssize_t n = -1;
      do {
        if (!wait_for(fd, POLLIN, deadline))
          throw Error(ErrorCode::handshake_failed, "timed out waiting for the peer");
        n = ::recv(fd, buffer.data(), buffer.size(), 0);
      } while (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK));
      if (n <= 0) {
        throw Error(ErrorCode::handshake_failed,
                    "the peer closed the connection before the handshake completed");
      }
      progress = client.call("handshake.step",
                             {{"session", session},
                              {"input", encoding::base64_encode(std::span<const std::uint8_t>(
                                            buffer.data(), static_cast<std::size_t>(n)))}});
      deadline = Clock::now() + timeout;
    }
  } catch (...) {
    // The daemon ends a session itself when the handshake fails or
    // completes; a relay failure leaves it open, so end it here (an ended
    // session answers not_found, which is fine).
    try {
      client.call("handshake.abort", {{"session", session}});
    } catch (...) {
    }
    throw;
  }
}

}  // namespace m2mvault::tools
