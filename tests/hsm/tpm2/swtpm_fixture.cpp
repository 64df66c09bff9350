#include "tests/hsm/tpm2/swtpm_fixture.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

namespace m2mvault::hsm::tpm2::testing {
namespace {

sockaddr_in loopback(int port) {
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<std::uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return address;
}

bool port_free(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  const int yes = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  const sockaddr_in address = loopback(port);
  const bool ok = bind(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0;
  close(fd);
  return ok;
}

int ephemeral_port_floor() {
  std::ifstream range("/proc/sys/net/ipv4/ip_local_port_range");
  int low = 0;
  if (!(range >> low) || low < 10004) return 32768;
  return low;
}

bool accepts(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  const sockaddr_in address = loopback(port);
  const bool ok = connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0;
  close(fd);
  return ok;
}

bool accepts(const std::filesystem::path& path) {
  const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  const std::string text = path.string();
  if (text.size() >= sizeof address.sun_path) {
    close(fd);
    return false;
  }
  text.copy(address.sun_path, text.size());
  const bool ok = connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0;
  close(fd);
  return ok;
}

}  // namespace

int run_command(const std::string& command) {
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

Swtpm::Swtpm(Transport transport) : transport_(transport) {
  std::string pattern = (std::filesystem::temp_directory_path() / "m2mvault-swtpm-XXXXXX").string();
  if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  state_dir_ = pattern;
  if (transport_ == Transport::unix_socket) {
    if (try_start()) return;
    std::filesystem::remove_all(state_dir_);
    throw std::runtime_error("cannot start swtpm on Unix sockets in " + pattern);
  }
  // Even ports below the ephemeral range: tpm2-tss's swtpm TCTI (the raw
  // ESAPI clients here, shared_config()) still opens a connection per
  // command, and the ephemeral ports those leave in TIME_WAIT cannot be
  // bound by a listener for a minute.
  std::mt19937 random(std::random_device{}());
  std::uniform_int_distribution<int> pick(5000, ephemeral_port_floor() / 2 - 1);
  for (int attempt = 0; attempt < 30; ++attempt) {
    port_ = pick(random) * 2;
    if (port_free(port_) && port_free(port_ + 1) && try_start()) return;
  }
  std::filesystem::remove_all(state_dir_);
  throw std::runtime_error("cannot start swtpm on a free port");
}

Swtpm::~Swtpm() {
  stop();
  std::error_code ignored;
  std::filesystem::remove_all(state_dir_, ignored);
}

std::string Swtpm::address() const {
  if (transport_ == Transport::unix_socket) return "path=" + server_socket().string();
  return "host=127.0.0.1,port=" + std::to_string(port_);
}

std::string Swtpm::tcti() const {
  return "swtpm:" + address();
}

Config Swtpm::config() const {
  Config config;
  config.tcti = tcti();
  return config;
}

Config Swtpm::shared_config() const {
  Config config;
  config.tcti = "libtss2-tcti-swtpm.so.0:" + address();
  return config;
}

bool Swtpm::try_start() {
  const std::string state = "dir=" + state_dir_.string();
  const bool unix_socket = transport_ == Transport::unix_socket;
  const std::string server = unix_socket
                                 ? "type=unixio,path=" + server_socket().string()
                                 : "type=tcp,port=" + std::to_string(port_) + ",bindaddr=127.0.0.1";
  const std::string control =
      unix_socket ? "type=unixio,path=" + control_socket().string()
                  : "type=tcp,port=" + std::to_string(port_ + 1) + ",bindaddr=127.0.0.1";
  std::vector<std::string> args{"swtpm",
                                "socket",
                                "--tpm2",
                                "--tpmstate",
                                state,
                                "--server",
                                server,
                                "--ctrl",
                                control,
                                "--flags",
                                "not-need-init,startup-clear"};
  std::vector<char*> argv;
  for (auto& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  pid_ = fork();
  if (pid_ < 0) throw std::runtime_error("fork failed");
  if (pid_ == 0) {
    // Goes with the test process, even one killed by a timeout.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    execvp("swtpm", argv.data());
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {  // exited: port taken meanwhile
      pid_ = -1;
      return false;
    }
    if (ready()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  stop();
  return false;
}

bool Swtpm::ready() const {
  // The control channel answers once the TPM is initialized; the server
  // channel comes up at the same time.
  if (transport_ == Transport::unix_socket) {
    return accepts(control_socket()) && accepts(server_socket());
  }
  return accepts(port_ + 1) && accepts(port_);
}

void Swtpm::stop() {
  if (pid_ <= 0) return;
  kill(pid_, SIGTERM);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

void Swtpm::start() {
  for (int attempt = 0; attempt < 50; ++attempt) {
    if (try_start()) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  throw std::runtime_error("cannot restart swtpm at " + address());
}

void Swtpm::init_via_control_channel() {
  const std::string channel = transport_ == Transport::unix_socket
                                  ? "--unix " + control_socket().string()
                                  : "--tcp 127.0.0.1:" + std::to_string(port_ + 1);
  const std::string command = "swtpm_ioctl " + channel + " -i >/dev/null";
  if (run_command(command) != 0) throw std::runtime_error("swtpm_ioctl -i failed");
}

}  // namespace m2mvault::hsm::tpm2::testing
