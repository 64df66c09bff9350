// libm2mvault-tls against the real vault: each test starts its own
// m2mvaultd (with its own SoftHSM2 token) in a temporary directory and puts
// the keys of TR-0038 table 7.1.2-2 in with key.import. Each TLS session
// runs over a socketpair, the server in a thread, the client in the test's
// thread. The peers that are not the library are plain OpenSSL with the key
// in hand, as the AE of the seeds. What the daemon saw is read back from its
// audit log (audit.show).
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "api/client.h"
#include "api/encoding.h"
#include "api/error.h"
#include "engine/tls/m2mvault_tls.h"

namespace m2mvault {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

constexpr const char* kPskCipher = "PSK-AES128-CBC-SHA256";

// TR-0038 table 7.1.2-2.
struct TableRow {
  const char* entity;
  const char* kpsa_id;
  const char* kpsa_hex;
};
constexpr TableRow kClockAE1{"Clock-AE1", "AE123456789012-Lock@in.provider.com",
                             "1a2b3c4d5e6f7a8b"};
constexpr TableRow kClockAE2{"Clock-AE2", "AE123456789015-Lock@in.provider.com",
                             "12345678abcdefab"};

// The unprivileged gateway of the denial test ("nobody").
constexpr uid_t kGatewayUid = 65534;
constexpr gid_t kGatewayGid = 65534;

std::vector<std::uint8_t> unhex(const char* hex) {
  return *encoding::hex_decode(hex);
}

std::string rfc3339(std::chrono::system_clock::time_point t) {
  const std::time_t seconds = std::chrono::system_clock::to_time_t(t);
  std::tm utc{};
  ::gmtime_r(&seconds, &utc);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

// ---------------------------------------------------------------------------
// The vault: m2mvaultd as a user runs it

// One m2mvaultd with its state directory, socket and log under `root`, as
// tests/integration/vaultlib.py's Daemon. It dies with the test process
// (PR_SET_PDEATHSIG), so a crashed test leaves no daemon behind.
class Daemon {
 public:
  explicit Daemon(const std::filesystem::path& root)
      : state_((root / "state").string()),
        socket_((root / "run" / "m2mvault.sock").string()),
        log_((root / "m2mvaultd.log").string()) {}
  ~Daemon() { stop(); }
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Starts m2mvaultd and waits until its socket answers ping; throws with
  // the end of its log when it exits or does not answer in time.
  void start(const std::vector<std::string>& extra_args) {
    std::vector<std::string> args{M2MVAULTD_PATH, "--state-dir", state_, "--socket", socket_};
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);

    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork: " + std::string(std::strerror(errno)));
    if (pid_ == 0) {
      // Only async-signal-safe calls until exec.
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != parent) ::_exit(127);
      const int log = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      const int null = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (log < 0 || null < 0 || ::dup2(null, 0) < 0 || ::dup2(log, 1) < 0 || ::dup2(log, 2) < 0)
        ::_exit(127);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    wait_ready();
  }

  // SIGTERM, as systemd stops it; SIGKILL if it has not exited in 30 s.
  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    int status = 0;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        break;
      }
      std::this_thread::sleep_for(10ms);
    }
    pid_ = -1;
  }

  // One request as an administrator (the test's uid is root or the daemon's).
  json call(std::string_view op, const json& params = json::object()) const {
    return api::Client(socket_, 10s).call(op, params);
  }

  const std::string& socket() const { return socket_; }

 private:
  void wait_ready() {
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error("m2mvaultd exited (status " + std::to_string(status) +
                                 "): " + log_tail());
      }
      try {
        call("ping");
        return;
      } catch (const Error&) {
        std::this_thread::sleep_for(20ms);
      }
    }
    stop();
    throw std::runtime_error("m2mvaultd did not answer ping in 30 s: " + log_tail());
  }

  std::string log_tail() const {
    std::ifstream in(log_);
    std::stringstream text;
    text << in.rdbuf();
    const std::string all = text.str();
    return all.size() > 2000 ? all.substr(all.size() - 2000) : all;
  }

  std::string state_, socket_, log_;
  pid_t pid_ = -1;
};

