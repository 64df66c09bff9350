#include "engine/gateway/gateway.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "api/error.h"
#include "engine/gateway/net.h"

namespace m2mvault::gateway {

Gateway::Gateway(SSL_CTX* ctx, int listen_fd, std::string forward_address, SessionLimits limits,
                 std::size_t max_connections, std::function<void(const std::string&)> log)
    : ctx_(ctx),
      listen_fd_(listen_fd),
      forward_(std::move(forward_address)),
      limits_(limits),
      max_connections_(max_connections),
      log_(std::move(log)) {
  if (::pipe2(stop_pipe_, O_CLOEXEC | O_NONBLOCK) != 0)
    throw Error(ErrorCode::internal, std::string("cannot create a pipe: ") + std::strerror(errno));
}

Gateway::~Gateway() {
  for (int fd : stop_pipe_)
    if (fd >= 0) ::close(fd);
}

void Gateway::stop() noexcept {
  const char byte = 1;
  // Never read: the pipe stays readable, so every poller sees it.
  [[maybe_unused]] const ssize_t n = ::write(stop_pipe_[1], &byte, 1);
}

void Gateway::emit(const std::string& line) {
  std::lock_guard lock(mutex_);
  log_(line);
}

void Gateway::session_thread(int fd) {
  SessionRecord record;
  try {
    record = serve_session(ctx_, fd, forward_, limits_, stop_pipe_[0]);
  } catch (const std::exception& e) {
    record.outcome = "closed";
    record.reason = e.what();
  }
  std::lock_guard lock(mutex_);
  log_(format_record(record));
  if (--active_ == 0) idle_.notify_all();
}

std::size_t Gateway::run(std::chrono::milliseconds drain) {
  for (;;) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_pipe_[0], POLLIN, 0}};
    const int n = ::poll(fds, 2, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      emit(std::string("m2mvault-gateway: poll failed: ") + std::strerror(errno));
      break;
    }
    if (fds[1].revents & POLLIN) break;
    if (!(fds[0].revents & POLLIN)) continue;
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;  // EAGAIN, a connection reset before accept, EMFILE
    {
      std::unique_lock lock(mutex_);
      if (active_ >= max_connections_) {
        lock.unlock();
        emit("refused peer=" + peer_address(fd) + " reason=\"too many connections (max " +
             std::to_string(max_connections_) + ")\"");
        ::close(fd);
        continue;
      }
      ++active_;
    }
    try {
      std::thread(&Gateway::session_thread, this, fd).detach();
    } catch (const std::system_error& e) {
      ::close(fd);
      std::lock_guard lock(mutex_);
      --active_;
      log_(std::string("refused reason=\"cannot start a thread: ") + e.what() + "\"");
    }
  }
  // Stopping: sessions see the pipe and end; give them `drain` to do so.
  std::unique_lock lock(mutex_);
  idle_.wait_for(lock, drain, [this] { return active_ == 0; });
  return active_;
}

}  // namespace m2mvault::gateway
