#include "hsm/tpm2/swtpm_tcti.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstddef>
#include <cstring>
#include <system_error>

#include "hsm/tpm2/tss.h"

namespace m2mvault::hsm::tpm2 {
namespace {

constexpr std::string_view kPrefix = "swtpm";
// "m2mswtpm": tells our context from any other TCTI's.
constexpr std::uint64_t kMagic = 0x6d326d737774706dULL;
// tag (2), size (4), command or response code (4)
constexpr std::size_t kHeaderSize = 10;

std::uint32_t size_field(const std::uint8_t* header) {
  return (std::uint32_t{header[2]} << 24) | (std::uint32_t{header[3]} << 16) |
         (std::uint32_t{header[4]} << 8) | std::uint32_t{header[5]};
}

std::string errno_text(int error) {
  return std::system_category().message(error);
}

[[noreturn]] void bad_config(std::string_view tcti, const std::string& what) {
  throw TpmError(Failure::unavailable, "TCTI \"" + std::string(tcti) + "\": " + what,
                 TSS2_TCTI_RC_BAD_VALUE);
}

std::uint16_t parse_port(std::string_view tcti, std::string_view text) {
  unsigned int port = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), port);
  if (text.empty() || error != std::errc() || end != text.data() + text.size() || port == 0 ||
      port > 65535) {
    bad_config(tcti, "port must be a number 1..65535, not \"" + std::string(text) + "\"");
  }
  return static_cast<std::uint16_t>(port);
}

// A connect() interrupted by a signal goes on in the background: wait for it.
int finish_interrupted_connect(int fd) {
  pollfd writable{fd, POLLOUT, 0};
  while (poll(&writable, 1, -1) < 0) {
    if (errno != EINTR) return -1;
  }
  int error = 0;
  socklen_t length = sizeof error;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0) return -1;
  if (error != 0) {
    errno = error;
    return -1;
  }
  return 0;
}

}  // namespace

bool is_swtpm_tcti(std::string_view tcti) {
  return tcti == kPrefix ||
         (tcti.starts_with(kPrefix) && tcti.size() > kPrefix.size() && tcti[kPrefix.size()] == ':');
}

SwtpmAddress parse_swtpm_tcti(std::string_view tcti) {
  if (!is_swtpm_tcti(tcti)) bad_config(tcti, "not a swtpm TCTI");
  SwtpmAddress address;
  std::string_view rest = tcti.substr(std::min(tcti.size(), kPrefix.size() + 1));
  bool have_host = false;
  bool have_port = false;
  bool have_path = false;
  while (!rest.empty()) {
    const std::size_t comma = rest.find(',');
    const std::string_view option = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    if (option.empty()) continue;  // "port=N," as tpm2-tss takes it
    const std::size_t equals = option.find('=');
    if (equals == std::string_view::npos) {
      bad_config(tcti,
                 "\"" + std::string(option) + "\" is not key=value (host=H,port=N or path=P)");
    }
    const std::string_view key = option.substr(0, equals);
    const std::string_view value = option.substr(equals + 1);
    if (key == "host") {
      if (have_host) bad_config(tcti, "host is given twice");
      if (value.empty()) bad_config(tcti, "host is empty");
      address.host = value;
      have_host = true;
    } else if (key == "port") {
      if (have_port) bad_config(tcti, "port is given twice");
      address.port = parse_port(tcti, value);
      have_port = true;
    } else if (key == "path") {
      if (have_path) bad_config(tcti, "path is given twice");
      if (value.empty()) bad_config(tcti, "path is empty");
      if (value.size() >= sizeof(sockaddr_un::sun_path)) {
        bad_config(tcti, "path is longer than a Unix socket address holds (" +
                             std::to_string(sizeof(sockaddr_un::sun_path) - 1) + " bytes)");
      }
      address.path = value;
      have_path = true;
    } else {
      bad_config(tcti,
                 "unknown key \"" + std::string(key) + "\" (swtpm takes host and port, or path)");
    }
  }
  if (have_path && (have_host || have_port)) {
    bad_config(tcti, "path names a Unix socket: host and port do not go with it");
  }
  return address;
}

