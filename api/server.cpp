#include "api/server.h"

#include <fmt/format.h>
#include <poll.h>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <limits>
#include <mutex>
#include <semaphore>
#include <string>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <vector>

#include "api/error.h"
#include "api/framing.h"

namespace m2mvault::api {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

// Read buffers start here and shrink back here after a large frame, so idle
// connections stay small however big their last request was.
constexpr std::size_t kInitialBufferBytes = 16 * 1024;
constexpr std::size_t kKeepBufferBytes = 64 * 1024;

std::string errno_text(int err) {
  return std::strerror(err);
}

// Appends the JSON text of `value` to `out`. Invalid UTF-8 (which parsed
// input never holds) is replaced, never thrown. (Public API only: one short
// copy per response.)
void append_json(std::string& out, const json& value) {
  out += value.dump(-1, ' ', false, json::error_handler_t::replace);
}

// Frames are built in place: 4 placeholder bytes, the body, then the header.
void begin_frame(std::string& out) {
  if (out.capacity() > kKeepBufferBytes) std::string().swap(out);
  out.assign(4, '\0');
}

void end_frame(std::string& out) {
  const auto n = static_cast<std::uint32_t>(out.size() - 4);
  out[0] = static_cast<char>(n >> 24);
  out[1] = static_cast<char>(n >> 16);
  out[2] = static_cast<char>(n >> 8);
  out[3] = static_cast<char>(n);
}

void write_error_frame(std::string& out, const json& id, ErrorCode code, std::string_view message) {
  begin_frame(out);
  out += R"({"v":1,"id":)";
  append_json(out, id);
  out += R"(,"error":{"code":")";
  out += to_string(code);
  out += R"(","message":)";
  append_json(out, json(message));
  out += "}}";
  end_frame(out);
}

// Returns false (and leaves `out` unspecified) when the result does not fit
// in a frame the client accepts.
bool write_result_frame(std::string& out, const json& id, const json& result) {
  begin_frame(out);
  out += R"({"v":1,"id":)";
  append_json(out, id);
  out += R"(,"result":)";
  append_json(out, result);
  out += '}';
  if (out.size() - 4 > kMaxFrameBytes) return false;
  end_frame(out);
  return true;
}

// The peer's credentials as the kernel recorded them at connect(). A field
// that cannot be read stays at its "nobody" default, which grants nothing.
Principal peer_of(int fd) {
  Principal p;
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
    p.uid = cred.uid;
    p.gid = cred.gid;
    p.pid = cred.pid;
    // Read once per connection, for the audit log (the pid is the connector's).
    char exe[4096];
    const std::string link = "/proc/" + std::to_string(cred.pid) + "/exe";
    const ssize_t n = ::readlink(link.c_str(), exe, sizeof exe - 1);
    if (n > 0) p.exe.assign(exe, static_cast<std::size_t>(n));
  } else {
    spdlog::warn("SO_PEERCRED failed: {}", errno_text(errno));
  }
  std::vector<gid_t> groups(64);
  for (int attempt = 0; attempt < 8; ++attempt) {
    auto glen = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen) == 0) {
      groups.resize(glen / sizeof(gid_t));
      p.groups = std::move(groups);
      return p;
    }
    if (errno != ERANGE) break;
    // On ERANGE the kernel reports the size it needs in glen.
    groups.resize(std::max<std::size_t>(glen / sizeof(gid_t), groups.size() * 2));
  }
  spdlog::warn("SO_PEERGROUPS failed: {}", errno_text(errno));
  return p;
}

// Closes a file descriptor when it goes out of scope.
struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

// Whether a daemon accepts connections on the socket at `path`: true if one
// does (or is too busy to accept), false if the socket is stale.
bool socket_is_live(const std::filesystem::path& path) {
  FdCloser probe{::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)};
  if (probe.fd < 0) {
    throw Error(ErrorCode::internal, "cannot create a socket: " + errno_text(errno));
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.native().size() + 1);
  int rc;
  do {
    rc = ::connect(probe.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  } while (rc != 0 && errno == EINTR);
  if (rc == 0 || errno == EAGAIN) return true;  // EAGAIN: alive, backlog full
  if (errno == ECONNREFUSED) return false;
  throw Error(ErrorCode::conflict, fmt::format("cannot tell whether another daemon is listening on "
                                               "{}: {}",
                                               path.string(), errno_text(errno)));
}

}  // namespace