// ---------------------------------------------------------------------------
// TLS sessions over a socketpair

using SslCtxPtr = std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)>;
using SslPtr = std::unique_ptr<SSL, decltype(&SSL_free)>;

SslCtxPtr make_ctx(const SSL_METHOD* method, int version) {
  SslCtxPtr ctx(SSL_CTX_new(method), &SSL_CTX_free);
  EXPECT_TRUE(ctx);
  SSL_CTX_set_min_proto_version(ctx.get(), version);
  SSL_CTX_set_max_proto_version(ctx.get(), version);
  if (version == TLS1_2_VERSION) SSL_CTX_set_cipher_list(ctx.get(), kPskCipher);
  return ctx;
}

std::string drain_errors() {
  std::string out;
  char line[256];
  while (unsigned long e = ERR_get_error()) {
    ERR_error_string_n(e, line, sizeof line);
    out += std::string(out.empty() ? "" : "; ") + line;
  }
  return out;
}

// A peer that holds the key itself, as the AE of the seeds does.
struct HeldPsk {
  std::string identity;
  std::vector<std::uint8_t> key;
};

unsigned int held_psk_client(SSL* ssl, const char*, char* identity, unsigned int max_identity_len,
                             unsigned char* psk, unsigned int max_psk_len) {
  const auto* held = static_cast<const HeldPsk*>(SSL_get_app_data(ssl));
  if (held->identity.size() >= max_identity_len || held->key.size() > max_psk_len) return 0;
  std::memcpy(identity, held->identity.c_str(), held->identity.size() + 1);
  std::memcpy(psk, held->key.data(), held->key.size());
  return static_cast<unsigned int>(held->key.size());
}

int held_psk_use_session(SSL* ssl, const EVP_MD*, const unsigned char** id, size_t* idlen,
                         SSL_SESSION** sess) {
  const auto* held = static_cast<const HeldPsk*>(SSL_get_app_data(ssl));
  static const unsigned char kAes128GcmSha256[] = {0x13, 0x01};
  SSL_SESSION* s = SSL_SESSION_new();
  SSL_SESSION_set1_master_key(s, held->key.data(), held->key.size());
  SSL_SESSION_set_cipher(s, SSL_CIPHER_find(ssl, kAes128GcmSha256));
  SSL_SESSION_set_protocol_version(s, TLS1_3_VERSION);
  *id = reinterpret_cast<const unsigned char*>(held->identity.data());
  *idlen = held->identity.size();
  *sess = s;
  return 1;
}

struct Side {
  bool ok = false;
  std::string error;        // OpenSSL's queue
  std::string vault_error;  // m2mvault_tls_last_error_message()
  m2mvault_tls_error vault_code = M2MVAULT_TLS_OK;
  std::string cipher, version;
  std::optional<std::string> entity, psk_id, key_name, kind;
  std::string received;
};

struct Session {
  Side server, client;
};

std::optional<std::string> opt(const char* s) {
  return s ? std::optional<std::string>(s) : std::nullopt;
}

