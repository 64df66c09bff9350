// The vault's TCTI for swtpm's command channel, TCP or a Unix socket: one
// persistent connection for every command, where tpm2-tss's `swtpm` TCTI
// opens (and resolves the host for) a new one per command. docs/TPM2.md, "The swtpm
// transport", has the numbers and the reconnect rules.
//
// It implements the public TCTI interface (tss2_tcti.h, TCTI version 2), so
// ESAPI and SAPI use it like any other TCTI. Not thread-safe: like every TCTI
// it serves one command at a time, and Tpm2 serializes use.
#pragma once

#include <tss2/tss2_tcti.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace m2mvault::hsm::tpm2 {

// True for the configurations this TCTI takes: "swtpm" and "swtpm:...".
bool is_swtpm_tcti(std::string_view tcti);

struct SwtpmAddress {
  std::string host = "localhost";  // tpm2-tss's defaults
  std::uint16_t port = 2321;
  std::string path;  // when set, a Unix socket instead (swtpm --server type=unixio)
};

// The address in "swtpm", "swtpm:", "swtpm:port=N", "swtpm:host=H,port=N"
// (keys in any order, each at most once) or "swtpm:path=P", as tpm2-tss
// spells them. Throws TpmError(unavailable,
// TSS2_TCTI_RC_BAD_VALUE) naming the configuration and what is wrong with it.
SwtpmAddress parse_swtpm_tcti(std::string_view tcti);

class SwtpmTcti {
 public:
  // Parses `tcti`, resolves the host (once: never again per command) and
  // connects. Throws TpmError(unavailable) for a bad configuration, a host
  // that does not resolve, or nothing accepting at host:port or the path.
  explicit SwtpmTcti(std::string_view tcti);
  SwtpmTcti(const SwtpmTcti&) = delete;
  SwtpmTcti& operator=(const SwtpmTcti&) = delete;
  // Closes the connection. Nothing may use context() afterwards.
  ~SwtpmTcti();

  // What Esys_Initialize and Tss2_Tcti_* take. Its finalize callback closes
  // the connection; the memory stays this object's.
  TSS2_TCTI_CONTEXT* context() noexcept;

  // Connections opened so far: 1 after construction, one more after each
  // reconnect. For tests and Tpm2::Stats.
  std::uint64_t connects() const noexcept { return connects_; }

  // "host:port" ("[host]:port" for an IPv6 literal) or the socket's path,
  // as errors name it.
  const std::string& peer() const noexcept { return peer_; }

 private:
  // The C view ESAPI holds: the common TCTI header first, then the way back.
  struct Context {
    TSS2_TCTI_CONTEXT_COMMON_V2 common;
    SwtpmTcti* self;
  };
  struct ResolvedAddress {
    int family = 0;
    int protocol = 0;
    std::vector<std::uint8_t> sockaddr;  // sockaddr_in, sockaddr_in6 or sockaddr_un
  };
  enum class State { transmit, receive, finalized };

  // Fills addresses_ with what the host resolves to (and names peer_).
  void resolve(const SwtpmAddress& address);
  static SwtpmTcti* from(TSS2_TCTI_CONTEXT* context) noexcept;
  static TSS2_RC transmit(TSS2_TCTI_CONTEXT* context, size_t size, const uint8_t* command);
  static TSS2_RC receive(TSS2_TCTI_CONTEXT* context, size_t* size, uint8_t* response,
                         int32_t timeout);
  static void finalize(TSS2_TCTI_CONTEXT* context);
  static TSS2_RC cancel(TSS2_TCTI_CONTEXT* context);
  static TSS2_RC get_poll_handles(TSS2_TCTI_CONTEXT* context, TSS2_TCTI_POLL_HANDLE* handles,
                                  size_t* count);
  static TSS2_RC set_locality(TSS2_TCTI_CONTEXT* context, uint8_t locality);
  static TSS2_RC make_sticky(TSS2_TCTI_CONTEXT* context, TPM2_HANDLE* handle, uint8_t sticky);

  // Connects to the first resolved address that accepts; on failure returns
  // false with the errno of the last attempt in `error`.
  bool connect_socket(int& error) noexcept;
  bool peer_has_closed() const noexcept;
  void close_socket() noexcept;
  TSS2_RC send_command(const uint8_t* command, std::size_t size) noexcept;
  // Reads until `until` bytes of the response are in: TSS2_TCTI_RC_TRY_AGAIN
  // when the deadline (none: block) passes first, the progress kept.
  using Deadline = std::optional<std::chrono::steady_clock::time_point>;
  TSS2_RC read_response(std::size_t until, const Deadline& deadline) noexcept;
  // Ends the command in progress: the response buffer wiped, ready to transmit.
  void end_command() noexcept;
  // An I/O failure mid-command: the connection goes (the next transmit makes
  // a new one) and the command ends with `rc`.
  TSS2_RC fail_command(TSS2_RC rc) noexcept;

  Context context_{};
  std::string peer_;
  std::vector<ResolvedAddress> addresses_;
  int socket_ = -1;
  State state_ = State::transmit;
  std::uint64_t connects_ = 0;
  // The response being read: its header, then the rest. It may hold TPM
  // output (encrypted where a session protects it): wiped after each command.
  std::array<std::uint8_t, TPM2_MAX_RESPONSE_SIZE> response_{};
  std::size_t received_ = 0;
  std::size_t response_size_ = 0;  // from the header; 0 until it is in
};

}  // namespace m2mvault::hsm::tpm2
