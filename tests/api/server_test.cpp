// The socket server with a test handler: framing, limits, peer credentials.
#include "api/server.h"

#include <grp.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <fstream>
#include <future>
#include <sstream>
#include <thread>

#include "api/client.h"
#include "api/error.h"
#include "api/framing.h"

namespace m2mvault::api {
namespace {

using nlohmann::json;

class TestHandler : public RequestHandler {
 public:
  json handle(const Principal& principal, const Request& request) override {
    if (request.op == "echo") return request.params;
    if (request.op == "whoami") {
      return {{"uid", principal.uid},
              {"gid", principal.gid},
              {"pid", principal.pid},
              {"groups", principal.groups}};
    }
    if (request.op == "fail") throw Error(ErrorCode::not_found, "no key named 'x'");
    if (request.op == "boom") throw std::runtime_error("secret-ish 1a2b3c4d5e6f7a8b");
    if (request.op == "sleep") {
      std::this_thread::sleep_for(std::chrono::milliseconds(request.params.value("ms", 10)));
      return json::object();
    }
    if (request.op == "block") {  // waits until the test releases it
      blocked.set_value();
      release.get_future().wait();
      return json::object();
    }
    if (request.op == "huge") return {{"data", std::string(kMaxFrameBytes + 1, 'x')}};
    if (request.op == "gated") {  // its after_reply() waits until the test opens the gate
      gate_next = true;
      return json::object();
    }
    throw Error(ErrorCode::unsupported, "unknown operation '" + request.op + "'");
  }
  void after_reply() noexcept override {
    if (gate_next.exchange(false)) gate.get_future().wait();
    ++after_replies;
  }
  std::promise<void> blocked;
  std::promise<void> release;
  std::atomic<bool> gate_next{false};
  std::promise<void> gate;
  std::atomic<int> after_replies{0};
};

// Opens the handler's gate when the test ends if the test did not, so a
// failing test fails instead of hanging in the server's stop().
class GateOpener {
 public:
  explicit GateOpener(TestHandler& handler) : handler_(handler) {}
  ~GateOpener() { open(); }
  GateOpener(const GateOpener&) = delete;
  GateOpener& operator=(const GateOpener&) = delete;
  void open() {
    if (!opened_) handler_.gate.set_value();
    opened_ = true;
  }

 private:
  TestHandler& handler_;
  bool opened_ = false;
};

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/m2mvault-api-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    config_.socket_path = dir_ / "run" / "test.sock";
    config_.threads = 4;
  }
  void start() {
    server_ = std::make_unique<Server>(config_, handler_);
    thread_ = std::thread([this] { server_->run(); });
  }
  void TearDown() override {
    if (server_) {
      server_->stop();
      thread_.join();
      server_.reset();
    }
    std::filesystem::remove_all(dir_);
  }
  Client client() { return Client(config_.socket_path, std::chrono::seconds(5)); }

  // A "block" request on a connection of its own, returned once its handler
  // runs; it is answered when the test sets handler_.release.
  std::future<json> call_that_blocks() {
    auto blocked = handler_.blocked.get_future();
    auto call = std::async(std::launch::async, [this] { return client().call("block"); });
    blocked.wait();
    return call;
  }

  // Sends raw bytes and returns the next response on the same connection.
  json raw(Client& c, const std::string& bytes) {
    c.send_raw(bytes);
    return c.receive();
  }

  static std::string frame_of(const std::string& body) {
    const auto n = static_cast<std::uint32_t>(body.size());
    std::string f{static_cast<char>(n >> 24), static_cast<char>(n >> 16), static_cast<char>(n >> 8),
                  static_cast<char>(n)};
    return f + body;
  }

  std::filesystem::path dir_;
  ServerConfig config_;
  TestHandler handler_;
  std::unique_ptr<Server> server_;
  std::thread thread_;
};

TEST_F(ServerTest, RoundTripAndErrorCodes) {
  start();
  auto c = client();
  EXPECT_EQ(c.call("echo", {{"a", 1}}), (json{{"a", 1}}));
  try {
    c.call("fail");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::not_found);
    EXPECT_STREQ(e.what(), "no key named 'x'");
  }
}