struct Server::Impl {
  ServerConfig config;
  RequestHandler& handler;
  int listen_fd = -1;
  // An eventfd that becomes readable, and stays so, when stop() is called:
  // every poll() of the server includes it.
  int stop_fd = -1;
  std::atomic<bool> stopping{false};
  std::atomic<std::size_t> connections{0};
  // Handlers running at once (config.threads); a request beyond waits here.
  std::counting_semaphore<> handler_slots;
  std::mutex mutex;  // guards per_uid and live_threads
  std::condition_variable threads_gone;
  std::unordered_map<uid_t, std::size_t> per_uid;  // open connections per uid
  std::size_t live_threads = 0;
  // The socket file this server bound, so it never unlinks a successor's.
  dev_t socket_dev = 0;
  ino_t socket_ino = 0;
  std::once_flag unlinked;

  Impl(ServerConfig c, RequestHandler& h)
      : config(std::move(c)),
        handler(h),
        handler_slots(static_cast<std::ptrdiff_t>(std::max<std::size_t>(1, config.threads))) {}

  ~Impl() {
    if (listen_fd >= 0) ::close(listen_fd);
    if (stop_fd >= 0) ::close(stop_fd);
  }

  // Counts a new connection of `p`; false when it is over its limit.
  bool admit(const Principal& p) {
    const std::size_t limit =
        config.connections_per_principal ? config.connections_per_principal(p) : 0;
    std::lock_guard lock(mutex);
    auto& count = per_uid[p.uid];
    if (limit && count >= limit) {
      if (count == 0) per_uid.erase(p.uid);
      return false;
    }
    ++count;
    return true;
  }
  void release(uid_t uid) {
    std::lock_guard lock(mutex);
    if (auto it = per_uid.find(uid); it != per_uid.end() && --it->second == 0) per_uid.erase(it);
  }

  void bind();
  void accept_loop();
  void start_connection(int fd);
  void connection_done() {
    connections.fetch_sub(1, std::memory_order_relaxed);
    std::lock_guard lock(mutex);
    if (--live_threads == 0) threads_gone.notify_all();
  }
  // Waits up to `timeout` (negative: for ever) for `events` on `fd`. Returns
  // the events seen, 0 on timeout, or -1 when the server is stopping.
  int wait(int fd, short events, int timeout_ms) const;
  // Writes all of `data`; false when the peer is gone or the server stops.
  bool send_all(int fd, std::string_view data) const;
  // Sends one error frame and hangs up: for refusals at the connection level.
  void refuse(int fd, ErrorCode code, std::string_view message) const;
  void unlink_socket();
  // Validates one request body, runs the handler, writes the response frame.
  void serve(const Principal& principal, std::string_view body, std::string& out);
};

namespace {

int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<long long>(left, 0, std::numeric_limits<int>::max()));
}

// One of the `threads` handlers that may run at once, held for a scope.
class HandlerSlot {
 public:
  explicit HandlerSlot(std::counting_semaphore<>& slots) : slots_(slots) { slots_.acquire(); }
  ~HandlerSlot() { slots_.release(); }
  HandlerSlot(const HandlerSlot&) = delete;
  HandlerSlot& operator=(const HandlerSlot&) = delete;

 private:
  std::counting_semaphore<>& slots_;
};

// One connection, served start to end by its own thread with blocking
// waits: a request wakes exactly the thread that answers it, and a handler
// that blocks (an HSM, an fsync) holds up no other connection.
class Connection {
 public:
  Connection(Server::Impl& server, int fd) : server_(server), fd_(fd) {}

  void run() {
    principal_ = peer_of(fd_);
    if (!server_.admit(principal_)) {
      return server_.refuse(fd_, ErrorCode::backend_unavailable,
                            "too many connections from uid " + std::to_string(principal_.uid));
    }
    serve();
    server_.release(principal_.uid);
  }

 private:
  std::size_t buffered() const { return end_ - start_; }