// Runs one handshake and one request/response; `configure_client` sets the
// client SSL up (library or held key).
template <typename Configure>
Session run_session(SSL_CTX* server_ctx, SSL_CTX* client_ctx, Configure configure_client) {
  int fds[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  timeval tv{10, 0};
  for (int fd : fds) {
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  }
  auto fill = [](Side& side, SSL* ssl) {
    side.cipher = SSL_get_cipher_name(ssl);
    side.version = SSL_get_version(ssl);
    side.entity = opt(m2mvault_tls_peer_entity(ssl));
    side.psk_id = opt(m2mvault_tls_peer_psk_id(ssl));
    side.key_name = opt(m2mvault_tls_peer_key_name(ssl));
    side.kind = opt(m2mvault_tls_peer_key_kind(ssl));
  };
  Session session;
  std::thread server_thread([&] {
    SslPtr ssl(SSL_new(server_ctx), &SSL_free);
    SSL_set_fd(ssl.get(), fds[0]);
    m2mvault_tls_clear_error();
    if (SSL_accept(ssl.get()) == 1) {
      session.server.ok = true;
      fill(session.server, ssl.get());
      char buf[256];
      const int n = SSL_read(ssl.get(), buf, sizeof buf);
      if (n > 0) {
        session.server.received.assign(buf, static_cast<std::size_t>(n));
        const std::string reply = "pong: " + session.server.received;
        SSL_write(ssl.get(), reply.data(), static_cast<int>(reply.size()));
      }
      SSL_shutdown(ssl.get());
    } else {
      session.server.error = drain_errors();
      session.server.vault_code = m2mvault_tls_last_error();
      session.server.vault_error = m2mvault_tls_last_error_message();
      ::shutdown(fds[0], SHUT_RDWR);
    }
  });
  {
    SslPtr ssl(SSL_new(client_ctx), &SSL_free);
    SSL_set_fd(ssl.get(), fds[1]);
    configure_client(ssl.get());
    EXPECT_EQ(m2mvault_tls_peer_entity(ssl.get()), nullptr);  // nothing before the handshake
    m2mvault_tls_clear_error();
    if (SSL_connect(ssl.get()) == 1) {
      session.client.ok = true;
      fill(session.client, ssl.get());
      SSL_write(ssl.get(), "ping", 4);
      char buf[256];
      const int n = SSL_read(ssl.get(), buf, sizeof buf);
      if (n > 0) session.client.received.assign(buf, static_cast<std::size_t>(n));
      SSL_shutdown(ssl.get());
    } else {
      session.client.error = drain_errors();
      session.client.vault_code = m2mvault_tls_last_error();
      session.client.vault_error = m2mvault_tls_last_error_message();
      ::shutdown(fds[1], SHUT_RDWR);
    }
  }
  server_thread.join();
  ::close(fds[0]);
  ::close(fds[1]);
  return session;
}

// ---------------------------------------------------------------------------

class PskLookupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/m2mvault-tls-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr) << std::strerror(errno);
    dir_ = tmpl;
    // Traversable by the unprivileged gateway of the denial test: the
    // daemon makes run/ 0755 and the socket 0666.
    std::filesystem::permissions(dir_, std::filesystem::perms(0755));
    // The gateway's policy: nobody may release Clock-AE2's Kpsa, and nothing
    // else. Every other test calls as root, an administrator.
    policy_ = dir_ / "policy.toml";
    {
      std::ofstream policy(policy_);
      policy << "[[rule]]\nname = \"gateway\"\nuids = [" << kGatewayUid
             << "]\ngrants = [\"psk.release\"]\nkeys = [\"" << kClockAE2.kpsa_id << "\"]\n";
    }
    std::filesystem::permissions(policy_, std::filesystem::perms(0644));
    daemon_ = std::make_unique<Daemon>(dir_);
    socket_ = daemon_->socket();
    start_vault();
    import_row(kClockAE1);
    import_row(kClockAE2);
  }
  void TearDown() override {
    daemon_.reset();  // stops it
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  // (Re)starts m2mvaultd on the same state directory and socket.
  void start_vault() { daemon_->start({"--policy", policy_.string()}); }
  void stop_vault() { daemon_->stop(); }

  // key.import of one PSK; `params` adds to or overrides kind/id/entity/value.
  json import_key(const char* kind, const char* id, const char* hex, json params = json::object()) {
    params["kind"] = kind;
    params["id"] = id;
    params["value"] = encoding::base64_encode(unhex(hex));
    return daemon_->call("key.import", params);
  }
  void import_row(const TableRow& row) {
    import_key("kpsa", row.kpsa_id, row.kpsa_hex, {{"entity", row.entity}});
  }

  // The daemon's audit records of `filter` (audit.show params), oldest first.
  std::vector<json> audit(json filter) {
    std::vector<json> records;
    for (;;) {
      const json page = daemon_->call("audit.show", filter);
      for (const auto& r : page.at("records")) records.push_back(r);
      if (page.at("next").is_null()) return records;
      filter["after"] = page["next"];
    }
  }
  // psk.release requests the daemon has answered (every one is audited).
  std::size_t releases() { return audit({{"op", "psk.release"}}).size(); }

  SslCtxPtr vault_server(int version) {
    auto ctx = make_ctx(TLS_server_method(), version);
    EXPECT_EQ(m2mvault_tls_server_enable(ctx.get(), socket_.c_str()), 1);
    return ctx;
  }

  // The AE of TR-0038 A.2, holding (KpsaId, Kpsa) itself.
  Session held_key_session(SSL_CTX* server_ctx, int version, const HeldPsk& held) {
    auto client_ctx = make_ctx(TLS_client_method(), version);
    return run_session(server_ctx, client_ctx.get(), [&](SSL* ssl) {
      SSL_set_app_data(ssl, const_cast<HeldPsk*>(&held));
      SSL_set_psk_client_callback(ssl, &held_psk_client);
      SSL_set_psk_use_session_callback(ssl, &held_psk_use_session);
    });
  }
  Session held_key_session(int version, const TableRow& row) {
    auto server_ctx = vault_server(version);
    return held_key_session(server_ctx.get(), version, HeldPsk{row.kpsa_id, unhex(row.kpsa_hex)});
  }

  std::filesystem::path dir_, policy_;
  std::string socket_;
  std::unique_ptr<Daemon> daemon_;
};

