// The vault's swtpm TCTI: one TCP connection for every command, a swtpm
// restart between commands is transparent, and the TCTI contract (state
// machine, size query, timeouts, responses arriving in pieces, a peer gone
// mid-response). The faults a real swtpm cannot produce come from a small
// fake peer that speaks the TPM framing.
#include "hsm/tpm2/swtpm_tcti.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <functional>
#include <future>
#include <set>
#include <sstream>
#include <thread>

#include "tests/hsm/tpm2/tpm2_test_support.h"

namespace m2mvault::hsm::tpm2::testing {
namespace {

using std::chrono::milliseconds;

// --- TPM framing -------------------------------------------------------------

constexpr std::size_t kHeaderSize = 10;

void put32(Bytes& out, std::uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8)
    out.push_back(static_cast<std::uint8_t>(value >> shift));
}

// TPM2_GetRandom(bytesRequested), no sessions.
Bytes get_random_command(std::uint16_t count) {
  Bytes out{0x80, 0x01};
  put32(out, 12);
  put32(out, TPM2_CC_GetRandom);
  out.push_back(static_cast<std::uint8_t>(count >> 8));
  out.push_back(static_cast<std::uint8_t>(count));
  return out;
}

// Its response: TPM_RC_SUCCESS and a TPM2B_DIGEST holding `random`.
Bytes get_random_response(std::span<const std::uint8_t> random) {
  Bytes out{0x80, 0x01};
  put32(out, static_cast<std::uint32_t>(kHeaderSize + 2 + random.size()));
  put32(out, TPM2_RC_SUCCESS);
  out.push_back(static_cast<std::uint8_t>(random.size() >> 8));
  out.push_back(static_cast<std::uint8_t>(random.size()));
  out.insert(out.end(), random.begin(), random.end());
  return out;
}

// A response header claiming `size` bytes.
Bytes header_claiming(std::uint32_t size) {
  Bytes out{0x80, 0x01};
  put32(out, size);
  put32(out, TPM2_RC_SUCCESS);
  return out;
}

// --- a fake swtpm --------------------------------------------------------------

bool read_exactly(int fd, std::uint8_t* out, std::size_t size) {
  std::size_t got = 0;
  while (got < size) {
    const ssize_t n = recv(fd, out + got, size - got, 0);
    if (n <= 0) return false;
    got += static_cast<std::size_t>(n);
  }
  return true;
}

// One TPM command from the client: header, then the size it declares.
Bytes read_command(int fd) {
  Bytes command(kHeaderSize);
  if (!read_exactly(fd, command.data(), kHeaderSize)) return {};
  const std::size_t size = (std::size_t{command[2]} << 24) | (std::size_t{command[3]} << 16) |
                           (std::size_t{command[4]} << 8) | command[5];
  command.resize(size);
  if (size > kHeaderSize && !read_exactly(fd, command.data() + kHeaderSize, size - kHeaderSize)) {
    return {};
  }
  return command;
}

void write_all(int fd, std::span<const std::uint8_t> bytes) {
  std::size_t sent = 0;
  while (sent < bytes.size()) {
    const ssize_t n = send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return;
    sent += static_cast<std::size_t>(n);
  }
}

// `bytes` as separate TCP segments of the given sizes, a pause between them,
// so the client has to read the response in several pieces.
void write_in_pieces(int fd, std::span<const std::uint8_t> bytes,
                     const std::vector<std::size_t>& pieces) {
  std::size_t at = 0;
  for (const std::size_t piece : pieces) {
    write_all(fd, bytes.subspan(at, piece));
    at += piece;
    std::this_thread::sleep_for(milliseconds(20));
  }
  write_all(fd, bytes.subspan(at));
}

// A TCP listener on loopback that serves each connection it accepts, one at
// a time as swtpm does, with `serve(socket, n)` (n counts from 0); the
// connection is closed when serve returns.
class FakeSwtpm {
 public:
  using Serve = std::function<void(int socket, int connection)>;