  // Serves whole frames as they arrive until the peer hangs up, a timeout
  // or a framing error closes the connection, or the server stops.
  void serve() {
    in_.resize(kInitialBufferBytes);
    while (!server_.stopping.load(std::memory_order_relaxed)) {
      if (buffered() >= 4) {
        const std::uint32_t n =
            decode_frame_length(reinterpret_cast<const std::uint8_t*>(in_.data() + start_));
        if (n == 0) {
          consume(4);
          write_error_frame(out_, nullptr, ErrorCode::invalid_argument,
                            "empty frame (length 0); a frame holds one JSON object");
          if (!server_.send_all(fd_, out_)) return;
          continue;
        }
        if (n > server_.config.max_frame_bytes) {
          // The rest of the stream cannot be framed: answer, then hang up.
          return server_.refuse(fd_, ErrorCode::invalid_argument,
                                fmt::format("frame of {} bytes exceeds the limit of {} bytes", n,
                                            server_.config.max_frame_bytes));
        }
        const std::size_t whole = 4 + std::size_t{n};
        if (buffered() >= whole) {
          {
            const HandlerSlot slot(server_.handler_slots);
            server_.serve(principal_, std::string_view(in_.data() + start_ + 4, n), out_);
          }
          consume(whole);
          if (!server_.send_all(fd_, out_)) return;
          // Nobody waits on this connection now (unless its next request
          // is already here); when a handler slot is free, the handler
          // may ready itself for what comes next.
          if (buffered() == 0 && server_.handler_slots.try_acquire()) {
            server_.handler.after_reply();
            server_.handler_slots.release();
          }
          continue;
        }
        if (in_.size() - start_ < whole) make_room(whole);
      }
      if (!read_more()) return;
    }
  }

  // Waits for bytes within the idle or frame timeout and appends them;
  // false when the connection is to be closed.
  bool read_more() {
    if (buffered() == 0) {
      frame_deadline_set_ = false;
      deadline_ = Clock::now() + server_.config.idle_timeout;
    } else if (!frame_deadline_set_) {
      // The frame's first bytes are here; the rest must follow in time.
      frame_deadline_set_ = true;
      deadline_ = Clock::now() + server_.config.frame_timeout;
    }
    if (end_ == in_.size()) make_room(in_.size() + kInitialBufferBytes);
    while (true) {
      const int ready = server_.wait(fd_, POLLIN, remaining_ms(deadline_));
      if (ready <= 0) return false;  // stopping, or timed out
      const ssize_t n = ::recv(fd_, in_.data() + end_, in_.size() - end_, 0);
      if (n > 0) {
        end_ += static_cast<std::size_t>(n);
        return true;
      }
      if (n == 0) return false;
      if (errno != EAGAIN && errno != EINTR) return false;
    }
  }

  void consume(std::size_t n) {
    start_ += n;
    frame_deadline_set_ = false;
    if (start_ == end_) {
      start_ = end_ = 0;
      if (in_.size() > kKeepBufferBytes) {
        in_.resize(kInitialBufferBytes);
        in_.shrink_to_fit();
      }
    }
  }

  // Moves a partial frame to the front and grows the buffer to hold it whole.
  void make_room(std::size_t whole) {
    if (start_ > 0) {
      std::memmove(in_.data(), in_.data() + start_, buffered());
      end_ -= start_;
      start_ = 0;
    }
    if (in_.size() < whole) in_.resize(whole);
  }

  Server::Impl& server_;
  int fd_;
  Principal principal_;
  std::vector<char> in_;  // received bytes: [start_, end_) not yet served
  std::size_t start_ = 0;
  std::size_t end_ = 0;
  std::string out_;  // the response frame being written, reused
  Clock::time_point deadline_{};
  bool frame_deadline_set_ = false;
};

// The op for a log line: quoted, escaped and short, since the client chose it.
std::string loggable(const std::string& op) {
  std::string shown = json(op.substr(0, 64)).dump(-1, ' ', true, json::error_handler_t::replace);
  if (op.size() > 64) shown += "...";
  return shown;
}

}  // namespace

