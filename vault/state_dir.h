// The daemon's state directory: catalog, embedded token, PIN files, lock;
// with the tpm2 backend, its audit key file instead of a token.
//
// First initialization happens in a staging directory beside it that is
// renamed into place, so a crash during it leaves nothing half-made (a stale
// staging directory is removed by the next attempt). An initialized directory
// carries the marker file `m2mvault-state`; one made for the tpm2 backend also
// the file `backend` saying so (its keys are blobs of one TPM, useless to
// PKCS#11 and the reverse), and a start with the other backend is refused.
#pragma once

#include <filesystem>

#include "hsm/pkcs11/pkcs11_backend.h"
#include "hsm/tpm2/tpm2_backend.h"
#include "vault/config.h"

namespace m2mvault::vault {

class StateDir {
 public:
  // Initializes the directory if it is absent or empty, then takes an
  // exclusive lock on it for the life of this object. Throws Error:
  // conflict when another daemon holds the lock; invalid_argument when the
  // directory is not empty but holds no m2mvault state, or holds the keys of
  // the other backend;
  // backend_unavailable when the token cannot be created.
  explicit StateDir(const Config& config);
  ~StateDir();
  StateDir(const StateDir&) = delete;
  StateDir& operator=(const StateDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path catalog_path() const { return path_ / "catalog.db"; }
  hsm::pkcs11::Config pkcs11_config() const { return pkcs11_; }
  hsm::tpm2::BackendConfig tpm2_config() const { return tpm2_; }
  // True when this object initialized the directory.
  bool initialized_now() const { return initialized_now_; }

 private:
  std::filesystem::path path_;
  hsm::pkcs11::Config pkcs11_;
  hsm::tpm2::BackendConfig tpm2_;
  bool initialized_now_ = false;
  int lock_fd_ = -1;
};

inline constexpr const char* kStateMarker = "m2mvault-state";
inline constexpr const char* kBackendMarker = "backend";

}  // namespace m2mvault::vault
