// m2mvaultd configuration (TOML). Defaults need no file: the embedded
// SoftHSM2 token in the state directory and the default socket path.
// docs/CONFIGURATION.md documents every key.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>

#include "vault/identifiers.h"

namespace m2mvault::vault {

struct Pkcs11Settings {
  // Empty module: the embedded SoftHSM2 token the daemon creates itself.
  std::filesystem::path module;
  std::string token_label = "m2mvault";
  std::filesystem::path pin_file;
  std::size_t sessions = 8;
  std::size_t unwrap_cache = 4096;
};

// The TPM 2.0 backend (docs/TPM2.md): `tcti` is a top-level key beside
// `backend`; these tune it.
struct Tpm2Settings {
  // TPM2_Sign authorized by the key's auth value sent as a password instead
  // of through the signing HMAC session: the auth value then crosses the TPM
  // interface in the clear (never the key). The session now signs about as
  // fast (docs/TPM2.md); kept for comparison and as a fallback. Off by default.
  bool password_auth_for_signing = false;
  // Objects kept loaded besides the primary; 0: what the TPM guarantees.
  std::size_t max_loaded_objects = 0;
  // The audit checkpoint's NV record index (its counter is the next handle),
  // in the owner range 0x01800000..0x01BFFFFF; hsm::tpm2::kDefaultAuditNvIndex.
  std::uint32_t audit_nv_index = 0x01834D30;
};

// The TLS handshakes the daemon runs (TS-0003 10.3.1; docs/HANDSHAKES.md).
struct HandshakeSettings {
  // An unfinished handshake expires this long after it started ...
  std::chrono::seconds timeout{60};
  // ... and a principal may hold at most this many at once.
  std::size_t per_principal = 8;
  // Lifetimes of exported keys when the request gives no expiry; never past
  // the expiry of the key the handshake authenticated with.
  std::chrono::seconds ke_lifetime{std::chrono::days(365)};
  std::chrono::seconds kc_lifetime{std::chrono::days(30)};
  std::chrono::seconds e2e_lifetime{std::chrono::days(30)};
  // OpenSSL cipher lists when a request names none (TS-0003 10.2.2 / 10.2.3).
  std::string psk_ciphers = "PSK-AES128-CBC-SHA256";
  std::string certificate_ciphers = "ECDHE-ECDSA-AES128-SHA256";
  // RFC 7627 5.4: refuse to export keys from a handshake without the
  // extended master secret. Off only for peers too old to offer it.
  bool require_extended_master_secret = true;
};

// The audit log (policies/audit_log.h, docs/THREAT-MODEL.md).
struct AuditSettings {
  bool enabled = true;              // false only to measure what auditing costs
  std::filesystem::path directory;  // default: <state_dir>/audit
  std::filesystem::path file;       // a fixed file instead (no rotation), e.g. for a test
  std::chrono::milliseconds sync_interval{100};
  std::size_t checkpoint_every = 1000;
  std::size_t rotate_bytes = std::size_t{64} << 20;
  std::size_t free_space_reserve_bytes = std::size_t{64} << 20;
};

struct Config {
  std::filesystem::path state_dir;
  std::filesystem::path socket;    // default: api::kDefaultSocketPath
  std::string backend = "pkcs11";  // "pkcs11" or "tpm2"
  std::string tcti;                // tpm2: empty means "device:/dev/tpmrm0"
  std::string log_level = "info";
  std::filesystem::path log_file;  // empty: stderr only
  std::size_t threads = 8;
  std::size_t max_connections = 512;
  std::chrono::milliseconds frame_timeout{10'000};
  std::chrono::milliseconds idle_timeout{std::chrono::minutes(10)};
  Pkcs11Settings pkcs11;
  Tpm2Settings tpm2;
  HandshakeSettings handshake;
  AuditSettings audit;
  // The policy file (docs/POLICY.md); empty: administrators only.
  std::filesystem::path policy_file;
  // encode() of KeId/KcId per MEF/MAF FQDN (lowercased); base64 when absent.
  std::map<std::string, IdFormat> id_formats;

  bool tpm() const { return backend == "tpm2"; }
  // The embedded SoftHSM2 token: the pkcs11 backend without a module.
  bool embedded() const { return !tpm() && pkcs11.module.empty(); }
  IdFormat id_format_for(std::string_view fqdn) const;
};

// Reads `file` (if given) over the defaults. Throws Error(invalid_argument)
// naming the file, line and key on a parse error or an unknown key.
Config load_config(const std::optional<std::filesystem::path>& file);

// Checks the backend choice once the command line has overridden the file:
// a known backend, and no TCTI for pkcs11. Throws Error(invalid_argument).
void check_backend(const Config& config);

}  // namespace m2mvault::vault
