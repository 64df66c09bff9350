#include "vault/config.h"

#include <fmt/format.h>
#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <set>
#include <string_view>

#include "api/client.h"
#include "api/error.h"

namespace m2mvault::vault {
namespace {

[[noreturn]] void bad(const std::filesystem::path& file, const toml::node& node,
                      std::string_view what) {
  const auto& src = node.source();
  throw Error(ErrorCode::invalid_argument,
              fmt::format("{}:{}: {}", file.string(), src.begin.line, what));
}

// Rejects keys the daemon does not know, so a typo is not silently ignored.
void check_keys(const std::filesystem::path& file, const toml::table& table,
                const std::set<std::string_view>& allowed, std::string_view section) {
  for (const auto& [key, node] : table) {
    if (!allowed.contains(key.str())) {
      bad(file, node, fmt::format("unknown key '{}{}'", section, key.str()));
    }
  }
}

template <typename T>
void read(const std::filesystem::path& file, const toml::table& table, std::string_view key,
          T& out) {
  const toml::node* node = table.get(key);
  if (!node) return;
  if constexpr (std::is_same_v<T, std::string> || std::is_same_v<T, std::filesystem::path>) {
    auto v = node->value<std::string>();
    if (!v) bad(file, *node, fmt::format("'{}' must be a string", key));
    out = *v;
  } else if constexpr (std::is_same_v<T, std::size_t>) {
    auto v = node->value<std::int64_t>();
    if (!v || *v <= 0) bad(file, *node, fmt::format("'{}' must be a positive integer", key));
    out = static_cast<std::size_t>(*v);
  } else if constexpr (std::is_same_v<T, std::chrono::milliseconds>) {
    auto v = node->value<std::int64_t>();
    if (!v || *v <= 0) bad(file, *node, fmt::format("'{}' must be a positive integer", key));
    out = std::chrono::milliseconds(*v);
  } else if constexpr (std::is_same_v<T, bool>) {
    const auto* v = node->as_boolean();  // strict: value<bool>() would take 1
    if (!v) bad(file, *node, fmt::format("'{}' must be true or false", key));
    out = v->get();
  } else if constexpr (std::is_same_v<T, std::chrono::seconds>) {
    auto v = node->value<std::int64_t>();
    if (!v || *v <= 0) bad(file, *node, fmt::format("'{}' must be a positive integer", key));
    out = std::chrono::seconds(*v);
  }
}

// The table `name` of `root` with only `allowed` keys, or nullptr when absent.
const toml::table* section(const std::filesystem::path& file, const toml::table& root,
                           std::string_view name, const std::set<std::string_view>& allowed) {
  const toml::node* node = root.get(name);
  if (!node) return nullptr;
  const toml::table* table = node->as_table();
  if (!table) bad(file, *node, fmt::format("'{}' must be a table", name));
  check_keys(file, *table, allowed, fmt::format("{}.", name));
  return table;
}

}  // namespace

Config load_config(const std::optional<std::filesystem::path>& file) {
  Config config;
  config.socket = api::kDefaultSocketPath;
  if (!file) return config;

  toml::table root;
  try {
    root = toml::parse_file(file->string());
  } catch (const toml::parse_error& e) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("{}:{}: {}", file->string(), e.source().begin.line, e.description()));
  }
  check_keys(*file, root,
             {"state_dir", "socket", "backend", "tcti", "log_level", "log_file", "threads",
              "max_connections", "frame_timeout_ms", "idle_timeout_ms", "pkcs11", "tpm2",
              "id_format", "handshake", "audit", "policy_file"},
             "");
  read(*file, root, "state_dir", config.state_dir);
  read(*file, root, "socket", config.socket);
  read(*file, root, "backend", config.backend);
  read(*file, root, "tcti", config.tcti);
  read(*file, root, "log_level", config.log_level);
  read(*file, root, "log_file", config.log_file);
  read(*file, root, "threads", config.threads);
  read(*file, root, "max_connections", config.max_connections);
  read(*file, root, "frame_timeout_ms", config.frame_timeout);
  read(*file, root, "idle_timeout_ms", config.idle_timeout);
  read(*file, root, "policy_file", config.policy_file);
  if (const toml::table* a =
          section(*file, root, "audit",
                  {"enabled", "directory", "file", "sync_interval_ms", "checkpoint_every",
                   "rotate_bytes", "free_space_reserve_bytes"})) {
    read(*file, *a, "enabled", config.audit.enabled);
    read(*file, *a, "directory", config.audit.directory);
    read(*file, *a, "file", config.audit.file);
    read(*file, *a, "sync_interval_ms", config.audit.sync_interval);
    read(*file, *a, "checkpoint_every", config.audit.checkpoint_every);
    read(*file, *a, "rotate_bytes", config.audit.rotate_bytes);
    read(*file, *a, "free_space_reserve_bytes", config.audit.free_space_reserve_bytes);
  }
  if (config.backend != "pkcs11" && config.backend != "tpm2") {
    bad(*file, *root.get("backend"),
        fmt::format("backend '{}' is not available (supported: pkcs11, tpm2)", config.backend));
  }
  if (!config.tcti.empty() && !config.tpm()) {
    bad(*file, *root.get("tcti"), "'tcti' needs backend = \"tpm2\"");
  }
  if (const toml::table* t =
          section(*file, root, "tpm2",
                  {"password_auth_for_signing", "max_loaded_objects", "audit_nv_index"})) {
    read(*file, *t, "password_auth_for_signing", config.tpm2.password_auth_for_signing);
    read(*file, *t, "max_loaded_objects", config.tpm2.max_loaded_objects);
    if (const toml::node* node = t->get("audit_nv_index")) {
      // The record index and the counter after it, both in the owner range.
      const auto v = node->value<std::int64_t>();
      if (!v || *v < 0x01800000 || *v >= 0x01BFFFFF) {
        bad(*file, *node,
            "'audit_nv_index' must be an NV index in the owner range, 0x01800000..0x01BFFFFE "
            "(its counter takes the next one)");
      }
      config.tpm2.audit_nv_index = static_cast<std::uint32_t>(*v);
    }
  }
  if (const toml::table* p =
          section(*file, root, "pkcs11",
                  {"module", "token_label", "pin_file", "sessions", "unwrap_cache"})) {
    read(*file, *p, "module", config.pkcs11.module);
    read(*file, *p, "token_label", config.pkcs11.token_label);
    read(*file, *p, "pin_file", config.pkcs11.pin_file);
    read(*file, *p, "sessions", config.pkcs11.sessions);
    read(*file, *p, "unwrap_cache", config.pkcs11.unwrap_cache);
    if (!config.pkcs11.module.empty() && config.pkcs11.pin_file.empty()) {
      bad(*file, *root.get("pkcs11"), "an external PKCS#11 module needs 'pin_file'");
    }
  }
  if (const toml::table* h =
          section(*file, root, "handshake",
                  {"timeout_s", "per_principal", "ke_lifetime_s", "kc_lifetime_s", "e2e_lifetime_s",
                   "psk_ciphers", "certificate_ciphers", "require_extended_master_secret"})) {
    read(*file, *h, "timeout_s", config.handshake.timeout);
    read(*file, *h, "per_principal", config.handshake.per_principal);
    read(*file, *h, "ke_lifetime_s", config.handshake.ke_lifetime);
    read(*file, *h, "kc_lifetime_s", config.handshake.kc_lifetime);
    read(*file, *h, "e2e_lifetime_s", config.handshake.e2e_lifetime);
    read(*file, *h, "psk_ciphers", config.handshake.psk_ciphers);
    read(*file, *h, "certificate_ciphers", config.handshake.certificate_ciphers);
    read(*file, *h, "require_extended_master_secret",
         config.handshake.require_extended_master_secret);
  }
  if (const toml::node* node = root.get("id_format")) {
    const toml::table* formats = node->as_table();
    if (!formats) bad(*file, *node, "'id_format' must be a table of FQDN = \"base64\" | \"hex\"");
    for (const auto& [fqdn, value] : *formats) {
      auto text = value.value<std::string>();
      if (!is_valid_fqdn(fqdn.str()))
        bad(*file, value, fmt::format("'{}' is not an FQDN", fqdn.str()));
      if (!text || (*text != "base64" && *text != "hex")) {
        bad(*file, value,
            fmt::format("id_format for '{}' must be \"base64\" or \"hex\"", fqdn.str()));
      }
      std::string key(fqdn.str());
      std::transform(key.begin(), key.end(), key.begin(),
                     [](unsigned char c) { return std::tolower(c); });
      config.id_formats[key] = *text == "hex" ? IdFormat::hex : IdFormat::base64;
    }
  }
  return config;
}

void check_backend(const Config& config) {
  if (config.backend != "pkcs11" && config.backend != "tpm2") {
    throw Error(
        ErrorCode::invalid_argument,
        fmt::format("backend '{}' is not available (supported: pkcs11, tpm2)", config.backend));
  }
  if (!config.tcti.empty() && !config.tpm()) {
    throw Error(ErrorCode::invalid_argument, "a TCTI (--tcti) needs the tpm2 backend");
  }
}

IdFormat Config::id_format_for(std::string_view fqdn) const {
  std::string key(fqdn);
  std::transform(key.begin(), key.end(), key.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  auto it = id_formats.find(key);
  return it == id_formats.end() ? IdFormat::base64 : it->second;
}

}  // namespace m2mvault::vault