SwtpmTcti::SwtpmTcti(std::string_view tcti) {
  const SwtpmAddress address = parse_swtpm_tcti(tcti);
  if (address.path.empty()) {
    resolve(address);
  } else {
    peer_ = address.path;
    sockaddr_un unix_address{};
    unix_address.sun_family = AF_UNIX;
    std::memcpy(unix_address.sun_path, address.path.data(), address.path.size());
    const auto* bytes = reinterpret_cast<const std::uint8_t*>(&unix_address);
    const std::size_t length = offsetof(sockaddr_un, sun_path) + address.path.size() + 1;
    addresses_.push_back({AF_UNIX, 0, std::vector<std::uint8_t>(bytes, bytes + length)});
  }

  int error = 0;
  if (!connect_socket(error)) {
    throw TpmError(Failure::unavailable,
                   "cannot connect to swtpm at " + peer_ + ": " + errno_text(error),
                   TSS2_TCTI_RC_NO_CONNECTION);
  }

  TSS2_TCTI_CONTEXT_COMMON_V1& common = context_.common.v1;
  common.magic = kMagic;
  common.version = 2;
  common.transmit = &SwtpmTcti::transmit;
  common.receive = &SwtpmTcti::receive;
  common.finalize = &SwtpmTcti::finalize;
  common.cancel = &SwtpmTcti::cancel;
  common.getPollHandles = &SwtpmTcti::get_poll_handles;
  common.setLocality = &SwtpmTcti::set_locality;
  context_.common.makeSticky = &SwtpmTcti::make_sticky;
  context_.self = this;
}

void SwtpmTcti::resolve(const SwtpmAddress& address) {
  const std::string port = std::to_string(address.port);
  peer_ = address.host.find(':') == std::string::npos ? address.host + ":" + port
                                                      : "[" + address.host + "]:" + port;

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const int resolved = getaddrinfo(address.host.c_str(), port.c_str(), &hints, &found);
  if (resolved != 0) {
    const std::string why = resolved == EAI_SYSTEM ? errno_text(errno) : gai_strerror(resolved);
    throw TpmError(Failure::unavailable,
                   "cannot resolve the swtpm host \"" + address.host + "\": " + why,
                   TSS2_TCTI_RC_NO_CONNECTION);
  }
  for (const addrinfo* entry = found; entry != nullptr; entry = entry->ai_next) {
    const auto* bytes = reinterpret_cast<const std::uint8_t*>(entry->ai_addr);
    addresses_.push_back({entry->ai_family, entry->ai_protocol,
                          std::vector<std::uint8_t>(bytes, bytes + entry->ai_addrlen)});
  }
  freeaddrinfo(found);
}

SwtpmTcti::~SwtpmTcti() {
  end_command();
  close_socket();
}

TSS2_TCTI_CONTEXT* SwtpmTcti::context() noexcept {
  return reinterpret_cast<TSS2_TCTI_CONTEXT*>(&context_);
}

SwtpmTcti* SwtpmTcti::from(TSS2_TCTI_CONTEXT* context) noexcept {
  auto* ours = reinterpret_cast<Context*>(context);
  return ours->common.v1.magic == kMagic ? ours->self : nullptr;
}

// --- the TCTI functions ---------------------------------------------------------

TSS2_RC SwtpmTcti::transmit(TSS2_TCTI_CONTEXT* context, size_t size, const uint8_t* command) {
  if (context == nullptr || command == nullptr) return TSS2_TCTI_RC_BAD_REFERENCE;
  SwtpmTcti* self = from(context);
  if (self == nullptr) return TSS2_TCTI_RC_BAD_CONTEXT;
  if (self->state_ != State::transmit) return TSS2_TCTI_RC_BAD_SEQUENCE;
  if (size < kHeaderSize || size > TPM2_MAX_COMMAND_SIZE || size_field(command) != size) {
    return TSS2_TCTI_RC_BAD_VALUE;
  }
  // An idle connection to a live swtpm has nothing to read: anything else
  // means it closed (a restart), so the command goes on a new connection.
  if (self->socket_ >= 0 && self->peer_has_closed()) self->close_socket();
  if (self->socket_ < 0) {
    int ignored = 0;  // Tpm2 reconnects through the constructor, which says why
    if (!self->connect_socket(ignored)) return TSS2_TCTI_RC_NO_CONNECTION;
  }
  const TSS2_RC rc = self->send_command(command, size);
  if (rc != TSS2_RC_SUCCESS) return rc;
  self->state_ = State::receive;
  return TSS2_RC_SUCCESS;
}

