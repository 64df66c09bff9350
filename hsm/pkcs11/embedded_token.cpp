// First initialization of the embedded SoftHSM2 token (create_embedded_token)
// and the Config that opens it afterwards.
#include <fcntl.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdlib>
#include <string>

#include "hsm/pkcs11/ck_util.h"
#include "hsm/pkcs11/module.h"
#include "hsm/pkcs11/pkcs11_backend.h"
#include "hsm/pkcs11/token.h"

namespace m2mvault::hsm::pkcs11 {
namespace {

namespace fs = std::filesystem;

[[noreturn]] void io_failed(const std::string& what, const fs::path& path) {
  throw Error(Failure::unavailable, "cannot " + what + " " + path.string());
}

// A file descriptor closed at scope end.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const noexcept { return fd_; }

 private:
  int fd_;
};

void write_all(int fd, std::span<const std::uint8_t> bytes, const fs::path& path) {
  while (!bytes.empty()) {
    const ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) io_failed("write", path);
    bytes = bytes.subspan(static_cast<std::size_t>(n));
  }
}

// Writes `bytes` to a new file of mode 0600 and syncs it.
void write_private_file(const fs::path& path, std::span<const std::uint8_t> bytes) {
  const Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (fd.get() < 0) io_failed("create", path);
  if (::fchmod(fd.get(), 0600) != 0) io_failed("chmod", path);
  write_all(fd.get(), bytes, path);
  if (::fsync(fd.get()) != 0) io_failed("sync", path);
}

void write_text_file(const fs::path& path, const std::string& text) {
  write_private_file(path,
                     std::span(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()));
}

void sync_directory(const fs::path& path) {
  const Fd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0 || ::fsync(fd.get()) != 0) io_failed("sync", path);
}

std::string softhsm_conf(const fs::path& tokendir) {
  return "# m2mvault embedded SoftHSM2 token\n"
         "directories.tokendir = " +
         tokendir.string() +
         "\n"
         "objectstore.backend = file\n"
         "log.level = ERROR\n"
         "slots.removable = false\n";
}

// 32 hex characters from 16 random bytes.
SecureBuffer random_pin() {
  SecureBuffer raw(16);
  if (RAND_bytes(raw.data(), static_cast<int>(raw.size())) != 1) {
    throw Error(Failure::internal, "RAND_bytes failed");
  }
  static constexpr char kDigits[] = "0123456789abcdef";
  SecureBuffer pin(raw.size() * 2);
  for (std::size_t i = 0; i < raw.size(); ++i) {
    pin.data()[2 * i] = static_cast<std::uint8_t>(kDigits[raw.data()[i] >> 4]);
    pin.data()[2 * i + 1] = static_cast<std::uint8_t>(kDigits[raw.data()[i] & 0xf]);
  }
  return pin;
}

SecureBuffer with_newline(const SecureBuffer& pin) {
  SecureBuffer line(pin.size() + 1);
  std::copy(pin.data(), pin.data() + pin.size(), line.data());
  line.data()[pin.size()] = '\n';
  return line;
}

CK_SLOT_ID find_slot(CK_FUNCTION_LIST* fn, bool initialized, std::string_view label) {
  CK_ULONG count = 0;
  check(fn->C_GetSlotList(CK_TRUE, nullptr, &count), "C_GetSlotList");
  std::vector<CK_SLOT_ID> slots(count);
  check(fn->C_GetSlotList(CK_TRUE, slots.data(), &count), "C_GetSlotList");
  slots.resize(count);
  for (CK_SLOT_ID slot : slots) {
    CK_TOKEN_INFO info{};
    check(fn->C_GetTokenInfo(slot, &info), "C_GetTokenInfo");
    const bool is_initialized = (info.flags & CKF_TOKEN_INITIALIZED) != 0;
    if (is_initialized == initialized && (!initialized || token_label(info) == label)) return slot;
  }
  throw Error(Failure::unavailable,
              initialized ? "the new token's slot was not found" : "no free slot for a new token");
}