  explicit FakeSwtpm(Serve serve) : serve_(std::move(serve)) {
    listener_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof address;
    if (listener_ < 0 || bind(listener_, reinterpret_cast<sockaddr*>(&address), length) != 0 ||
        listen(listener_, 4) != 0 ||
        getsockname(listener_, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
      throw std::runtime_error("cannot listen on loopback");
    }
    port_ = ntohs(address.sin_port);
    thread_ = std::thread([this] { run(); });
  }
  FakeSwtpm(const FakeSwtpm&) = delete;
  FakeSwtpm& operator=(const FakeSwtpm&) = delete;
  ~FakeSwtpm() {
    stop_ = true;
    thread_.join();
    close(listener_);
  }

  std::string tcti() const { return "swtpm:host=127.0.0.1,port=" + std::to_string(port_); }
  int accepted() const { return accepted_; }

 private:
  void run() {
    while (!stop_) {
      pollfd incoming{listener_, POLLIN, 0};
      if (poll(&incoming, 1, 50) <= 0) continue;
      const int client = accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
      if (client < 0) continue;
      // A test that goes wrong must not hang on the peer.
      const timeval limit{5, 0};
      setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
      const int on = 1;
      setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
      serve_(client, accepted_++);
      close(client);
    }
  }

  Serve serve_;
  int listener_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> accepted_{0};
  std::thread thread_;
};

// Answers every GetRandom command on the connection with `random`'s first
// bytesRequested bytes, until the client goes away.
void answer_get_random(int fd, std::span<const std::uint8_t> random) {
  for (Bytes command = read_command(fd); !command.empty(); command = read_command(fd)) {
    const std::size_t count = (std::size_t{command[10]} << 8) | command[11];
    write_all(fd, get_random_response(random.first(std::min(count, random.size()))));
  }
}

// --- the client side -------------------------------------------------------------

// TPM2_GetRandom through the TCTI alone: the response, or the TCTI's error.
struct Exchange {
  TSS2_RC rc = TSS2_RC_SUCCESS;
  Bytes response;
};

Exchange get_random_through(TSS2_TCTI_CONTEXT* tcti, std::uint16_t count) {
  const Bytes command = get_random_command(count);
  Exchange out;
  out.rc = Tss2_Tcti_Transmit(tcti, command.size(), command.data());
  if (out.rc != TSS2_RC_SUCCESS) return out;
  out.response.resize(TPM2_MAX_RESPONSE_SIZE);
  std::size_t size = out.response.size();
  out.rc = Tss2_Tcti_Receive(tcti, &size, out.response.data(), TSS2_TCTI_TIMEOUT_BLOCK);
  out.response.resize(out.rc == TSS2_RC_SUCCESS ? size : 0);
  return out;
}

// An ESAPI context on the vault's TCTI.
struct EsysOnSwtpmTcti {
  explicit EsysOnSwtpmTcti(const std::string& tcti_config) : tcti(tcti_config) {
    ESYS_CONTEXT* raw = nullptr;
    EXPECT_EQ(Esys_Initialize(&raw, tcti.context(), nullptr), TSS2_RC_SUCCESS);
    esys.reset(raw);
  }