// after_reply() runs once per reply, after the reply has reached the
// client: a "gated" request is answered while its after_reply() still waits.
TEST_F(ServerTest, AfterReplyRunsOncePerReplyAfterItWasSent) {
  start();
  GateOpener opener(handler_);
  auto c = client();
  EXPECT_EQ(c.call("gated"), json::object());  // would time out if after_reply() came first
  EXPECT_EQ(handler_.after_replies.load(), 0);
  opener.open();
  EXPECT_EQ(c.call("echo", {{"n", 1}}), (json{{"n", 1}}));
  EXPECT_THROW(c.call("fail"), Error);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (handler_.after_replies.load() < 3 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(handler_.after_replies.load(), 3);  // errors are replies too
}

// A request already waiting comes before after_reply(): the "gated"
// request's after_reply() would hold up the "echo" sent with it.
TEST_F(ServerTest, AfterReplyWaitsWhileTheNextRequestIsAlreadyHere) {
  start();
  GateOpener opener(handler_);
  auto c = client();
  c.send_raw(frame_of(R"({"v":1,"id":1,"op":"gated"})") +
             frame_of(R"({"v":1,"id":2,"op":"echo"})"));
  EXPECT_EQ(c.receive().value("id", 0), 1);
  EXPECT_EQ(c.receive().value("id", 0), 2);  // would time out if after_reply() ran between
  opener.open();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (handler_.after_replies.load() < 1 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(handler_.after_replies.load(), 1);  // after the echo only
}

TEST_F(ServerTest, UnexpectedExceptionsRevealNothing) {
  std::ostringstream log;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(log);
  spdlog::default_logger()->sinks().push_back(sink);
  start();
  auto c = client();
  try {
    c.call("boom", {{"param", "p4r4m-value"}});
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::internal);
    EXPECT_STREQ(e.what(), "internal error");
    EXPECT_EQ(std::string(e.what()).find("secret-ish"), std::string::npos);
  }
  spdlog::default_logger()->flush();
  auto& sinks = spdlog::default_logger()->sinks();
  sinks.erase(std::find(sinks.begin(), sinks.end(), sink));
  // Logged at error level with the op, without the exception text or params.
  EXPECT_NE(log.str().find("[error]"), std::string::npos) << log.str();
  EXPECT_NE(log.str().find("boom"), std::string::npos) << log.str();
  EXPECT_EQ(log.str().find("secret-ish"), std::string::npos) << log.str();
  EXPECT_EQ(log.str().find("p4r4m-value"), std::string::npos) << log.str();
  EXPECT_EQ(c.call("echo", {{"after", 1}}), (json{{"after", 1}}));
}

TEST_F(ServerTest, BadFramesGetErrorsAndTheConnectionGoesOn) {
  start();
  auto c = client();
  const std::pair<std::string, std::string> cases[] = {
      {frame_of("\xff\xfe garbage"), "invalid_argument"},
      {frame_of(R"({"v":1,"id":1,"op":"ec)"), "invalid_argument"},
      {frame_of("[1,2,3]"), "invalid_argument"},
      {std::string(4, '\0'), "invalid_argument"},
      {frame_of(R"({"v":1,"op":"echo"})"), "invalid_argument"},
      {frame_of(R"({"v":2,"id":1,"op":"echo"})"), "unsupported"},
      {frame_of(R"({"v":1,"id":1})"), "invalid_argument"},
      {frame_of(R"({"v":1,"id":1,"op":"echo","params":[1]})"), "invalid_argument"},
  };
  for (const auto& [bytes, code] : cases) {
    json r = raw(c, bytes);
    ASSERT_TRUE(r.contains("error")) << r;
    EXPECT_EQ(r["error"]["code"], code) << r;
    EXPECT_EQ(c.call("echo", {{"ok", true}}), (json{{"ok", true}}));
  }
}

TEST_F(ServerTest, OversizedFrameClosesOnlyThatConnection) {
  start();
  auto c = client();
  json r = raw(c, std::string("\x7f\xff\xff\xff", 4));
  EXPECT_EQ(r["error"]["code"], "invalid_argument");
  EXPECT_THROW(c.receive(), Error);
  EXPECT_EQ(client().call("echo", {{"x", 1}}), (json{{"x", 1}}));
}

TEST_F(ServerTest, PipelinedRequestsAnswerInOrder) {
  start();
  auto c = client();
  std::vector<std::uint64_t> ids;
  for (int i = 0; i < 200; ++i) ids.push_back(c.send("echo", {{"i", i}}));
  for (int i = 0; i < 200; ++i) {
    json r = c.receive();
    EXPECT_EQ(r["id"], ids[i]);
    EXPECT_EQ(r["result"]["i"], i);
  }
}

TEST_F(ServerTest, ConcurrentClients) {
  start();
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int t = 0; t < 16; ++t) {
    threads.emplace_back([&, t] {
      auto c = client();
      for (int i = 0; i < 200; ++i) {
        if (c.call("echo", {{"t", t}, {"i", i}}) != json{{"t", t}, {"i", i}}) ++bad;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
}

TEST_F(ServerTest, PeerCredentialsComeFromTheKernel) {
  start();
  auto c = client();
  json me = c.call("whoami");
  EXPECT_EQ(me["uid"], ::getuid());
  EXPECT_EQ(me["gid"], ::getgid());
  EXPECT_EQ(me["pid"], ::getpid());
  EXPECT_TRUE(me["groups"].is_array());
}

TEST_F(ServerTest, StalledFrameIsCutOffAfterTheFrameTimeout) {
  config_.frame_timeout = std::chrono::milliseconds(200);
  start();
  auto c = client();
  c.send_raw(std::string("\x00\x00", 2));
  EXPECT_THROW(c.receive(), Error);  // closed, not answered
  EXPECT_EQ(client().call("echo", {{"x", 1}}), (json{{"x", 1}}));
}

TEST_F(ServerTest, ConnectionCap) {
  config_.max_connections = 4;
  start();
  std::vector<Client> held;
  for (int i = 0; i < 4; ++i) {
    held.push_back(client());
    held.back().call("echo");
  }
  auto fifth = client();
  json r = fifth.receive();
  EXPECT_EQ(r["error"]["code"], "backend_unavailable");
  held.pop_back();
  for (int i = 0; i < 50; ++i) {  // the freed slot is reusable
    try {
      EXPECT_EQ(client().call("echo", {{"x", 1}}), (json{{"x", 1}}));
      return;
    } catch (const Error&) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  FAIL() << "a freed connection slot was never reused";
}

TEST_F(ServerTest, SocketModesAndStaleOrLiveSockets) {
  // A stale socket file (nobody listening) is replaced.
  std::filesystem::create_directories(config_.socket_path.parent_path());
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strcpy(addr.sun_path, config_.socket_path.c_str());
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ::close(fd);
  start();
  struct stat st {};
  ASSERT_EQ(::stat(config_.socket_path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0666u);
  ASSERT_EQ(::stat(config_.socket_path.parent_path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0755u);
  // A live daemon on the same path is a conflict.
  try {
    Server second(config_, handler_);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::conflict);
  }
}

TEST(Client, NoDaemonIsBackendUnavailableNamingThePath) {
  try {
    Client c("/tmp/m2mvault-no-such-dir/none.sock");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::backend_unavailable);
    EXPECT_NE(std::string(e.what()).find("/tmp/m2mvault-no-such-dir/none.sock"), std::string::npos);
  }
}

TEST_F(ServerTest, IdsAreEchoedAsSent) {
  start();
  auto c = client();
  json r = raw(c, frame_of(R"({"v":1,"id":"req-7","op":"echo","params":{"a":1}})"));
  EXPECT_EQ(r, (json{{"v", 1}, {"id", "req-7"}, {"result", {{"a", 1}}}}));
  r = raw(c, frame_of(R"({"v":1,"id":2.5,"op":"echo"})"));
  EXPECT_EQ(r, (json{{"v", 1}, {"id", 2.5}, {"result", json::object()}}));
  r = raw(c, frame_of(R"({"v":1,"id":true,"op":"echo"})"));
  EXPECT_TRUE(r["id"].is_null()) << r;
  EXPECT_EQ(r["error"]["code"], "invalid_argument") << r;
  r = raw(c, frame_of(R"({"v":3,"id":"x","op":"echo"})"));
  EXPECT_EQ(r["id"], "x") << r;
  EXPECT_NE(r["error"]["message"].get<std::string>().find("protocol version 3 not supported"),
            std::string::npos)
      << r;
}

TEST_F(ServerTest, FrameJustOverTheLimitClosesTheConnection) {
  config_.max_frame_bytes = 1000;
  start();
  auto c = client();
  // A frame at the limit is read and answered.
  std::string body = R"({"v":1,"id":1,"op":"echo","params":{"s":")";
  body += std::string(1000 - body.size() - 3, 'a') + R"("}})";
  ASSERT_EQ(body.size(), 1000u);
  EXPECT_EQ(raw(c, frame_of(body))["result"]["s"].get<std::string>().size(), 1000u - 44);
  json r = raw(c, std::string("\x00\x00\x03\xe9", 4));  // 1001
  EXPECT_EQ(r["error"]["code"], "invalid_argument");
  EXPECT_NE(r["error"]["message"].get<std::string>().find("exceeds the limit of 1000 bytes"),
            std::string::npos)
      << r;
  EXPECT_THROW(c.receive(), Error);
  EXPECT_EQ(client().call("echo", {{"x", 1}}), (json{{"x", 1}}));
}

TEST_F(ServerTest, DefaultLimitIsNamedInTheOversizeError) {
  start();
  auto c = client();
  json r = raw(c, std::string("\x7f\xff\xff\xff", 4));
  EXPECT_NE(r["error"]["message"].get<std::string>().find("exceeds the limit of 1048576 bytes"),
            std::string::npos)
      << r;
}

TEST_F(ServerTest, LargeFrameArrivingInPiecesIsServed) {
  start();
  auto c = client();
  const std::string big(kMaxFrameBytes - 100, 'z');
  const std::string frame =
      frame_of(json{{"v", 1}, {"id", 9}, {"op", "echo"}, {"params", {{"big", big}}}}.dump());
  for (std::size_t at = 0; at < frame.size(); at += 100'000) {
    c.send_raw(std::string_view(frame).substr(at, 100'000));
  }
  json r = c.receive();
  EXPECT_EQ(r["id"], 9);
  EXPECT_EQ(r["result"]["big"], big);
  EXPECT_EQ(c.call("echo", {{"x", 1}}), (json{{"x", 1}}));
}

TEST_F(ServerTest, ResponseTooLargeForAFrameIsAnError) {
  start();
  auto c = client();
  try {
    c.call("huge");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::internal);
  }
  EXPECT_EQ(c.call("echo", {{"x", 1}}), (json{{"x", 1}}));
}

TEST_F(ServerTest, DeeplyNestedJsonIsHandled) {
  start();
  auto c = client();
  const std::size_t depth = 400'000;
  json r = raw(c, frame_of(std::string(depth, '[') + std::string(depth, ']')));
  EXPECT_EQ(r["error"]["code"], "invalid_argument");
  std::string params;
  for (std::size_t i = 0; i < depth / 8; ++i) params += R"({"a":)";
  params += "1" + std::string(depth / 8, '}');
  r = raw(c, frame_of(R"({"v":1,"id":1,"op":"fail","params":)" + params + "}"));
  EXPECT_EQ(r["error"]["code"], "not_found");
  EXPECT_EQ(c.call("echo", {{"x", 1}}), (json{{"x", 1}}));
}

TEST_F(ServerTest, ABlockedHandlerDoesNotHoldUpOtherConnections) {
  start();
  auto slow = call_that_blocks();
  // Served while the other connection's handler is still running.
  auto fast = client();
  EXPECT_EQ(fast.call("echo", {{"x", 1}}), (json{{"x", 1}}));
  handler_.release.set_value();
  EXPECT_EQ(slow.get(), json::object());
}

TEST_F(ServerTest, RequestsBeyondTheHandlerLimitWaitTheirTurn) {
  config_.threads = 1;
  start();
  auto slow = call_that_blocks();
  // The one handler slot is taken: another connection's request waits...
  auto waiting = std::async(std::launch::async, [&] {
    auto c = client();
    return c.call("echo", {{"x", 2}});
  });
  EXPECT_EQ(waiting.wait_for(std::chrono::milliseconds(300)), std::future_status::timeout);
  // ...and is served once the slot is free.
  handler_.release.set_value();
  EXPECT_EQ(slow.get(), json::object());
  EXPECT_EQ(waiting.get(), (json{{"x", 2}}));
}

TEST_F(ServerTest, StopEndsAConnectionWhosePeerDoesNotRead) {
  start();
  auto c = client();
  // Pipelined requests whose answers the client never reads fill the
  // socket buffers until the server's write waits (and then the client's).
  auto sender = std::async(std::launch::async, [&] {
    const std::string big(200'000, 'x');
    try {
      for (int i = 0; i < 40; ++i) c.send("echo", {{"pad", big}});
    } catch (const Error&) {
      // the server hung up, or the client's own timeout
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  server_->stop();
  thread_.join();  // returns: the waiting write was given up
  server_.reset();
  sender.get();
}

TEST_F(ServerTest, PeerCredentialsOfAnotherProcess) {
  start();
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  const pid_t child = ::fork();
  if (child == 0) {
    ::close(pipe_fds[0]);
    // Root may give itself supplementary groups; otherwise keep its own.
    const gid_t extra[] = {4242, 4343};
    (void)::setgroups(2, extra);
    std::string out;
    try {
      json me = Client(config_.socket_path, std::chrono::seconds(5)).call("whoami");
      std::vector<gid_t> mine(static_cast<std::size_t>(::getgroups(0, nullptr)));
      ::getgroups(static_cast<int>(mine.size()), mine.data());
      out = json{{"seen", me}, {"pid", ::getpid()}, {"uid", ::getuid()}, {"groups", mine}}.dump();
    } catch (const std::exception& e) {
      out = json{{"error", e.what()}}.dump();
    }
    (void)!::write(pipe_fds[1], out.data(), out.size());
    ::_exit(0);
  }
  ::close(pipe_fds[1]);
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::read(pipe_fds[0], buf, sizeof buf)) > 0;) out.append(buf, n);
  ::close(pipe_fds[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  json r = json::parse(out);
  ASSERT_FALSE(r.contains("error")) << r;
  EXPECT_EQ(r["seen"]["pid"], child);
  EXPECT_NE(r["seen"]["pid"], ::getpid());
  EXPECT_EQ(r["seen"]["uid"], r["uid"]);
  auto seen = r["seen"]["groups"].get<std::vector<gid_t>>();
  auto expected = r["groups"].get<std::vector<gid_t>>();
  std::sort(seen.begin(), seen.end());
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(seen, expected);
  if (::getuid() == 0) {
    EXPECT_EQ(seen, (std::vector<gid_t>{4242, 4343}));  // populated
  }
}

TEST_F(ServerTest, IdleConnectionIsClosed) {
  config_.idle_timeout = std::chrono::milliseconds(200);
  start();
  auto c = client();
  EXPECT_EQ(c.call("echo", {{"x", 1}}), (json{{"x", 1}}));
  try {
    c.receive();  // nothing more is sent: the daemon hangs up
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::backend_unavailable);
    EXPECT_NE(std::string(e.what()).find("closed the connection"), std::string::npos) << e.what();
  }
  EXPECT_EQ(client().call("echo", {{"x", 1}}), (json{{"x", 1}}));
}

TEST_F(ServerTest, BusyConnectionIsNotIdle) {
  config_.idle_timeout = std::chrono::milliseconds(150);
  config_.frame_timeout = std::chrono::milliseconds(150);
  start();
  auto c = client();
  // A request in flight longer than both timeouts is still answered.
  EXPECT_EQ(c.call("sleep", {{"ms", 400}}), json::object());
  EXPECT_EQ(c.call("echo", {{"x", 1}}), (json{{"x", 1}}));
}

TEST_F(ServerTest, ConnectionCapCountsOnlyOpenConnections) {
  config_.max_connections = 2;
  start();
  // Closed connections free their slots once the daemon has seen them close.
  auto wait_until_no_connections = [&] {
    for (int i = 0; i < 500 && server_->connection_count() > 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    ASSERT_EQ(server_->connection_count(), 0u);
  };
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(client().call("echo", {{"i", i}}), (json{{"i", i}}));
    wait_until_no_connections();
  }
  auto a = client();
  auto b = client();
  a.call("echo");
  b.call("echo");
  try {
    client().call("echo");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::backend_unavailable);
    EXPECT_STREQ(e.what(), "too many connections");
  }
}

TEST_F(ServerTest, DirectoryModeIgnoresTheUmask) {
  const mode_t old = ::umask(077);
  config_.socket_path = dir_ / "a" / "b" / "test.sock";
  start();
  ::umask(old);
  struct stat st {};
  ASSERT_EQ(::stat(config_.socket_path.parent_path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0755u);
  ASSERT_EQ(::stat(config_.socket_path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0666u);
}

TEST_F(ServerTest, NonSocketFileOnThePathIsAConflict) {
  std::filesystem::create_directories(config_.socket_path.parent_path());
  std::ofstream(config_.socket_path) << "not a socket";
  try {
    Server s(config_, handler_);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::conflict);
  }
  EXPECT_TRUE(std::filesystem::is_regular_file(config_.socket_path));  // left alone
}

TEST_F(ServerTest, LiveDaemonKeepsItsSocket) {
  start();
  try {
    Server second(config_, handler_);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::conflict);
    EXPECT_NE(std::string(e.what()).find("another daemon is listening on " +
                                         config_.socket_path.string()),
              std::string::npos)
        << e.what();
  }
  // The failed second server removed nothing.
  EXPECT_EQ(client().call("echo", {{"x", 1}}), (json{{"x", 1}}));
}

TEST_F(ServerTest, StopUnlinksTheSocketAndRunReturns) {
  start();
  auto c = client();
  EXPECT_EQ(c.call("echo", {{"x", 1}}), (json{{"x", 1}}));
  server_->stop();
  thread_.join();
  EXPECT_FALSE(std::filesystem::exists(config_.socket_path));
  server_.reset();
  EXPECT_THROW(client(), Error);
}

TEST(Client, NullParamsAreSentAsAnEmptyObject) {
  // {} at a call site converts to a null json, not an object.
  char tmpl[] = "/tmp/m2mvault-api-XXXXXX";
  const std::filesystem::path dir = ::mkdtemp(tmpl);
  TestHandler handler;
  ServerConfig config;
  config.socket_path = dir / "s.sock";
  config.threads = 1;
  Server server(config, handler);
  std::thread t([&] { server.run(); });
  Client c(config.socket_path);
  EXPECT_EQ(c.call("echo", {}), json::object());
  EXPECT_EQ(c.call("echo", json()), json::object());
  try {
    c.call(std::string("bad\xff utf8"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::invalid_argument);
  }
  EXPECT_EQ(c.call("echo", {{"still", "usable"}}), (json{{"still", "usable"}}));
  server.stop();
  t.join();
  std::filesystem::remove_all(dir);
}

TEST(Client, UnknownErrorCodeBecomesInternal) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  char tmpl[] = "/tmp/m2mvault-api-XXXXXX";
  const std::filesystem::path dir = ::mkdtemp(tmpl);
  const auto path = dir / "fake.sock";
  // A fake daemon that answers every request with a code from the future.
  int listener = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strcpy(addr.sun_path, path.c_str());
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(listener, 1), 0);
  std::thread fake([&] {
    int fd = ::accept(listener, nullptr, nullptr);
    char header[4];
    (void)!::read(fd, header, 4);
    std::string body(decode_frame_length(reinterpret_cast<std::uint8_t*>(header)), '\0');
    (void)!::read(fd, body.data(), body.size());
    const std::string reply = encode_frame(
        {{"v", 1}, {"id", 1}, {"error", {{"code", "quantum_flux"}, {"message", "odd"}}}});
    (void)!::write(fd, reply.data(), reply.size());
    ::close(fd);  // then EOF
  });
  Client c(path);
  try {
    c.call("x");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::internal);
    EXPECT_STREQ(e.what(), "odd");
  }
  try {
    c.call("x");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::backend_unavailable);
    EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
  }
  fake.join();
  ::close(listener);
  ::close(sv[0]);
  ::close(sv[1]);
  std::filesystem::remove_all(dir);
}

TEST(Client, DefaultSocketPathHonoursTheEnvironment) {
  ::setenv("M2MVAULT_SOCKET", "/tmp/elsewhere.sock", 1);
  EXPECT_EQ(default_socket_path(), "/tmp/elsewhere.sock");
  ::unsetenv("M2MVAULT_SOCKET");
  EXPECT_EQ(default_socket_path(), kDefaultSocketPath);
}

}  // namespace
}  // namespace m2mvault::api