// The PKCS#11 part of the first initialization; runs in the child.
void initialize_token(const fs::path& module, const SecureBuffer& so_pin,
                      const SecureBuffer& user_pin) {
  CK_FUNCTION_LIST* fn = nullptr;
  const Library library = load_library(module, &fn);
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  CK_RV rv = fn->C_Initialize(&args);
  if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) {
    // Inherited from a parent that had loaded the module: start over so the
    // staging configuration is read.
    fn->C_Finalize(nullptr);
    rv = fn->C_Initialize(&args);
  }
  check(rv, "C_Initialize", Failure::unavailable);

  auto label = padded_token_label(kDefaultTokenLabel);
  auto* so = const_cast<CK_UTF8CHAR*>(so_pin.data());
  auto* user = const_cast<CK_UTF8CHAR*>(user_pin.data());
  check(fn->C_InitToken(find_slot(fn, false, ""), so, so_pin.size(), label.data()), "C_InitToken");
  const CK_SLOT_ID slot = find_slot(fn, true, kDefaultTokenLabel);

  CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
  check(fn->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &session),
        "C_OpenSession");
  check(fn->C_Login(session, CKU_SO, so, so_pin.size()), "C_Login(SO)");
  check(fn->C_InitPIN(session, user, user_pin.size()), "C_InitPIN");
  check(fn->C_Logout(session), "C_Logout");
  check(fn->C_Login(session, CKU_USER, user, user_pin.size()), "C_Login");
  generate_kek_in(fn, session);
  check(fn->C_Logout(session), "C_Logout");
  check(fn->C_CloseSession(session), "C_CloseSession");
  check(fn->C_Finalize(nullptr), "C_Finalize");
}

// Runs initialize_token() in a child process with `conf` as SOFTHSM2_CONF,
// so this process never loads the module with the staging configuration.
void initialize_in_child(const fs::path& conf, const fs::path& module, const SecureBuffer& so_pin,
                         const SecureBuffer& user_pin) {
  std::array<int, 2> pipe_fds{};
  if (::pipe2(pipe_fds.data(), O_CLOEXEC) != 0) {
    throw Error(Failure::unavailable, "pipe for the token-initialization child failed");
  }
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(pipe_fds[0]);
    ::close(pipe_fds[1]);
    throw Error(Failure::unavailable, "fork for the token-initialization child failed");
  }
  if (pid == 0) {
    ::close(pipe_fds[0]);
    int status = 0;
    try {
      ::setenv("SOFTHSM2_CONF", conf.c_str(), 1);
      initialize_token(module, so_pin, user_pin);
    } catch (const std::exception& error) {
      const std::string message = error.what();
      (void)!::write(pipe_fds[1], message.data(), message.size());
      status = 1;
    } catch (...) {
      status = 2;
    }
    ::_exit(status);
  }

  ::close(pipe_fds[1]);
  std::string message;
  char chunk[256];
  for (;;) {
    const ssize_t n = ::read(pipe_fds[0], chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    message.append(chunk, static_cast<std::size_t>(n));
  }
  ::close(pipe_fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw Error(Failure::unavailable, "waitpid for the token child failed");
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw Error(Failure::unavailable,
                "creating the embedded token with " + module.string() +
                    " failed: " + (message.empty() ? std::string("child process died") : message));
  }
}

}  // namespace

void create_embedded_token(const fs::path& staging_dir, const fs::path& final_dir,
                           const fs::path& module) {
  std::error_code error;
  fs::create_directories(staging_dir / EmbeddedLayout::tokens, error);
  if (error) io_failed("create", staging_dir / EmbeddedLayout::tokens);
  fs::permissions(staging_dir, fs::perms::owner_all, error);
  fs::permissions(staging_dir / EmbeddedLayout::tokens, fs::perms::owner_all, error);

  const SecureBuffer user_pin = random_pin();
  const SecureBuffer so_pin = random_pin();
  const fs::path staging_conf = staging_dir / "softhsm2-staging.conf";
  write_text_file(staging_conf, softhsm_conf(fs::absolute(staging_dir / EmbeddedLayout::tokens)));
  try {
    initialize_in_child(staging_conf, module, so_pin, user_pin);
  } catch (...) {
    fs::remove(staging_conf, error);
    throw;
  }
  fs::remove(staging_conf, error);

  write_private_file(staging_dir / EmbeddedLayout::user_pin, with_newline(user_pin).span());
  write_private_file(staging_dir / EmbeddedLayout::so_pin, with_newline(so_pin).span());
  write_text_file(staging_dir / EmbeddedLayout::conf,
                  softhsm_conf(fs::absolute(final_dir / EmbeddedLayout::tokens)));
  sync_directory(staging_dir / EmbeddedLayout::tokens);
  sync_directory(staging_dir);
}

Config embedded_config(const fs::path& state_dir) {
  Config config;
  config.pin_file = state_dir / EmbeddedLayout::user_pin;
  config.softhsm2_conf = state_dir / EmbeddedLayout::conf;
  return config;
}

}  // namespace m2mvault::hsm::pkcs11