void Server::Impl::serve(const Principal& principal, std::string_view body, std::string& out) {
  json message = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (message.is_discarded()) {
    return write_error_frame(out, nullptr, ErrorCode::invalid_argument, "frame is not valid JSON");
  }
  if (!message.is_object()) {
    return write_error_frame(out, nullptr, ErrorCode::invalid_argument,
                             "frame is not a JSON object");
  }
  auto id = message.find("id");
  if (id == message.end() || !(id->is_number() || id->is_string())) {
    return write_error_frame(out, nullptr, ErrorCode::invalid_argument,
                             "request has no 'id' (a number or a string)");
  }
  Request request;
  request.id = std::move(*id);
  auto v = message.find("v");
  if (v == message.end() || !v->is_number_integer() || *v != kProtocolVersion) {
    return write_error_frame(
        out, request.id, ErrorCode::unsupported,
        fmt::format(
            "protocol version {} not supported (this daemon speaks {})",
            v == message.end() ? "(none)" : v->dump(-1, ' ', false, json::error_handler_t::replace),
            kProtocolVersion));
  }
  auto op = message.find("op");
  if (op == message.end() || !op->is_string()) {
    return write_error_frame(out, request.id, ErrorCode::invalid_argument,
                             "request has no 'op' string");
  }
  request.op = std::move(op->get_ref<std::string&>());
  auto params = message.find("params");
  if (params == message.end()) {
    request.params = json::object();
  } else if (!params->is_object()) {
    return write_error_frame(out, request.id, ErrorCode::invalid_argument,
                             "'params' must be an object");
  } else {
    request.params = std::move(*params);
  }
  try {
    const json result = handler.handle(principal, request);
    if (!write_result_frame(out, request.id, result)) {
      spdlog::error("op={}: the response exceeds the frame limit of {} bytes", loggable(request.op),
                    kMaxFrameBytes);
      write_error_frame(
          out, request.id, ErrorCode::internal,
          fmt::format("the response exceeds the frame limit of {} bytes", kMaxFrameBytes));
    }
  } catch (const Error& e) {
    write_error_frame(out, request.id, e.code(), e.what());
  } catch (...) {
    // What an unexpected exception says might be anything (a key byte in a
    // library's message): the log gets the op, the client a fixed text.
    spdlog::error("op={} failed with an unexpected exception", loggable(request.op));
    write_error_frame(out, request.id, ErrorCode::internal, "internal error");
  }
}

int Server::Impl::wait(int fd, short events, int timeout_ms) const {
  pollfd fds[2] = {{fd, events, 0}, {stop_fd, POLLIN, 0}};
  while (true) {
    const int rc = ::poll(fds, 2, timeout_ms);
    if (rc < 0 && errno == EINTR) continue;
    if (rc < 0 || fds[1].revents != 0) return -1;
    // POLLHUP and POLLERR count as ready: the read or write then says what.
    return rc == 0 ? 0 : fds[0].revents;
  }
}

bool Server::Impl::send_all(int fd, std::string_view data) const {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n > 0) {
      data.remove_prefix(static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN) return false;
    // A full socket buffer: a peer that does not read. No timeout applies
    // (as while its handler runs); stop() ends the wait.
    if (wait(fd, POLLOUT, -1) <= 0) return false;
  }
  return true;
}

void Server::Impl::refuse(int fd, ErrorCode code, std::string_view message) const {
  std::string out;
  write_error_frame(out, nullptr, code, message);
  // The socket buffer of a new connection holds a short frame at once; a
  // peer that does not read it loses nothing it was promised.
  (void)!::send(fd, out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  ::shutdown(fd, SHUT_RDWR);
}

void Server::Impl::start_connection(int fd) {
  {
    std::lock_guard lock(mutex);
    ++live_threads;
  }
  try {
    std::thread([this, fd] {
      ::pthread_setname_np(::pthread_self(), "m2mvaultd-conn");
      try {
        Connection(*this, fd).run();
      } catch (...) {
        // A bug or an allocation failure: this connection ends, serving
        // goes on.
        spdlog::error("unexpected exception while serving a connection");
      }
      ::close(fd);
      connection_done();
    }).detach();
  } catch (const std::system_error& e) {
    spdlog::warn("cannot start a thread for a connection: {}", e.what());
    refuse(fd, ErrorCode::backend_unavailable, "the daemon cannot take another connection now");
    ::close(fd);
    connection_done();
  }
}

void Server::Impl::accept_loop() {
  while (true) {
    const int ready = wait(listen_fd, POLLIN, -1);
    if (ready < 0) return;  // stopping
    const int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED) continue;
      // EMFILE and friends: wait a little rather than spin on accept.
      spdlog::warn("accept failed: {}", errno_text(errno));
      if (wait(-1, 0, 100) < 0) return;
      continue;
    }
    const std::size_t now = connections.fetch_add(1, std::memory_order_relaxed) + 1;
    if (now > config.max_connections) {
      refuse(fd, ErrorCode::backend_unavailable, "too many connections");
      ::close(fd);
      connections.fetch_sub(1, std::memory_order_relaxed);
      continue;
    }
    start_connection(fd);
  }
}