// TR-0038 A.2 step 2: the MN-CSE selects TLS_PSK_WITH_AES_128_CBC_SHA256;
// step 4: it retrieves Kpsa by the psk_identity; 7.1.2: it associates the
// session with the AE-ID.
TEST_F(PskLookupTest, Tls12ServerLooksUpKpsaIdAndReportsClockAE1) {
  const Session s = held_key_session(TLS1_2_VERSION, kClockAE1);
  ASSERT_TRUE(s.server.ok) << s.server.error << s.server.vault_error;
  ASSERT_TRUE(s.client.ok) << s.client.error;
  EXPECT_EQ(s.server.cipher, kPskCipher);
  EXPECT_EQ(s.server.version, "TLSv1.2");
  EXPECT_EQ(s.server.entity, "Clock-AE1");
  EXPECT_EQ(s.server.psk_id, kClockAE1.kpsa_id);
  EXPECT_EQ(s.server.key_name, kClockAE1.kpsa_id);  // the name defaults to the identifier
  EXPECT_EQ(s.server.kind, "kpsa");
  EXPECT_EQ(s.server.received, "ping");
  EXPECT_EQ(s.client.received, "pong: ping");
  // One audited release, of that key, to this process.
  const auto records = audit({{"op", "psk.release"}});
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0]["key_id"], kClockAE1.kpsa_id);
  EXPECT_EQ(records[0]["result"], "ok");
  EXPECT_EQ(records[0]["pid"], ::getpid());
}

TEST_F(PskLookupTest, Tls12SecondAeMapsToClockAE2) {
  const Session s = held_key_session(TLS1_2_VERSION, kClockAE2);
  ASSERT_TRUE(s.server.ok) << s.server.error << s.server.vault_error;
  EXPECT_EQ(s.server.entity, "Clock-AE2");
  EXPECT_EQ(s.server.psk_id, kClockAE2.kpsa_id);
}

TEST_F(PskLookupTest, Tls12WrongPskFailsAndNamesNoPeer) {
  auto server_ctx = vault_server(TLS1_2_VERSION);
  const Session s = held_key_session(server_ctx.get(), TLS1_2_VERSION,
                                     HeldPsk{kClockAE1.kpsa_id, unhex(kClockAE2.kpsa_hex)});
  EXPECT_FALSE(s.server.ok);
  EXPECT_FALSE(s.client.ok);
  EXPECT_EQ(s.server.entity, std::nullopt);
}