  Bytes get_random(std::uint16_t count) {
    TPM2B_DIGEST* raw = nullptr;
    const TSS2_RC rc =
        Esys_GetRandom(esys.get(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, count, &raw);
    const EsysPtr<TPM2B_DIGEST> random(raw);
    EXPECT_EQ(rc, TSS2_RC_SUCCESS) << describe_rc(rc);
    return random ? Bytes(random->buffer, random->buffer + random->size) : Bytes();
  }

  SwtpmTcti tcti;
  EsysContextPtr esys;  // after the TCTI: finalized before it
};

// The local ports of this machine's TCP sockets connected to 127.0.0.1:port,
// in any state (TIME_WAIT included), as the kernel lists them.
std::set<int> sockets_to(int port) {
  std::set<int> local_ports;
  std::ifstream table("/proc/net/tcp");
  std::string line;
  std::getline(table, line);  // column names
  char remote[32];
  std::snprintf(remote, sizeof remote, "0100007F:%04X", port);
  while (std::getline(table, line)) {
    std::istringstream fields(line);
    std::string slot, local, peer;
    fields >> slot >> local >> peer;
    if (peer == remote)
      local_ports.insert(std::stoi(local.substr(local.find(':') + 1), nullptr, 16));
  }
  return local_ports;
}

std::size_t new_sockets(const std::set<int>& before, const std::set<int>& after) {
  std::size_t count = 0;
  for (const int port : after) count += before.count(port) == 0 ? 1 : 0;
  return count;
}

// A loopback port that refuses connections: bound, never listening.
class RefusingPort {
 public:
  RefusingPort() : fd_(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof address;
    bind(fd_, reinterpret_cast<sockaddr*>(&address), length);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&address), &length);
    port_ = ntohs(address.sin_port);
  }
  RefusingPort(const RefusingPort&) = delete;
  RefusingPort& operator=(const RefusingPort&) = delete;
  ~RefusingPort() { close(fd_); }
  int port() const { return port_; }

 private:
  int fd_;
  int port_ = 0;
};

std::string error_text_of(const std::function<void()>& call, TSS2_RC* rc = nullptr) {
  try {
    call();
  } catch (const TpmError& error) {
    EXPECT_EQ(error.failure(), Failure::unavailable) << error.what();
    if (rc != nullptr) *rc = error.rc();
    return error.what();
  }
  ADD_FAILURE() << "no TpmError";
  return "";
}

// --- on swtpm ----------------------------------------------------------------------

TEST(SwtpmTcti, ManyCommandsShareOneConnection) {
  Swtpm swtpm;
  const std::set<int> before = sockets_to(swtpm.port());
  EsysOnSwtpmTcti client(swtpm.tcti());
  for (std::uint16_t i = 0; i < 300; ++i) {
    const std::uint16_t count = 1 + i % 32;
    ASSERT_EQ(client.get_random(count).size(), count);
  }
  EXPECT_EQ(client.tcti.connects(), 1u);
  // The kernel's view: one socket to swtpm's port, where tpm2-tss's TCTI
  // leaves one in TIME_WAIT per command.
  EXPECT_EQ(new_sockets(before, sockets_to(swtpm.port())), 1u);
}

TEST(SwtpmTcti, Tpm2SignsOverOneConnection) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  const Tpm2::SigningKey key = tpm.generate_signing_key();
  const Pkey public_key = parse_spki(key.public_key);
  for (int i = 0; i < 100; ++i) {
    const Bytes message = text_bytes("message " + std::to_string(i));
    const Bytes signature =
        tpm.sign_digest(key.blob, DigestAlgorithm::sha256, digest_of(EVP_sha256(), message));
    ASSERT_TRUE(digest_verifies(public_key.get(), EVP_sha256(), message, signature)) << i;
  }
  EXPECT_EQ(tpm.stats().tcti_connections, 1u);
  EXPECT_EQ(tpm.stats().reconnects, 0u);
}

TEST(SwtpmTcti, SwtpmRestartBetweenCommandsIsTransparent) {
  Swtpm swtpm;
  EsysOnSwtpmTcti client(swtpm.tcti());
  EXPECT_EQ(client.get_random(16).size(), 16u);
  swtpm.restart();
  // The closed connection is noticed before sending: no error, a new one.
  EXPECT_EQ(client.get_random(16).size(), 16u);
  EXPECT_EQ(client.tcti.connects(), 2u);
  EXPECT_EQ(client.get_random(16).size(), 16u);
  EXPECT_EQ(client.tcti.connects(), 2u);
}

