#include "api/server.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio.hpp>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "api/error.h"
#include "api/framing.h"

namespace m2mvault::api {
namespace {

namespace asio = boost::asio;
using local = asio::local::stream_protocol;
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
  // Declared before io: connections still queued in io decrement it while
  // io is destroyed.
  std::atomic<std::size_t> connections{0};
  // Open connections per uid, when a per-principal limit applies.
  std::mutex per_uid_mutex;
  std::unordered_map<uid_t, std::size_t> per_uid;
  asio::io_context io;
  local::acceptor acceptor{io};
  // The socket file this server bound, so it never unlinks a successor's.
  dev_t socket_dev = 0;
  ino_t socket_ino = 0;
  std::once_flag unlinked;

  Impl(ServerConfig c, RequestHandler& h)
      : config(std::move(c)),
        handler(h),
        io(static_cast<int>(std::max<std::size_t>(1, config.threads))) {}

  // Counts a new connection of `p`; false when it is over its limit.
  bool admit(const Principal& p) {
    const std::size_t limit =
        config.connections_per_principal ? config.connections_per_principal(p) : 0;
    std::lock_guard lock(per_uid_mutex);
    auto& count = per_uid[p.uid];
    if (limit && count >= limit) {
      if (count == 0) per_uid.erase(p.uid);
      return false;
    }
    ++count;
    return true;
  }
  void release(uid_t uid) {
    std::lock_guard lock(per_uid_mutex);
    if (auto it = per_uid.find(uid); it != per_uid.end() && --it->second == 0) per_uid.erase(it);
  }

  void bind();
  void accept();
  void unlink_socket();
  // Validates one request body, runs the handler, writes the response frame.
  void serve(const Principal& principal, std::string_view body, std::string& out);
};

namespace {

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(Server::Impl& server, local::socket socket)
      : server_(server), socket_(std::move(socket)), timer_(socket_.get_executor()) {}

  ~Connection() {
    if (admitted_) server_.release(principal_.uid);
    server_.connections.fetch_sub(1, std::memory_order_relaxed);
  }

  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Both entry points hop onto the connection's strand once; from then on
  // every handler of this connection runs there, one at a time.
  void start() {
    asio::dispatch(socket_.get_executor(), [self = shared_from_this()] {
      boost::system::error_code ec;
      // Responses are first written with a plain non-blocking send; only a
      // full socket buffer falls back to an asynchronous write.
      self->socket_.non_blocking(true, ec);
      if (ec) return self->close();
      self->principal_ = peer_of(self->socket_.native_handle());
      if (!self->server_.admit(self->principal_)) {
        return self->refuse_on_strand(
            ErrorCode::backend_unavailable,
            "too many connections from uid " + std::to_string(self->principal_.uid));
      }
      self->admitted_ = true;
      self->in_.resize(kInitialBufferBytes);
      self->serve();
    });
  }

  // Sends one error frame, then closes: for refusals at the connection level.
  void refuse(ErrorCode code, std::string_view message) {
    asio::dispatch(socket_.get_executor(),
                   [self = shared_from_this(), code, message = std::string(message)] {
                     self->refuse_on_strand(code, message);
                   });
  }

 private:
  std::size_t buffered() const { return end_ - start_; }