TSS2_RC SwtpmTcti::receive(TSS2_TCTI_CONTEXT* context, size_t* size, uint8_t* response,
                           int32_t timeout) {
  if (context == nullptr || size == nullptr) return TSS2_TCTI_RC_BAD_REFERENCE;
  SwtpmTcti* self = from(context);
  if (self == nullptr) return TSS2_TCTI_RC_BAD_CONTEXT;
  if (timeout < TSS2_TCTI_TIMEOUT_BLOCK) return TSS2_TCTI_RC_BAD_VALUE;
  if (self->state_ != State::receive) return TSS2_TCTI_RC_BAD_SEQUENCE;

  Deadline deadline;
  if (timeout != TSS2_TCTI_TIMEOUT_BLOCK) {
    deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout);
  }
  if (self->response_size_ == 0) {
    const TSS2_RC rc = self->read_response(kHeaderSize, deadline);
    if (rc != TSS2_RC_SUCCESS) return rc;
    const std::uint32_t declared = size_field(self->response_.data());
    // Out of step with the TPM, or not a TPM at all: nothing after this
    // can be trusted to start a response.
    if (declared < kHeaderSize || declared > self->response_.size() || self->received_ > declared) {
      return self->fail_command(TSS2_TCTI_RC_MALFORMED_RESPONSE);
    }
    self->response_size_ = declared;
  }
  if (response == nullptr) {
    *size = self->response_size_;
    return TSS2_RC_SUCCESS;
  }
  if (*size < self->response_size_) {
    *size = self->response_size_;
    return TSS2_TCTI_RC_INSUFFICIENT_BUFFER;
  }
  const TSS2_RC rc = self->read_response(self->response_size_, deadline);
  if (rc != TSS2_RC_SUCCESS) return rc;
  std::memcpy(response, self->response_.data(), self->response_size_);
  *size = self->response_size_;
  self->end_command();
  return TSS2_RC_SUCCESS;
}

void SwtpmTcti::finalize(TSS2_TCTI_CONTEXT* context) {
  if (context == nullptr) return;
  SwtpmTcti* self = from(context);
  if (self == nullptr) return;
  self->end_command();
  self->close_socket();
  self->state_ = State::finalized;
}

// swtpm cancels nothing on its command channel (only its control channel
// has a cancel, which it does not act on either).
TSS2_RC SwtpmTcti::cancel(TSS2_TCTI_CONTEXT* context) {
  if (context == nullptr) return TSS2_TCTI_RC_BAD_REFERENCE;
  if (from(context) == nullptr) return TSS2_TCTI_RC_BAD_CONTEXT;
  return TSS2_TCTI_RC_NOT_IMPLEMENTED;
}

TSS2_RC SwtpmTcti::get_poll_handles(TSS2_TCTI_CONTEXT* context, TSS2_TCTI_POLL_HANDLE* handles,
                                    size_t* count) {
  if (context == nullptr || count == nullptr) return TSS2_TCTI_RC_BAD_REFERENCE;
  SwtpmTcti* self = from(context);
  if (self == nullptr) return TSS2_TCTI_RC_BAD_CONTEXT;
  if (handles == nullptr) {
    *count = 1;
    return TSS2_RC_SUCCESS;
  }
  if (*count < 1) {
    *count = 1;
    return TSS2_TCTI_RC_INSUFFICIENT_BUFFER;
  }
  handles[0] = pollfd{self->socket_, POLLIN, 0};
  *count = 1;
  return TSS2_RC_SUCCESS;
}

// swtpm starts in locality 0, and only its control channel, which this TCTI
// never uses, changes that.
TSS2_RC SwtpmTcti::set_locality(TSS2_TCTI_CONTEXT* context, uint8_t locality) {
  if (context == nullptr) return TSS2_TCTI_RC_BAD_REFERENCE;
  SwtpmTcti* self = from(context);
  if (self == nullptr) return TSS2_TCTI_RC_BAD_CONTEXT;
  if (self->state_ != State::transmit) return TSS2_TCTI_RC_BAD_SEQUENCE;
  return locality == 0 ? TSS2_RC_SUCCESS : TSS2_TCTI_RC_NOT_IMPLEMENTED;
}