// The TPM lost the primary and the sessions with the restart: Tpm2 sees
// that from the TPM's answer, reconnects and signs again.
TEST(SwtpmTcti, Tpm2SignsAfterASwtpmRestart) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  const Tpm2::SigningKey key = tpm.generate_signing_key();
  const Pkey public_key = parse_spki(key.public_key);
  const Bytes message = text_bytes("after the restart");
  const Bytes digest = digest_of(EVP_sha256(), message);
  tpm.sign_digest(key.blob, DigestAlgorithm::sha256, digest);
  swtpm.restart();
  const Bytes signature = tpm.sign_digest(key.blob, DigestAlgorithm::sha256, digest);
  EXPECT_TRUE(digest_verifies(public_key.get(), EVP_sha256(), message, signature));
  EXPECT_EQ(tpm.stats().reconnects, 1u);
  // The old link's TCTI reconnected to send the command the TPM refused,
  // then the new link made its own.
  EXPECT_EQ(tpm.stats().tcti_connections, 3u);
}

// swtpm --server type=unixio, as "swtpm:path=...": the same connection rules.
TEST(SwtpmTcti, Tpm2SignsOverAUnixSocketAndAfterASwtpmRestart) {
  Swtpm swtpm(Swtpm::Transport::unix_socket);
  ASSERT_NE(swtpm.tcti().find("swtpm:path=/"), std::string::npos) << swtpm.tcti();
  Bytes blob;
  Pkey public_key;
  {
    Tpm2 tpm(swtpm.config());
    const Tpm2::SigningKey key = tpm.generate_signing_key();
    blob = key.blob;
    public_key = parse_spki(key.public_key);
    for (int i = 0; i < 50; ++i) {
      const Bytes message = text_bytes("over a Unix socket " + std::to_string(i));
      const Bytes signature =
          tpm.sign_digest(blob, DigestAlgorithm::sha256, digest_of(EVP_sha256(), message));
      ASSERT_TRUE(digest_verifies(public_key.get(), EVP_sha256(), message, signature)) << i;
    }
    EXPECT_EQ(tpm.stats().tcti_connections, 1u);

    swtpm.restart();
    const Bytes message = text_bytes("after the restart");
    const Bytes signature =
        tpm.sign_digest(blob, DigestAlgorithm::sha256, digest_of(EVP_sha256(), message));
    EXPECT_TRUE(digest_verifies(public_key.get(), EVP_sha256(), message, signature));
    EXPECT_EQ(tpm.stats().reconnects, 1u);
  }
  // tpm2-tss's own swtpm TCTI reaches the same swtpm (and its control
  // channel, which it wants at the path + ".ctrl") once the vault's has gone.
  Tpm2 shared(swtpm.shared_config());
  const Bytes message = text_bytes("through tpm2-tss's TCTI");
  const Bytes signature =
      shared.sign_digest(blob, DigestAlgorithm::sha256, digest_of(EVP_sha256(), message));
  EXPECT_TRUE(digest_verifies(public_key.get(), EVP_sha256(), message, signature));
}

TEST(SwtpmTcti, NothingListeningAtAPathIsUnavailableNamingThePath) {
  const std::string path = "/nonexistent-m2mvault-dir/swtpm.sock";
  TSS2_RC rc = 0;
  const std::string message = error_text_of([&] { SwtpmTcti tcti("swtpm:path=" + path); }, &rc);
  EXPECT_NE(message.find("cannot connect to swtpm at " + path + ": No such file or directory"),
            std::string::npos)
      << message;
  EXPECT_EQ(rc, TSS2_TCTI_RC_NO_CONNECTION);
}

// --- configuration and connecting ----------------------------------------------------