  // Serves every whole frame in the buffer, then reads more. Runs with
  // nothing in flight; returns when a read or an asynchronous write is
  // pending (whose completion calls it again) or the connection is closed.
  void serve() {
    while (!closed_) {
      if (buffered() < 4) return read_more();
      const std::uint32_t n =
          decode_frame_length(reinterpret_cast<const std::uint8_t*>(in_.data() + start_));
      if (n == 0) {
        consume(4);
        write_error_frame(out_, nullptr, ErrorCode::invalid_argument,
                          "empty frame (length 0); a frame holds one JSON object");
        if (!flush()) return;
        continue;
      }
      if (n > server_.config.max_frame_bytes) {
        // The rest of the stream cannot be framed: answer, then hang up.
        return refuse_on_strand(ErrorCode::invalid_argument,
                                fmt::format("frame of {} bytes exceeds the limit of {} bytes", n,
                                            server_.config.max_frame_bytes));
      }
      const std::size_t whole = 4 + std::size_t{n};
      if (buffered() < whole) {
        if (in_.size() - start_ < whole) make_room(whole);
        return read_more();
      }
      const std::string_view body(in_.data() + start_ + 4, n);
      busy_ = true;  // no timeout applies while the handler runs
      server_.serve(principal_, body, out_);
      consume(whole);
      if (!flush()) return;
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

  void read_more() {
    busy_ = false;
    if (buffered() == 0) {
      set_deadline(Clock::now() + server_.config.idle_timeout);
    } else if (!frame_deadline_set_) {
      // The frame's first bytes are here; the rest must follow in time.
      frame_deadline_set_ = true;
      set_deadline(Clock::now() + server_.config.frame_timeout);
    }
    if (end_ == in_.size()) make_room(in_.size() + kInitialBufferBytes);
    socket_.async_read_some(
        asio::buffer(in_.data() + end_, in_.size() - end_),
        [self = shared_from_this()](const boost::system::error_code& ec, std::size_t n) {
          if (ec) return self->close();
          self->end_ += n;
          self->serve();
        });
  }

  // Writes out_. Returns true when it went out at once; otherwise an
  // asynchronous write carries on (and calls serve()) or the connection is
  // closed, and the caller must return.
  bool flush() {
    boost::system::error_code ec;
    std::size_t sent = socket_.write_some(asio::buffer(out_), ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again) {
      sent = 0;
    } else if (ec) {
      close();
      return false;
    }
    if (sent == out_.size()) return true;
    asio::async_write(
        socket_, asio::buffer(out_.data() + sent, out_.size() - sent),
        [self = shared_from_this()](const boost::system::error_code& write_ec, std::size_t) {
          if (write_ec) return self->close();
          self->serve();
        });
    return false;
  }

  void refuse_on_strand(ErrorCode code, const std::string& message) {
    busy_ = true;
    write_error_frame(out_, nullptr, code, message);
    asio::async_write(socket_, asio::buffer(out_),
                      [self = shared_from_this()](const boost::system::error_code&, std::size_t) {
                        boost::system::error_code ignored;
                        self->socket_.shutdown(local::socket::shutdown_both, ignored);
                        self->close();
                      });
  }

  // Timeouts without a timer syscall per request: reads only move deadline_;
  // the one timer wakes at its old expiry and re-arms for the new deadline.
  // It is re-armed at once only when the deadline moves earlier.
  void set_deadline(Clock::time_point deadline) {
    deadline_ = deadline;
    if (timer_pending_ && timer_.expiry() <= deadline) return;
    timer_.expires_at(deadline);  // a pending wait completes as aborted
    wait_for_deadline();
  }

  void wait_for_deadline() {
    timer_pending_ = true;
    timer_.async_wait([weak = weak_from_this()](const boost::system::error_code& ec) {
      if (ec) return;  // re-armed or cancelled; a newer wait (if any) is pending
      auto self = weak.lock();
      if (!self) return;
      self->timer_pending_ = false;
      if (self->closed_ || self->busy_) return;  // read_more() sets a new deadline
      if (Clock::now() >= self->deadline_) return self->close();
      self->timer_.expires_at(self->deadline_);
      self->wait_for_deadline();
    });
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    boost::system::error_code ignored;
    timer_.cancel();
    socket_.close(ignored);
  }

  Server::Impl& server_;
  local::socket socket_;
  asio::steady_timer timer_;
  Principal principal_;
  bool admitted_ = false;  // counted in the server's per-uid connections
  std::vector<char> in_;   // received bytes: [start_, end_) not yet served
  std::size_t start_ = 0;
  std::size_t end_ = 0;
  std::string out_;  // the response frame being written, reused
  Clock::time_point deadline_{};
  bool frame_deadline_set_ = false;
  bool timer_pending_ = false;
  bool busy_ = false;
  bool closed_ = false;
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

void Server::Impl::accept() {
  acceptor.async_accept(
      asio::make_strand(io), [this](const boost::system::error_code& ec, local::socket socket) {
        if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
        if (ec) {
          // EMFILE and friends: wait a little rather than spin on accept.
          spdlog::warn("accept failed: {}", ec.message());
          auto timer = std::make_shared<asio::steady_timer>(io, std::chrono::milliseconds(100));
          timer->async_wait([this, timer](const boost::system::error_code&) { accept(); });
          return;
        }
        const std::size_t now = connections.fetch_add(1, std::memory_order_relaxed) + 1;
        auto connection = std::make_shared<Connection>(*this, std::move(socket));
        if (now > config.max_connections) {
          connection->refuse(ErrorCode::backend_unavailable, "too many connections");
        } else {
          connection->start();
        }
        accept();
      });
}

void Server::Impl::bind() {
  const auto& path = config.socket_path;
  if (path.empty() || path.native().size() >= sizeof(sockaddr_un::sun_path)) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("socket path '{}' is empty or longer than {} bytes", path.string(),
                            sizeof(sockaddr_un::sun_path) - 1));
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
  boost::system::error_code ec;
  acceptor.open(local(), ec);
  if (!ec) acceptor.bind(local::endpoint(path.string()), ec);
  if (ec == asio::error::address_in_use) {
    throw Error(ErrorCode::conflict,
                fmt::format("another daemon is listening on {}", path.string()));
  }
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    throw Error(ErrorCode::internal,
                fmt::format("cannot listen on {}: {}", path.string(), ec.message()));
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
  boost::system::error_code ignored;
  impl_->acceptor.close(ignored);
  impl_->unlink_socket();
}

void Server::run() {
  auto run_io = [this] {
    // A handler that throws past its own catch (a bug) is logged; serving
    // goes on.
    while (true) {
      try {
        impl_->io.run();
        return;
      } catch (...) {
        spdlog::error("unexpected exception in the socket server");
      }
    }
  };
  impl_->accept();
  std::vector<std::thread> threads;
  for (std::size_t i = 1; i < std::max<std::size_t>(1, impl_->config.threads); ++i) {
    threads.emplace_back(run_io);
  }
  run_io();
  for (auto& t : threads) t.join();
}

void Server::stop() {
  impl_->unlink_socket();
  asio::post(impl_->io, [this] {
    boost::system::error_code ignored;
    impl_->acceptor.close(ignored);
    impl_->io.stop();
  });
}

std::size_t Server::connection_count() const {
  return impl_->connections.load(std::memory_order_relaxed);
}

}  // namespace m2mvault::api
