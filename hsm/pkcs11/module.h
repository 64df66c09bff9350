// A PKCS#11 module loaded into the process: the dlopen handle, its function
// list, and the slot lookup by token label.
#pragma once

#include <dlfcn.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string_view>

#include "hsm/pkcs11/ck.h"

namespace m2mvault::hsm::pkcs11 {

struct LibraryCloser {
  void operator()(void* handle) const noexcept { dlclose(handle); }
};
using Library = std::unique_ptr<void, LibraryCloser>;

// dlopens `path` and returns its function list through `functions`.
// Throws Error(unavailable) naming the path when either step fails.
Library load_library(const std::filesystem::path& path, CK_FUNCTION_LIST** functions);

// C_Initialize with CKF_OS_LOCKING_OK; CKR_CRYPTOKI_ALREADY_INITIALIZED counts
// as success (libp11 and the tests share the module).
CK_RV initialize(CK_FUNCTION_LIST* functions);

class Module {
 public:
  // The process-wide instance of the module at `path`, loaded and initialized
  // on first use. It is never finalized or unloaded while the process runs:
  // libp11 shares it, and C_Finalize would end every session of the process.
  static std::shared_ptr<Module> shared(const std::filesystem::path& path);

  CK_FUNCTION_LIST* fn() const noexcept { return functions_; }
  const std::filesystem::path& path() const noexcept { return path_; }

  // The slot whose initialized token carries `label`, if any.
  std::optional<CK_SLOT_ID> find_token(std::string_view label) const;
  CK_TOKEN_INFO token_info(CK_SLOT_ID slot) const;

  Module(std::filesystem::path path, CK_FUNCTION_LIST* functions)
      : path_(std::move(path)), functions_(functions) {}

 private:
  std::filesystem::path path_;
  CK_FUNCTION_LIST* functions_;
};

}  // namespace m2mvault::hsm::pkcs11