void Server::Impl::bind() {
  const auto& path = config.socket_path;
  if (path.empty() || path.native().size() >= sizeof(sockaddr_un::sun_path)) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("socket path '{}' is empty or longer than {} bytes", path.string(),
                            sizeof(sockaddr_un::sun_path) - 1));
  }
  stop_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop_fd < 0) {
    throw Error(ErrorCode::internal, "cannot create an eventfd: " + errno_text(errno));
  }
  if (const auto dir = path.parent_path(); !dir.empty()) {
    std::error_code ec;
    if (!std::filesystem::exists(dir, ec)) {
      std::filesystem::create_directories(dir, ec);
      // chmod, not the mode of mkdir: the umask must not narrow it.
      if (ec || ::chmod(dir.c_str(), 0755) != 0) {
        throw Error(ErrorCode::internal,
                    fmt::format("cannot create the socket directory {}: {}", dir.string(),
                                ec ? ec.message() : errno_text(errno)));
      }
    }
  }
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      throw Error(ErrorCode::conflict,
                  fmt::format("{} exists and is not a socket; not replacing it", path.string()));
    }
    if (socket_is_live(path)) {
      throw Error(ErrorCode::conflict,
                  fmt::format("another daemon is listening on {}", path.string()));
    }
    // Stale: left by a daemon that died without cleaning up.
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      throw Error(ErrorCode::internal, fmt::format("cannot remove the stale socket {}: {}",
                                                   path.string(), errno_text(errno)));
    }
    spdlog::info("replaced the stale socket {}", path.string());
  }
  listen_fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (listen_fd < 0) {
    throw Error(ErrorCode::internal, "cannot create a socket: " + errno_text(errno));
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.native().size() + 1);
  if (::bind(listen_fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    if (errno == EADDRINUSE) {
      throw Error(ErrorCode::conflict,
                  fmt::format("another daemon is listening on {}", path.string()));
    }
    throw Error(ErrorCode::internal,
                fmt::format("cannot listen on {}: {}", path.string(), errno_text(errno)));
  }
  if (::listen(listen_fd, SOMAXCONN) != 0) {
    const int err = errno;
    ::unlink(path.c_str());
    throw Error(ErrorCode::internal,
                fmt::format("cannot listen on {}: {}", path.string(), errno_text(err)));
  }
  // Anyone may connect; the policy decides from the peer's credentials.
  if (::chmod(path.c_str(), 0666) != 0 || ::lstat(path.c_str(), &st) != 0) {
    const int err = errno;
    ::unlink(path.c_str());
    throw Error(ErrorCode::internal,
                fmt::format("cannot set the mode of {}: {}", path.string(), errno_text(err)));
  }
  socket_dev = st.st_dev;
  socket_ino = st.st_ino;
}

void Server::Impl::unlink_socket() {
  std::call_once(unlinked, [this] {
    struct stat st {};
    const auto& path = config.socket_path;
    if (::lstat(path.c_str(), &st) == 0 && st.st_dev == socket_dev && st.st_ino == socket_ino) {
      ::unlink(path.c_str());
    }
  });
}

Server::Server(ServerConfig config, RequestHandler& handler)
    : impl_(std::make_unique<Impl>(std::move(config), handler)) {
  impl_->bind();
}

Server::~Server() {
  impl_->unlink_socket();
}

void Server::run() {
  impl_->accept_loop();
  // Stopping: no new connections; each connection's thread finishes the
  // request it is serving (its handler is not interrupted) and ends.
  std::unique_lock lock(impl_->mutex);
  impl_->threads_gone.wait(lock, [this] { return impl_->live_threads == 0; });
}

void Server::stop() {
  impl_->unlink_socket();
  impl_->stopping.store(true, std::memory_order_relaxed);
  const std::uint64_t one = 1;
  (void)!::write(impl_->stop_fd, &one, sizeof one);
}

std::size_t Server::connection_count() const {
  return impl_->connections.load(std::memory_order_relaxed);
}

}  // namespace m2mvault::api
