#include "api/server.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio.hpp>
#include <cerrno>
#include <cstring>
#include <thread>
#include <vector>

#include "api/error.h"
#include "api/framing.h"

namespace m2mvault::api {
namespace {

namespace asio = boost::asio;
using local = asio::local::stream_protocol;
using nlohmann::json;

// A response frame: header + body, sent with one gather write.
struct Frame {
  std::array<std::uint8_t, 4> header;
  std::string body;

  explicit Frame(const json& message) : body(message.dump()) {
    const auto n = static_cast<std::uint32_t>(body.size());
    header = {static_cast<std::uint8_t>(n >> 24), static_cast<std::uint8_t>(n >> 16),
              static_cast<std::uint8_t>(n >> 8), static_cast<std::uint8_t>(n)};
  }
  std::array<asio::const_buffer, 2> buffers() const {
    return {asio::buffer(header), asio::buffer(body)};
  }
};

json error_response(const json& id, ErrorCode code, std::string_view message) {
  return {{"v", kProtocolVersion},
          {"id", id},
          {"error", {{"code", to_string(code)}, {"message", message}}}};
}

Principal peer_of(int fd) {
  Principal p;
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
    p.uid = cred.uid;
    p.gid = cred.gid;
    p.pid = cred.pid;
  }
  std::vector<gid_t> groups(32);
  for (int attempt = 0; attempt < 4; ++attempt) {
    socklen_t glen = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen) == 0) {
      groups.resize(glen / sizeof(gid_t));
      p.groups = std::move(groups);
      break;
    }
    if (errno != ERANGE) break;
    groups.resize(std::max<std::size_t>(glen / sizeof(gid_t), groups.size() * 2));
  }
  return p;
}

}  // namespace

struct Server::Impl {
  ServerConfig config;
  RequestHandler& handler;
  asio::io_context io;
  local::acceptor acceptor{io};
  std::atomic<std::size_t> connections{0};

  Impl(ServerConfig c, RequestHandler& h) : config(std::move(c)), handler(h) {}

  void accept();
  json process(const Principal& principal, std::string_view body);
};

namespace {

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(Server::Impl& server, local::socket socket)
      : server_(server), socket_(std::move(socket)), timer_(socket_.get_executor()) {}

  ~Connection() { server_.connections.fetch_sub(1); }

  void start() {
    principal_ = peer_of(socket_.native_handle());
    buffer_.resize(64 * 1024);
    next();
  }

  // Sends one error frame, then closes (used for connection-level refusals).
  void refuse(ErrorCode code, std::string_view message) {
    auto frame = std::make_shared<Frame>(error_response(nullptr, code, message));
    asio::async_write(socket_, frame->buffers(), [self = shared_from_this(), frame](auto, auto) {
      boost::system::error_code ignored;
      self->socket_.shutdown(local::socket::shutdown_both, ignored);
      self->socket_.close(ignored);
    });
  }

 private:
  std::size_t buffered() const { return end_ - start_; }

  // Serves the next whole frame in the buffer, or reads more.
  void next() {
    if (buffered() >= 4) {
      const std::uint32_t n =
          decode_frame_length(reinterpret_cast<const std::uint8_t*>(&buffer_[start_]));
      if (n == 0) {
        start_ += 4;
        return respond(error_response(nullptr, ErrorCode::invalid_argument, "empty frame"));
      }
      if (n > server_.config.max_frame_bytes) {
        timer_.cancel();
        return refuse(ErrorCode::invalid_argument,
                      fmt::format("frame of {} bytes exceeds the limit of {} bytes", n,
                                  server_.config.max_frame_bytes));
      }
      if (buffered() >= 4 + std::size_t{n}) {
        timer_.cancel();
        std::string_view body(&buffer_[start_ + 4], n);
        start_ += 4 + n;
        return respond(server_.process(principal_, body));
      }
      // Make room for the whole frame.
      if (start_ > 0) {
        std::memmove(buffer_.data(), buffer_.data() + start_, buffered());
        end_ -= start_;
        start_ = 0;
      }
      if (buffer_.size() < 4 + std::size_t{n}) buffer_.resize(4 + std::size_t{n});
    } else if (start_ == end_) {
      start_ = end_ = 0;
    }
    read_more();
  }

  void read_more() {
    // Idle between frames; a started frame must finish within frame_timeout.
    arm_timer(buffered() == 0 ? server_.config.idle_timeout : server_.config.frame_timeout,
              buffered() == 0 || !frame_timer_armed_);
    if (end_ == buffer_.size()) {
      if (start_ > 0) {
        std::memmove(buffer_.data(), buffer_.data() + start_, buffered());
        end_ -= start_;
        start_ = 0;
      } else {
        buffer_.resize(buffer_.size() * 2);
      }
    }
    socket_.async_read_some(
        asio::buffer(buffer_.data() + end_, buffer_.size() - end_),
        [self = shared_from_this()](const boost::system::error_code& ec, std::size_t n) {
          if (ec) return self->close();
          self->end_ += n;
          self->next();
        });
  }

  void arm_timer(std::chrono::milliseconds after, bool rearm) {
    if (!rearm) return;
    frame_timer_armed_ = buffered() > 0;
    timer_.expires_after(after);
    timer_.async_wait([weak = weak_from_this()](const boost::system::error_code& ec) {
      if (ec) return;  // cancelled
      if (auto self = weak.lock()) self->close();
    });
  }