// Stickiness belongs to a resource manager, and swtpm has none.
TSS2_RC SwtpmTcti::make_sticky(TSS2_TCTI_CONTEXT* context, TPM2_HANDLE*, uint8_t) {
  if (context == nullptr) return TSS2_TCTI_RC_BAD_REFERENCE;
  if (from(context) == nullptr) return TSS2_TCTI_RC_BAD_CONTEXT;
  return TSS2_TCTI_RC_NOT_IMPLEMENTED;
}

// --- the connection -------------------------------------------------------------

bool SwtpmTcti::connect_socket(int& error) noexcept {
  error = EADDRNOTAVAIL;  // getaddrinfo gave no address
  for (const ResolvedAddress& address : addresses_) {
    const int fd = socket(address.family, SOCK_STREAM | SOCK_CLOEXEC, address.protocol);
    if (fd < 0) {
      error = errno;
      continue;
    }
    int connected = ::connect(fd, reinterpret_cast<const sockaddr*>(address.sockaddr.data()),
                              static_cast<socklen_t>(address.sockaddr.size()));
    if (connected != 0 && errno == EINTR) connected = finish_interrupted_connect(fd);
    if (connected != 0) {
      error = errno;
      ::close(fd);
      continue;
    }
    if (address.family != AF_UNIX) {
      // A command is one small write, and the TPM waits for all of it.
      const int on = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    }
    socket_ = fd;
    ++connects_;
    return true;
  }
  return false;
}

bool SwtpmTcti::peer_has_closed() const noexcept {
  pollfd idle{socket_, POLLIN, 0};
  for (;;) {
    const int ready = poll(&idle, 1, 0);
    if (ready < 0 && errno == EINTR) continue;
    return ready != 0;  // readable (EOF, or bytes nobody asked for), hung up, or failed
  }
}

void SwtpmTcti::close_socket() noexcept {
  if (socket_ < 0) return;
  ::close(socket_);
  socket_ = -1;
}

TSS2_RC SwtpmTcti::send_command(const uint8_t* command, std::size_t size) noexcept {
  std::size_t sent = 0;
  while (sent < size) {
    const ssize_t written = ::send(socket_, command + sent, size - sent, MSG_NOSIGNAL);
    if (written > 0) {
      sent += static_cast<std::size_t>(written);
    } else if (written < 0 && errno == EINTR) {
      continue;
    } else {
      close_socket();
      return TSS2_TCTI_RC_IO_ERROR;
    }
  }
  return TSS2_RC_SUCCESS;
}

TSS2_RC SwtpmTcti::read_response(std::size_t until, const Deadline& deadline) noexcept {
  while (received_ < until) {
    // Blocking (what ESAPI asks for): the socket's own wait, no poll.
    if (deadline) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(
          *deadline - std::chrono::steady_clock::now());
      const int wait_ms = static_cast<int>(std::clamp<std::int64_t>(left.count(), 0, INT_MAX));
      pollfd readable{socket_, POLLIN, 0};
      const int ready = poll(&readable, 1, wait_ms);
      if (ready < 0) {
        if (errno == EINTR) continue;
        return fail_command(TSS2_TCTI_RC_IO_ERROR);
      }
      if (ready == 0) return TSS2_TCTI_RC_TRY_AGAIN;
    }
    // As much as has come, up to the buffer: one command is in flight, so
    // whatever arrives belongs to its response (the header is checked
    // against the count), and a whole response usually takes one recv.
    const ssize_t got =
        ::recv(socket_, response_.data() + received_, response_.size() - received_, 0);
    if (got > 0) {
      received_ += static_cast<std::size_t>(got);
    } else if (got < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) {
      continue;
    } else {
      // 0: the peer closed mid-response. The command may have run: it is
      // not sent again here, and the caller decides.
      return fail_command(TSS2_TCTI_RC_IO_ERROR);
    }
  }
  return TSS2_RC_SUCCESS;
}

void SwtpmTcti::end_command() noexcept {
  OPENSSL_cleanse(response_.data(), received_);
  received_ = 0;
  response_size_ = 0;
  if (state_ == State::receive) state_ = State::transmit;
}

TSS2_RC SwtpmTcti::fail_command(TSS2_RC rc) noexcept {
  close_socket();
  end_command();
  return rc;
}

}  // namespace m2mvault::hsm::tpm2