TEST(SwtpmTcti, ParsesTheConfigurationsTpm2TssDocuments) {
  EXPECT_TRUE(is_swtpm_tcti("swtpm"));
  EXPECT_TRUE(is_swtpm_tcti("swtpm:"));
  EXPECT_TRUE(is_swtpm_tcti("swtpm:port=2321"));
  EXPECT_FALSE(is_swtpm_tcti("swtpmx:port=2321"));
  EXPECT_FALSE(is_swtpm_tcti("libtss2-tcti-swtpm.so.0:port=2321"));  // tpm2-tss's, by name
  EXPECT_FALSE(is_swtpm_tcti("device:/dev/tpmrm0"));
  EXPECT_FALSE(is_swtpm_tcti("mssim:port=2321"));

  for (const char* defaults : {"swtpm", "swtpm:"}) {
    const SwtpmAddress address = parse_swtpm_tcti(defaults);
    EXPECT_EQ(address.host, "localhost");
    EXPECT_EQ(address.port, 2321);
  }
  EXPECT_EQ(parse_swtpm_tcti("swtpm:port=2400").port, 2400);
  EXPECT_EQ(parse_swtpm_tcti("swtpm:port=2400").host, "localhost");
  const SwtpmAddress both = parse_swtpm_tcti("swtpm:host=192.0.2.7,port=65535");
  EXPECT_EQ(both.host, "192.0.2.7");
  EXPECT_EQ(both.port, 65535);
  EXPECT_EQ(parse_swtpm_tcti("swtpm:port=7,host=::1").host, "::1");
  EXPECT_EQ(parse_swtpm_tcti("swtpm:port=2400,").port,
            2400);  // empty options skipped, as tpm2-tss does
  const SwtpmAddress unix_socket = parse_swtpm_tcti("swtpm:path=/run/swtpm/server.sock");
  EXPECT_EQ(unix_socket.path, "/run/swtpm/server.sock");
  EXPECT_TRUE(parse_swtpm_tcti("swtpm:port=2400").path.empty());
}

TEST(SwtpmTcti, ABadConfigurationIsUnavailableNamingWhatIsWrong) {
  const struct {
    const char* tcti;
    const char* says;
  } cases[] = {
      {"swtpm:port=0", "port must be a number 1..65535, not \"0\""},
      {"swtpm:port=65536", "not \"65536\""},
      {"swtpm:port=23a", "not \"23a\""},
      {"swtpm:port=", "not \"\""},
      {"swtpm:host=,port=2321", "host is empty"},
      {"swtpm:prot=2321", "unknown key \"prot\" (swtpm takes host and port, or path)"},
      {"swtpm:path=", "path is empty"},
      {"swtpm:path=/a,path=/b", "path is given twice"},
      {"swtpm:path=/run/swtpm.sock,port=2321", "host and port do not go with it"},
      {"swtpm:host=localhost,path=/run/swtpm.sock", "host and port do not go with it"},
      {"swtpm:2321", "\"2321\" is not key=value"},
      {"swtpm:port=1,port=2", "port is given twice"},
  };
  for (const auto& bad : cases) {
    TSS2_RC rc = 0;
    const std::string message = error_text_of([&] { SwtpmTcti tcti(bad.tcti); }, &rc);
    EXPECT_NE(message.find(std::string("TCTI \"") + bad.tcti + "\""), std::string::npos) << message;
    EXPECT_NE(message.find(bad.says), std::string::npos) << message;
    EXPECT_EQ(rc, TSS2_TCTI_RC_BAD_VALUE) << bad.tcti;
  }
  const std::string long_path = "swtpm:path=/" + std::string(200, 'p');
  const std::string too_long = error_text_of([&] { SwtpmTcti tcti(long_path); });
  EXPECT_NE(too_long.find("path is longer than a Unix socket address holds (107 bytes)"),
            std::string::npos)
      << too_long;
  // Through Tpm2, as the daemon opens it.
  Config config;
  config.tcti = "swtpm:port=abc";
  const std::string message = error_text_of([&] { Tpm2 tpm(config); });
  EXPECT_NE(message.find("not \"abc\""), std::string::npos) << message;
}