  void respond(json response) {
    frame_timer_armed_ = false;
    out_ = std::make_unique<Frame>(response);
    asio::async_write(
        socket_, out_->buffers(),
        [self = shared_from_this()](const boost::system::error_code& ec, std::size_t) {
          if (ec) return self->close();
          self->next();
        });
  }

  void close() {
    boost::system::error_code ignored;
    timer_.cancel();
    socket_.close(ignored);
  }

  Server::Impl& server_;
  local::socket socket_;
  asio::steady_timer timer_;
  Principal principal_;
  std::vector<char> buffer_;
  std::size_t start_ = 0;
  std::size_t end_ = 0;
  bool frame_timer_armed_ = false;
  std::unique_ptr<Frame> out_;
};

}  // namespace

json Server::Impl::process(const Principal& principal, std::string_view body) {
  json message = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (message.is_discarded()) {
    return error_response(nullptr, ErrorCode::invalid_argument, "frame is not valid JSON");
  }
  if (!message.is_object()) {
    return error_response(nullptr, ErrorCode::invalid_argument, "frame is not a JSON object");
  }
  auto id_it = message.find("id");
  if (id_it == message.end() || !(id_it->is_number_integer() || id_it->is_string())) {
    return error_response(nullptr, ErrorCode::invalid_argument,
                          "request has no 'id' (number or string)");
  }
  Request request;
  request.id = *id_it;
  auto v = message.find("v");
  if (v == message.end() || !v->is_number_unsigned() ||
      v->get<std::uint64_t>() != kProtocolVersion) {
    return error_response(request.id, ErrorCode::unsupported,
                          fmt::format("protocol version {} not supported (this daemon speaks 1)",
                                      v == message.end() ? "(none)" : v->dump()));
  }
  auto op = message.find("op");
  if (op == message.end() || !op->is_string()) {
    return error_response(request.id, ErrorCode::invalid_argument, "request has no 'op' string");
  }
  request.op = op->get<std::string>();
  auto params = message.find("params");
  if (params == message.end() || params->is_null()) {
    request.params = json::object();
  } else if (!params->is_object()) {
    return error_response(request.id, ErrorCode::invalid_argument, "'params' must be an object");
  } else {
    request.params = std::move(*params);
  }
  try {
    json result = handler.handle(principal, request);
    return {{"v", kProtocolVersion}, {"id", request.id}, {"result", std::move(result)}};
  } catch (const Error& e) {
    return error_response(request.id, e.code(), e.what());
  } catch (const std::exception& e) {
    // The text of an unexpected exception might carry anything: log the
    // type of failure, answer with a fixed message.
    spdlog::error("op={} failed with an unexpected exception", request.op);
    return error_response(request.id, ErrorCode::internal, "internal error");
  }
}

void Server::Impl::accept() {
  acceptor.async_accept(
      asio::make_strand(io), [this](const boost::system::error_code& ec, local::socket socket) {
        if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
        if (!ec) {
          const std::size_t now = connections.fetch_add(1) + 1;
          auto connection = std::make_shared<Connection>(*this, std::move(socket));
          if (now > config.max_connections) {
            connection->refuse(ErrorCode::backend_unavailable, "too many connections");
          } else {
            connection->start();
          }
        } else {
          spdlog::warn("accept failed: {}", ec.message());
        }
        accept();
      });
}

Server::Server(ServerConfig config, RequestHandler& handler)
    : impl_(std::make_unique<Impl>(std::move(config), handler)) {
  const auto& path = impl_->config.socket_path;
  const auto dir = path.parent_path();
  if (!dir.empty() && !std::filesystem::exists(dir)) {
    std::filesystem::create_directories(dir);
    ::chmod(dir.c_str(), 0755);
  }
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      throw Error(ErrorCode::conflict, fmt::format("{} exists and is not a socket", path.string()));
    }
    local::socket probe(impl_->io);
    boost::system::error_code ec;
    probe.connect(local::endpoint(path.string()), ec);
    if (!ec) {
      throw Error(ErrorCode::conflict,
                  fmt::format("another daemon is listening on {}", path.string()));
    }
    std::filesystem::remove(path);  // stale: left by a daemon that died
  }
  boost::system::error_code ec;
  impl_->acceptor.open(local(), ec);
  if (!ec) impl_->acceptor.bind(local::endpoint(path.string()), ec);
  if (!ec) impl_->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    throw Error(ErrorCode::internal,
                fmt::format("cannot listen on {}: {}", path.string(), ec.message()));
  }
  ::chmod(path.c_str(), 0666);
}

Server::~Server() {
  boost::system::error_code ignored;
  impl_->acceptor.close(ignored);
  std::error_code rm;
  std::filesystem::remove(impl_->config.socket_path, rm);
}

void Server::run() {
  impl_->accept();
  std::vector<std::thread> threads;
  for (std::size_t i = 1; i < std::max<std::size_t>(1, impl_->config.threads); ++i) {
    threads.emplace_back([this] { impl_->io.run(); });
  }
  impl_->io.run();
  for (auto& t : threads) t.join();
}

void Server::stop() {
  asio::post(impl_->io, [this] {
    boost::system::error_code ignored;
    impl_->acceptor.close(ignored);
    impl_->io.stop();
  });
}

std::size_t Server::connection_count() const {
  return impl_->connections.load();
}

}  // namespace m2mvault::api