TEST_F(PskLookupTest, Tls12UnknownIdentityFailsWithNotFound) {
  const Session s =
      held_key_session(TLS1_2_VERSION, TableRow{"x", "AE999@in.provider.com", "00112233"});
  EXPECT_FALSE(s.server.ok);
  EXPECT_FALSE(s.client.ok);
  EXPECT_EQ(s.server.vault_code, M2MVAULT_TLS_NOT_FOUND);
  EXPECT_EQ(s.server.vault_error, "not_found: no key named 'AE999@in.provider.com'");
  EXPECT_NE(s.server.error.find("m2mvault-tls"), std::string::npos) << s.server.error;
  EXPECT_EQ(releases(), 1u);  // asked (and so audited) once
}

// A psk_identity is looked up among identifiers only: a key's name is not a
// psk_identity (the library sends `id`, not `key`).
TEST_F(PskLookupTest, Tls12NameIsNotAPskIdentity) {
  import_key("kpsa", "AE5-Lock@in.provider.com", "0102030405060708",
             {{"name", "lock-by-name"}, {"entity", "Lock-AE5"}});
  const Session s =
      held_key_session(TLS1_2_VERSION, TableRow{"Lock-AE5", "lock-by-name", "0102030405060708"});
  EXPECT_FALSE(s.server.ok);
  EXPECT_EQ(s.server.vault_code, M2MVAULT_TLS_NOT_FOUND);
  EXPECT_EQ(s.server.vault_error, "not_found: no key with identifier 'lock-by-name'");
}

TEST_F(PskLookupTest, Tls13ExternalPskLooksUpClockAE1) {
  const Session s = held_key_session(TLS1_3_VERSION, kClockAE1);
  ASSERT_TRUE(s.server.ok) << s.server.error << s.server.vault_error;
  ASSERT_TRUE(s.client.ok) << s.client.error;
  EXPECT_EQ(s.server.version, "TLSv1.3");
  // An external PSK is bound to SHA-256: any TLS 1.3 suite with that hash.
  EXPECT_TRUE(s.server.cipher.ends_with("_SHA256")) << s.server.cipher;
  EXPECT_EQ(s.server.entity, "Clock-AE1");
  EXPECT_EQ(s.client.received, "pong: ping");
}

TEST_F(PskLookupTest, Tls13WrongPskFails) {
  auto server_ctx = vault_server(TLS1_3_VERSION);
  const Session s = held_key_session(server_ctx.get(), TLS1_3_VERSION,
                                     HeldPsk{kClockAE2.kpsa_id, unhex(kClockAE1.kpsa_hex)});
  EXPECT_FALSE(s.server.ok);
  EXPECT_FALSE(s.client.ok);
}

TEST_F(PskLookupTest, Tls13UnknownIdentityFailsWithoutCertificate) {
  const Session s =
      held_key_session(TLS1_3_VERSION, TableRow{"x", "AE999@in.provider.com", "00112233"});
  EXPECT_FALSE(s.server.ok);
  EXPECT_EQ(releases(), 1u);
}

