// The PKCS#11 backend: any module; SoftHSM2 is the embedded default.
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>
#include <string>

#include "hsm/secure_element.h"

namespace m2mvault::hsm::pkcs11 {

inline constexpr const char* kDefaultSoftHsmModule = "/usr/lib/softhsm/libsofthsm2.so";
inline constexpr const char* kDefaultTokenLabel = "m2mvault";
// CKA_LABEL of the vault's objects. Reconciliation only ever touches kKeyLabel.
inline constexpr const char* kKekLabel = "m2mvault-kek";
inline constexpr const char* kKeyLabel = "m2mvault-key";
inline constexpr const char* kAuditKeyLabel = "m2mvault-audit";
inline constexpr const char* kAuditCheckpointLabel = "m2mvault-audit-checkpoint";

struct Config {
  std::filesystem::path module = kDefaultSoftHsmModule;
  std::string token_label = kDefaultTokenLabel;
  std::filesystem::path pin_file;       // user PIN, first line
  std::filesystem::path softhsm2_conf;  // if set, exported as SOFTHSM2_CONF before loading
  std::size_t sessions = 8;             // session pool size
  std::size_t unwrap_cache = 4096;      // unwrapped session objects kept
};

// Opens the token and checks its KEK exists. Throws Error(unavailable) with a
// message naming what is wrong (module not loadable, no token with that label,
// PIN rejected, KEK missing) and changes nothing in the token.
std::unique_ptr<SecureElement> open(const Config& config);

// Files of the embedded SoftHSM2 token, relative to the state directory.
struct EmbeddedLayout {
  static constexpr const char* conf = "softhsm2.conf";
  static constexpr const char* tokens = "tokens";
  static constexpr const char* user_pin = "user-pin";
  static constexpr const char* so_pin = "so-pin";
};

// First initialization of the embedded default: in `staging_dir`, creates a
// SoftHSM2 token labelled kDefaultTokenLabel with random user and SO PINs
// (files mode 0600) and the token's KEK. The conf file written points at
// `final_dir`/tokens, where the caller renames the staging directory. Runs
// the PKCS#11 work in a child process, so the calling process never loads the
// module with the staging configuration.
void create_embedded_token(const std::filesystem::path& staging_dir,
                           const std::filesystem::path& final_dir,
                           const std::filesystem::path& module = kDefaultSoftHsmModule);

// First initialization against an external token: creates the KEK if the
// token has none. Throws Error(unavailable) when the token cannot be opened.
void ensure_kek(const Config& config);

// The Config that opens the embedded token of `state_dir`.
Config embedded_config(const std::filesystem::path& state_dir);

}  // namespace m2mvault::hsm::pkcs11
