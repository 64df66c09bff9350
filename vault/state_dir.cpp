#include "vault/state_dir.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>
#include <system_error>

#include "api/error.h"
#include "vault/catalog.h"

namespace fs = std::filesystem;

namespace m2mvault::vault {
namespace {

void fsync_path(const fs::path& p) {
  int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

void write_file_synced(const fs::path& p, std::string_view content) {
  int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    throw Error(ErrorCode::internal,
                fmt::format("cannot create {}: {}", p.string(), std::strerror(errno)));
  }
  bool ok = ::write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size());
  ok = ok && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok) throw Error(ErrorCode::internal, fmt::format("cannot write {}", p.string()));
}

// The backend whose keys `state` holds: the first line of its `backend`
// file, "pkcs11" without one (directories made before the TPM backend).
std::string backend_of(const fs::path& state) {
  std::ifstream in(state / kBackendMarker);
  std::string line;
  if (!in || !std::getline(in, line) || line.empty()) return "pkcs11";
  return line;
}

bool empty_or_absent(const fs::path& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) return true;
  return fs::is_directory(dir, ec) && fs::is_empty(dir, ec);
}

hsm::pkcs11::Config external_config(const Config& config) {
  hsm::pkcs11::Config c;
  c.module = config.pkcs11.module;
  c.token_label = config.pkcs11.token_label;
  c.pin_file = config.pkcs11.pin_file;
  return c;
}

void initialize(const Config& config, const fs::path& state, const hsm::pkcs11::Config& external) {
  const fs::path parent = state.parent_path();
  fs::create_directories(parent);
  const std::string prefix = "." + state.filename().string() + ".staging-";
  for (const auto& entry : fs::directory_iterator(parent)) {
    if (entry.path().filename().string().starts_with(prefix)) {
      spdlog::warn("removing {} left by an interrupted initialization", entry.path().string());
      fs::remove_all(entry.path());
    }
  }
  const fs::path staging = parent / (prefix + std::to_string(::getpid()));
  if (::mkdir(staging.c_str(), 0700) != 0) {
    throw Error(ErrorCode::internal,
                fmt::format("cannot create {}: {}", staging.string(), std::strerror(errno)));
  }
  try {
    if (config.tpm()) {
      // The TPM needs nothing made ahead: the backend creates its audit key.
      write_file_synced(staging / kBackendMarker, "tpm2\n");
    } else if (config.embedded()) {
      hsm::pkcs11::create_embedded_token(staging, state);
    } else {
      hsm::pkcs11::ensure_kek(external);
    }
    Catalog::open(staging / "catalog.db").reset();
    write_file_synced(staging / kStateMarker, "m2mvault state directory, format 1\n");
    fsync_path(staging);
  } catch (const hsm::Error& e) {
    fs::remove_all(staging);
    throw Error(ErrorCode::backend_unavailable, e.what());
  } catch (...) {
    fs::remove_all(staging);
    throw;
  }
  // rename(2) replaces an empty directory atomically.
  if (::rename(staging.c_str(), state.c_str()) != 0) {
    int err = errno;
    fs::remove_all(staging);
    throw Error(ErrorCode::internal, fmt::format("cannot move the new state into {}: {}",
                                                 state.string(), std::strerror(err)));
  }
  fsync_path(parent);
}

}  // namespace

StateDir::StateDir(const Config& config) {
  if (config.state_dir.empty()) {
    throw Error(ErrorCode::invalid_argument, "no state directory given (--state-dir)");
  }
  path_ = fs::absolute(config.state_dir).lexically_normal();
  if (path_.filename().empty()) path_ = path_.parent_path();  // trailing slash
  if (!fs::exists(path_ / kStateMarker)) {
    if (!empty_or_absent(path_)) {
      throw Error(ErrorCode::invalid_argument,
                  fmt::format("state directory {} is not empty and holds no m2mvault state; "
                              "refusing to touch it",
                              path_.string()));
    }
    spdlog::info("initializing state directory {}", path_.string());
    initialize(config, path_, external_config(config));
    initialized_now_ = true;
  }
  const fs::path lock = path_ / "lock";
  lock_fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd_ < 0 || ::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    if (lock_fd_ >= 0) ::close(lock_fd_);
    throw Error(ErrorCode::conflict,
                fmt::format("another m2mvaultd is using state directory {}", path_.string()));
  }
  if (const std::string made_for = backend_of(path_); made_for != config.backend) {
    ::close(lock_fd_);
    throw Error(ErrorCode::invalid_argument,
                fmt::format("state directory {} holds the keys of backend {}, not {}: its keys "
                            "cannot move between backends",
                            path_.string(), made_for, config.backend));
  }
  tpm2_.state_dir = path_;
  tpm2_.tpm.tcti = config.tcti.empty() ? hsm::tpm2::kDefaultTcti : config.tcti;
  tpm2_.tpm.password_auth_for_signing = config.tpm2.password_auth_for_signing;
  tpm2_.tpm.max_loaded_objects = config.tpm2.max_loaded_objects;
  static_assert(Tpm2Settings{}.audit_nv_index == hsm::tpm2::kDefaultAuditNvIndex);
  tpm2_.audit_nv_index = config.tpm2.audit_nv_index;
  if (config.embedded()) {
    pkcs11_ = hsm::pkcs11::embedded_config(path_);
  } else {
    pkcs11_ = external_config(config);
  }
  pkcs11_.sessions = config.pkcs11.sessions;
  pkcs11_.unwrap_cache = config.pkcs11.unwrap_cache;
}

StateDir::~StateDir() {
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

}  // namespace m2mvault::vault