TEST(SwtpmTcti, NothingListeningIsUnavailableNamingHostAndPort) {
  const RefusingPort refusing;
  const std::string address = "127.0.0.1:" + std::to_string(refusing.port());
  TSS2_RC rc = 0;
  const std::string message = error_text_of(
      [&] { SwtpmTcti tcti("swtpm:host=127.0.0.1,port=" + std::to_string(refusing.port())); }, &rc);
  EXPECT_NE(message.find("cannot connect to swtpm at " + address + ": Connection refused"),
            std::string::npos)
      << message;
  EXPECT_EQ(rc, TSS2_TCTI_RC_NO_CONNECTION);

  Config config;
  config.tcti = "swtpm:port=" + std::to_string(refusing.port()) + ",host=127.0.0.1";
  const std::string through_tpm2 = error_text_of([&] { Tpm2 tpm(config); });
  EXPECT_NE(through_tpm2.find(address), std::string::npos) << through_tpm2;
  // (A host that does not resolve is not tried: on a machine without DNS
  // the look-up waits for the resolver's timeouts.)
}

// --- faults only a fake peer produces --------------------------------------------------

TEST(SwtpmTcti, AResponseInPiecesIsReassembled) {
  const Bytes random = random_bytes(32);
  const Bytes response = get_random_response(random);
  FakeSwtpm peer([&](int fd, int) {
    for (Bytes command = read_command(fd); !command.empty(); command = read_command(fd)) {
      // The header in three pieces, then the rest in three.
      write_in_pieces(fd, response, {1, 4, 5, 2, 16});
    }
  });
  EsysOnSwtpmTcti client(peer.tcti());
  EXPECT_EQ(client.get_random(32), random);
  EXPECT_EQ(client.get_random(32), random);
  EXPECT_EQ(client.tcti.connects(), 1u);
  EXPECT_EQ(peer.accepted(), 1);
}

TEST(SwtpmTcti, APeerGoneMidResponseIsAnIoErrorAndTheNextCommandReconnects) {
  const Bytes random = random_bytes(16);
  FakeSwtpm peer([&](int fd, int connection) {
    if (connection == 0) {
      read_command(fd);
      const Bytes response = get_random_response(random);
      write_all(fd, std::span(response).first(kHeaderSize + 3));
      return;  // closed mid-response
    }
    answer_get_random(fd, random);
  });
  SwtpmTcti tcti(peer.tcti());
  EXPECT_EQ(get_random_through(tcti.context(), 16).rc, TSS2_TCTI_RC_IO_ERROR);
  // Not sent again by the TCTI (it may have run); the next command goes on
  // a new connection.
  EXPECT_EQ(tcti.connects(), 1u);
  const Exchange next = get_random_through(tcti.context(), 16);
  EXPECT_EQ(next.rc, TSS2_RC_SUCCESS);
  EXPECT_EQ(next.response, get_random_response(random));
  EXPECT_EQ(tcti.connects(), 2u);
}

TEST(SwtpmTcti, AnAbsurdResponseSizeIsMalformedAndTheConnectionIsReplaced) {
  const Bytes random = random_bytes(8);
  FakeSwtpm peer([&](int fd, int connection) {
    read_command(fd);
    if (connection == 0) write_all(fd, header_claiming(0x40000000));  // 1 GiB
    if (connection == 1) write_all(fd, header_claiming(6));           // shorter than a header
    if (connection == 2) {  // more than the header declares, in one write
      Bytes longer = get_random_response(random);
      longer.push_back(0x00);
      write_all(fd, longer);
    }
    if (connection < 3) return;
    write_all(fd, get_random_response(random));
    answer_get_random(fd, random);
  });
  SwtpmTcti tcti(peer.tcti());
  EXPECT_EQ(get_random_through(tcti.context(), 8).rc, TSS2_TCTI_RC_MALFORMED_RESPONSE);
  EXPECT_EQ(get_random_through(tcti.context(), 8).rc, TSS2_TCTI_RC_MALFORMED_RESPONSE);
  EXPECT_EQ(get_random_through(tcti.context(), 8).rc, TSS2_TCTI_RC_MALFORMED_RESPONSE);
  EXPECT_EQ(get_random_through(tcti.context(), 8).response, get_random_response(random));
  EXPECT_EQ(tcti.connects(), 4u);
}

