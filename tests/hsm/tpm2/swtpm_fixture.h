// A private swtpm for one test: TCP server and control ports on loopback,
// state in a temporary directory, no resource manager in front of it.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>

#include "hsm/tpm2/tpm2.h"

namespace m2mvault::hsm::tpm2::testing {

class Swtpm {
 public:
  enum class Transport { tcp, unix_socket };

  // Starts swtpm with a fresh state directory: on a free loopback port pair,
  // or with its command and control channels on Unix sockets in that
  // directory (--server type=unixio).
  explicit Swtpm(Transport transport = Transport::tcp);
  Swtpm(const Swtpm&) = delete;
  Swtpm& operator=(const Swtpm&) = delete;
  // Kills swtpm and removes its state directory.
  ~Swtpm();

  // "swtpm:host=127.0.0.1,port=P" (or "swtpm:path=..."): the vault's swtpm TCTI in a Tpm2 (one
  // connection, held while it lives), tpm2-tss's through Tss2_TctiLdr.
  std::string tcti() const;
  Config config() const;
  // A Tpm2 on tpm2-tss's swtpm TCTI ("libtss2-tcti-swtpm.so.0:...", a
  // connection per command), for a test in which another client talks to
  // this swtpm while the Tpm2 lives: swtpm serves one connection at a time,
  // so the vault's would hold the other client off until it closes.
  Config shared_config() const;
  int port() const noexcept { return port_; }  // 0 on Unix sockets
  const std::filesystem::path& state_dir() const noexcept { return state_dir_; }

  // Stops the process (SIGTERM, waits), keeping the state directory.
  void stop();
  // Starts it again on the same ports with the same state: a TPM reset
  // followed by TPM2_Startup(CLEAR) (swtpm's startup-clear flag).
  void start();
  void restart() {
    stop();
    start();
  }
  // _TPM_Init through the control channel (swtpm_ioctl -i) while the
  // process and its TCP connection live: the TPM needs TPM2_Startup again.
  void init_via_control_channel();

 private:
  bool try_start();
  bool ready() const;
  // "host=127.0.0.1,port=P" or "path=...": what follows a swtpm TCTI's prefix.
  std::string address() const;
  // On Unix sockets: the command channel, and the control channel where
  // tpm2-tss's swtpm TCTI looks for it (the command socket's path + ".ctrl").
  std::filesystem::path server_socket() const { return state_dir_ / "server.sock"; }
  std::filesystem::path control_socket() const { return state_dir_ / "server.sock.ctrl"; }

  Transport transport_;
  std::filesystem::path state_dir_;
  int port_ = 0;
  pid_t pid_ = -1;
};

// Runs a shell command, returning its exit status.
int run_command(const std::string& command);

}  // namespace m2mvault::hsm::tpm2::testing
