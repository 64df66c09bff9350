// The socket server with a test handler: framing, limits, peer credentials.
#include "api/server.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

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
    throw Error(ErrorCode::unsupported, "unknown operation '" + request.op + "'");
  }
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

TEST_F(ServerTest, UnexpectedExceptionsRevealNothing) {
  start();
  auto c = client();
  try {
    c.call("boom");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::internal);
    EXPECT_STREQ(e.what(), "internal error");
  }
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

}  // namespace
}  // namespace m2mvault::api