TEST(SwtpmTcti, FollowsTheTctiStateMachine) {
  const Bytes random = random_bytes(20);
  FakeSwtpm peer([&](int fd, int) { answer_get_random(fd, random); });
  SwtpmTcti tcti(peer.tcti());
  TSS2_TCTI_CONTEXT* context = tcti.context();
  const Bytes command = get_random_command(20);
  const Bytes expected = get_random_response(random);
  Bytes response(TPM2_MAX_RESPONSE_SIZE);
  std::size_t size = response.size();

  EXPECT_EQ(Tss2_Tcti_Receive(context, &size, response.data(), TSS2_TCTI_TIMEOUT_BLOCK),
            TSS2_TCTI_RC_BAD_SEQUENCE);  // nothing sent
  EXPECT_EQ(Tss2_Tcti_Transmit(context, command.size() - 1, command.data()),
            TSS2_TCTI_RC_BAD_VALUE);  // disagrees with the header
  EXPECT_EQ(Tss2_Tcti_Transmit(context, 4, command.data()), TSS2_TCTI_RC_BAD_VALUE);
  EXPECT_EQ(Tss2_Tcti_Transmit(context, command.size(), nullptr), TSS2_TCTI_RC_BAD_REFERENCE);
  EXPECT_EQ(Tss2_Tcti_Transmit(context, command.size(), command.data()), TSS2_RC_SUCCESS);
  EXPECT_EQ(Tss2_Tcti_Transmit(context, command.size(), command.data()),
            TSS2_TCTI_RC_BAD_SEQUENCE);  // the response is due first
  EXPECT_EQ(Tss2_Tcti_SetLocality(context, 0), TSS2_TCTI_RC_BAD_SEQUENCE);

  EXPECT_EQ(Tss2_Tcti_Receive(context, nullptr, response.data(), TSS2_TCTI_TIMEOUT_BLOCK),
            TSS2_TCTI_RC_BAD_REFERENCE);
  EXPECT_EQ(Tss2_Tcti_Receive(context, &size, response.data(), -2), TSS2_TCTI_RC_BAD_VALUE);
  // A NULL buffer asks for the size; a short one is refused with it.
  size = 0;
  EXPECT_EQ(Tss2_Tcti_Receive(context, &size, nullptr, TSS2_TCTI_TIMEOUT_BLOCK), TSS2_RC_SUCCESS);
  EXPECT_EQ(size, expected.size());
  size = expected.size() - 1;
  EXPECT_EQ(Tss2_Tcti_Receive(context, &size, response.data(), TSS2_TCTI_TIMEOUT_BLOCK),
            TSS2_TCTI_RC_INSUFFICIENT_BUFFER);
  EXPECT_EQ(size, expected.size());
  EXPECT_EQ(Tss2_Tcti_Receive(context, &size, response.data(), TSS2_TCTI_TIMEOUT_BLOCK),
            TSS2_RC_SUCCESS);
  response.resize(size);
  EXPECT_EQ(response, expected);
  response.resize(TPM2_MAX_RESPONSE_SIZE);
  size = response.size();
  EXPECT_EQ(Tss2_Tcti_Receive(context, &size, response.data(), TSS2_TCTI_TIMEOUT_BLOCK),
            TSS2_TCTI_RC_BAD_SEQUENCE);  // received already

  EXPECT_EQ(Tss2_Tcti_SetLocality(context, 0), TSS2_RC_SUCCESS);
  EXPECT_EQ(Tss2_Tcti_SetLocality(context, 3), TSS2_TCTI_RC_NOT_IMPLEMENTED);
  EXPECT_EQ(Tss2_Tcti_Cancel(context), TSS2_TCTI_RC_NOT_IMPLEMENTED);
  TPM2_HANDLE handle = TPM2_TRANSIENT_FIRST;
  EXPECT_EQ(Tss2_Tcti_MakeSticky(context, &handle, 1), TSS2_TCTI_RC_NOT_IMPLEMENTED);
  std::size_t handles = 0;
  EXPECT_EQ(Tss2_Tcti_GetPollHandles(context, nullptr, &handles), TSS2_RC_SUCCESS);
  EXPECT_EQ(handles, 1u);
  TSS2_TCTI_POLL_HANDLE poll_handle{};
  EXPECT_EQ(Tss2_Tcti_GetPollHandles(context, &poll_handle, &handles), TSS2_RC_SUCCESS);
  EXPECT_GE(poll_handle.fd, 0);
  EXPECT_EQ(poll_handle.events, POLLIN);

  // Still one connection, and finalize closes it.
  EXPECT_EQ(get_random_through(context, 20).response, expected);
  EXPECT_EQ(tcti.connects(), 1u);
  Tss2_Tcti_Finalize(context);
  EXPECT_EQ(Tss2_Tcti_Transmit(context, command.size(), command.data()), TSS2_TCTI_RC_BAD_SEQUENCE);
}

