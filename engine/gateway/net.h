// TCP plumbing of the gateway: addresses, listening, connecting, waiting.
// Every socket here is non-blocking; waits are bounded by a deadline and
// end early when the gateway is stopping.
#pragma once

#include <chrono>
#include <string>

namespace m2mvault::gateway {

using Clock = std::chrono::steady_clock;

// "host:port" or "[v6-address]:port" split; throws Error(invalid_argument)
// naming `address` when it is malformed.
struct HostPort {
  std::string host;
  std::string port;
};
HostPort parse_host_port(const std::string& address);

// A listening socket on `address` (port 0: any free port). Throws
// Error(invalid_argument) for a bad address, Error(backend_unavailable)
// when it cannot be bound.
int listen_tcp(const std::string& address, int backlog);

// The local address of a bound socket, "host:port" (IPv6 as "[a]:port").
std::string local_address(int fd);
// The peer address of a connected socket.
std::string peer_address(int fd);

// Connects to `address` within `timeout`; returns the non-blocking socket
// or -1 and sets `error` to a one-line reason.
int connect_tcp(const std::string& address, std::chrono::milliseconds timeout, std::string& error);

void set_nonblocking(int fd);

// Waits until `fd` is ready for `events` (POLLIN/POLLOUT), `deadline`
// passes (returns false, `timed_out` set) or `stop_fd` becomes readable
// (returns false).
bool wait_ready(int fd, short events, int stop_fd, Clock::time_point deadline, bool& timed_out);

}  // namespace m2mvault::gateway