// A gateway running as an unprivileged user whose policy grants psk.release
// on Clock-AE2's Kpsa only. Root is always an administrator, so the gateway
// is a forked child that drops to uid/gid 65534 before its handshakes.
TEST_F(PskLookupTest, DeniedLookupFailsWithClearError) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run the gateway as uid 65534";
  int report_pipe[2];
  ASSERT_EQ(::pipe(report_pipe), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(report_pipe[0]);
    json report;
    if (::setgroups(0, nullptr) != 0 || ::setresgid(kGatewayGid, kGatewayGid, kGatewayGid) != 0 ||
        ::setresuid(kGatewayUid, kGatewayUid, kGatewayUid) != 0) {
      report["setup"] = std::string("cannot drop to uid 65534: ") + std::strerror(errno);
    } else {
      const Session denied = held_key_session(TLS1_2_VERSION, kClockAE1);
      const Session granted = held_key_session(TLS1_3_VERSION, kClockAE2);
      report = {{"denied_ok", denied.server.ok},
                {"denied_code", static_cast<int>(denied.server.vault_code)},
                {"denied_error", denied.server.vault_error},
                {"granted_ok", granted.server.ok},
                {"granted_entity", granted.server.entity.value_or("")},
                {"granted_error", granted.server.vault_error}};
    }
    const std::string text = report.dump();
    const bool written =
        ::write(report_pipe[1], text.data(), text.size()) == static_cast<ssize_t>(text.size());
    ::_exit(written ? 0 : 1);
  }
  ::close(report_pipe[1]);
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = ::read(report_pipe[0], buf, sizeof buf)) > 0;) text.append(buf, n);
  ::close(report_pipe[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  const json report = json::parse(text);
  ASSERT_FALSE(report.contains("setup")) << report["setup"];

  EXPECT_FALSE(report["denied_ok"].get<bool>());
  EXPECT_EQ(report["denied_code"], static_cast<int>(M2MVAULT_TLS_DENIED));
  EXPECT_EQ(report["denied_error"],
            std::string("denied: operation 'psk.release' denied: no rule grants uid 65534 "
                        "'psk.release' on key '") +
                kClockAE1.kpsa_id + "' (" + kClockAE1.kpsa_id + ") of kind kpsa (default deny)");
  EXPECT_EQ(report["denied_error"].get<std::string>().find(kClockAE1.kpsa_hex), std::string::npos);
  EXPECT_TRUE(report["granted_ok"].get<bool>()) << report["granted_error"];
  EXPECT_EQ(report["granted_entity"], "Clock-AE2");
  // The daemon recorded the denial against the gateway's uid.
  bool denial_audited = false;
  for (const auto& r : audit({{"op", "psk.release"}, {"uid", std::to_string(kGatewayUid)}}))
    denial_audited |= r["key_id"] == kClockAE1.kpsa_id && r["result"] == "denied";
  EXPECT_TRUE(denial_audited);
}

TEST_F(PskLookupTest, ExpiredKeyFailsTheHandshake) {
  // A lifetime of 2 to 3 s: the daemon refuses an expiry in the past.
  const auto expires =
      std::chrono::ceil<std::chrono::seconds>(std::chrono::system_clock::now()) + 2s;
  import_key("kpsa", "AE1-Old@in.provider.com", "0011223344556677",
             {{"entity", "Old-AE"}, {"expires", rfc3339(expires)}});
  const TableRow old_ae{"Old-AE", "AE1-Old@in.provider.com", "0011223344556677"};
  const Session before = held_key_session(TLS1_2_VERSION, old_ae);
  EXPECT_TRUE(before.server.ok) << before.server.vault_error;
  std::this_thread::sleep_until(expires + 100ms);
  for (int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    const Session s = held_key_session(version, old_ae);
    EXPECT_FALSE(s.server.ok);
    EXPECT_EQ(s.server.vault_code, M2MVAULT_TLS_EXPIRED) << s.server.vault_error;
    EXPECT_EQ(s.server.vault_error, "expired: key 'AE1-Old@in.provider.com' has expired");
  }
}

TEST_F(PskLookupTest, KeyWithoutEntityAuthenticatesWithoutEntity) {
  import_key("kc", "AAECAwQFBgcICQoLDA0ODw==@maf.example.com",
             "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
             {{"name", "lonely"}});
  const Session s = held_key_session(
      TLS1_2_VERSION, TableRow{nullptr, "AAECAwQFBgcICQoLDA0ODw==@maf.example.com",
                               "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"});
  ASSERT_TRUE(s.server.ok) << s.server.error << s.server.vault_error;
  EXPECT_EQ(s.server.entity, std::nullopt);
  EXPECT_EQ(s.server.kind, "kc");
  EXPECT_EQ(s.server.key_name, "lonely");
}

TEST_F(PskLookupTest, DaemonDownFailsWithBackendUnavailable) {
  stop_vault();
  const Session s = held_key_session(TLS1_2_VERSION, kClockAE1);
  EXPECT_FALSE(s.server.ok);
  EXPECT_EQ(s.server.vault_code, M2MVAULT_TLS_BACKEND_UNAVAILABLE);
  EXPECT_NE(s.server.vault_error.find(socket_), std::string::npos) << s.server.vault_error;
}

TEST_F(PskLookupTest, LookupSurvivesDaemonRestart) {
  auto server_ctx = vault_server(TLS1_2_VERSION);
  const HeldPsk held{kClockAE1.kpsa_id, unhex(kClockAE1.kpsa_hex)};
  ASSERT_TRUE(held_key_session(server_ctx.get(), TLS1_2_VERSION, held).server.ok);
  stop_vault();  // the pooled connection is now dead
  start_vault();
  const Session s = held_key_session(server_ctx.get(), TLS1_2_VERSION, held);
  EXPECT_TRUE(s.server.ok) << s.server.vault_error;
  EXPECT_EQ(s.server.entity, "Clock-AE1");
}

// TR-0038 7.1.2 "Operation of ADN-AE1": the AE's TLS client uses (Kpsa,
// KpsaId) — here selected from the vault by KpsaId — and associates the
// session with what the key is bound to.
TEST_F(PskLookupTest, LibraryClientSelectsKpsaByKpsaIdTls12AndTls13) {
  for (int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    auto server_ctx = vault_server(version);
    auto client_ctx = make_ctx(TLS_client_method(), version);
    const Session s = run_session(server_ctx.get(), client_ctx.get(), [&](SSL* ssl) {
      ASSERT_EQ(m2mvault_tls_client_use_psk(ssl, kClockAE2.kpsa_id, socket_.c_str()), 1);
    });
    ASSERT_TRUE(s.client.ok) << s.client.error << s.client.vault_error;
    ASSERT_TRUE(s.server.ok) << s.server.error;
    EXPECT_EQ(s.client.version, version == TLS1_2_VERSION ? "TLSv1.2" : "TLSv1.3");
    EXPECT_EQ(s.client.psk_id, kClockAE2.kpsa_id);
    EXPECT_EQ(s.client.entity, "Clock-AE2");
    EXPECT_EQ(s.server.entity, "Clock-AE2");
    EXPECT_EQ(s.client.received, "pong: ping");
  }
}

TEST_F(PskLookupTest, LibraryClientOnContextSendsTheKeysIdentifierForAName) {
  import_key("kpsa", "AE7-Lock@in.provider.com", "a1a2a3a4a5a6a7a8",
             {{"name", "lock-kpsa"}, {"entity", "in-cse"}});
  auto server_ctx = vault_server(TLS1_2_VERSION);
  auto client_ctx = make_ctx(TLS_client_method(), TLS1_2_VERSION);
  ASSERT_EQ(m2mvault_tls_ctx_client_use_psk(client_ctx.get(), "lock-kpsa", socket_.c_str()), 1);
  const Session s = run_session(server_ctx.get(), client_ctx.get(), [](SSL*) {});
  ASSERT_TRUE(s.server.ok) << s.server.error << s.server.vault_error;
  EXPECT_EQ(s.server.psk_id, "AE7-Lock@in.provider.com");
  EXPECT_EQ(s.client.entity, "in-cse");
}

TEST_F(PskLookupTest, LibraryClientWithUnknownKeyFailsWithNotFound) {
  auto server_ctx = vault_server(TLS1_2_VERSION);
  auto client_ctx = make_ctx(TLS_client_method(), TLS1_2_VERSION);
  const Session s = run_session(server_ctx.get(), client_ctx.get(), [&](SSL* ssl) {
    ASSERT_EQ(m2mvault_tls_client_use_psk(ssl, "nobody@in.provider.com", socket_.c_str()), 1);
  });
  EXPECT_FALSE(s.client.ok);
  EXPECT_EQ(s.client.vault_code, M2MVAULT_TLS_NOT_FOUND);
}

TEST_F(PskLookupTest, BadArgumentsAreRefusedWithAMessage) {
  EXPECT_EQ(m2mvault_tls_server_enable(nullptr, nullptr), 0);
  EXPECT_EQ(m2mvault_tls_last_error(), M2MVAULT_TLS_INVALID_ARGUMENT);
  EXPECT_STREQ(m2mvault_tls_last_error_message(),
               "invalid_argument: m2mvault_tls_server_enable: ctx is NULL");
  ERR_clear_error();
  auto ctx = make_ctx(TLS_client_method(), TLS1_2_VERSION);
  EXPECT_EQ(m2mvault_tls_ctx_client_use_psk(ctx.get(), "", nullptr), 0);
  EXPECT_EQ(m2mvault_tls_last_error(), M2MVAULT_TLS_INVALID_ARGUMENT);
  EXPECT_EQ(m2mvault_tls_ctx_client_use_psk(ctx.get(), "k", nullptr), 1);
  EXPECT_EQ(m2mvault_tls_last_error(), M2MVAULT_TLS_OK);
  ERR_clear_error();
}

TEST_F(PskLookupTest, BinaryIdentityIsNotSentToTheVault) {
  const Session s = held_key_session(TLS1_3_VERSION, TableRow{"x", "bad identity\x01", "00112233"});
  EXPECT_FALSE(s.server.ok);
  EXPECT_EQ(releases(), 0u);
}

TEST_F(PskLookupTest, EightThreadsRunHandshakesAtOnce) {
  auto server_ctx = vault_server(TLS1_2_VERSION);
  auto server13 = vault_server(TLS1_3_VERSION);
  std::atomic<int> good{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      const TableRow& row = t % 2 ? kClockAE1 : kClockAE2;
      const HeldPsk held{row.kpsa_id, unhex(row.kpsa_hex)};
      for (int i = 0; i < 10; ++i) {
        const int version = i % 2 ? TLS1_2_VERSION : TLS1_3_VERSION;
        const Session s = held_key_session(
            version == TLS1_2_VERSION ? server_ctx.get() : server13.get(), version, held);
        if (s.server.ok && s.server.entity == row.entity) ++good;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(good.load(), 80);
  EXPECT_EQ(releases(), 80u);  // one audited release per handshake
}

// A child must not speak on its parent's daemon connection: it opens its own.
TEST_F(PskLookupTest, ForkedChildUsesItsOwnConnection) {
  auto server_ctx = vault_server(TLS1_2_VERSION);
  const HeldPsk held{kClockAE1.kpsa_id, unhex(kClockAE1.kpsa_hex)};
  ASSERT_TRUE(held_key_session(server_ctx.get(), TLS1_2_VERSION, held).server.ok);  // pools one
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    const Session s = held_key_session(server_ctx.get(), TLS1_2_VERSION, held);
    ::_exit(s.server.ok && s.server.entity == "Clock-AE1" ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  // The parent's pooled connection still works.
  EXPECT_TRUE(held_key_session(server_ctx.get(), TLS1_2_VERSION, held).server.ok);
  // The daemon saw the child's release come from the child (SO_PEERCRED is
  // the connecting process): a connection of its own.
  std::vector<json> by_pid[2];
  for (const auto& r : audit({{"op", "psk.release"}})) {
    if (r["pid"] == ::getpid()) by_pid[0].push_back(r);
    if (r["pid"] == child) by_pid[1].push_back(r);
  }
  EXPECT_EQ(by_pid[0].size(), 2u);
  EXPECT_EQ(by_pid[1].size(), 1u);
}

}  // namespace
}  // namespace m2mvault