TEST(SwtpmTcti, ATimeoutIsTryAgainAndWhatArrivedIsKept) {
  const Bytes random = random_bytes(24);
  const Bytes response = get_random_response(random);
  std::promise<void> header_sent;
  std::promise<void> go_on;
  FakeSwtpm peer([&](int fd, int) {
    read_command(fd);
    write_all(fd, std::span(response).first(kHeaderSize));
    header_sent.set_value();
    go_on.get_future().wait_for(std::chrono::seconds(10));
    write_all(fd, std::span(response).subspan(kHeaderSize));
    answer_get_random(fd, random);
  });
  SwtpmTcti tcti(peer.tcti());
  TSS2_TCTI_CONTEXT* context = tcti.context();
  const Bytes command = get_random_command(24);
  ASSERT_EQ(Tss2_Tcti_Transmit(context, command.size(), command.data()), TSS2_RC_SUCCESS);
  header_sent.get_future().wait();

  Bytes received(TPM2_MAX_RESPONSE_SIZE);
  std::size_t size = received.size();
  // The header is in, the rest is not: no wait, then a short one.
  EXPECT_EQ(Tss2_Tcti_Receive(context, &size, received.data(), TSS2_TCTI_TIMEOUT_NONE),
            TSS2_TCTI_RC_TRY_AGAIN);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(Tss2_Tcti_Receive(context, &size, received.data(), 50), TSS2_TCTI_RC_TRY_AGAIN);
  EXPECT_GE(std::chrono::steady_clock::now() - start, milliseconds(50));
  size = 0;
  EXPECT_EQ(Tss2_Tcti_Receive(context, &size, nullptr, TSS2_TCTI_TIMEOUT_NONE), TSS2_RC_SUCCESS);
  EXPECT_EQ(size, response.size());  // from the header kept

  go_on.set_value();
  size = received.size();
  EXPECT_EQ(Tss2_Tcti_Receive(context, &size, received.data(), TSS2_TCTI_TIMEOUT_BLOCK),
            TSS2_RC_SUCCESS);
  received.resize(size);
  EXPECT_EQ(received, response);
  EXPECT_EQ(get_random_through(context, 24).response, response);
  EXPECT_EQ(tcti.connects(), 1u);
}

}  // namespace
}  // namespace m2mvault::hsm::tpm2::testing
