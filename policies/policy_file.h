// The policy file (docs/POLICY.md): TOML rules that give principals grants
// on keys, and the limits the daemon applies per principal.
//
// Default deny. Root and the daemon's own uid are administrators: they hold
// every grant on every key, and no file can change that. Anyone else is
// allowed a request iff some rule matches the principal, lists the grant
// and, for a key-scoped request, matches the key's name or oneM2M
// identifier and its kind.
//
// A PolicyFile is immutable once loaded; its const members are safe to call
// from any number of threads. Reloading means loading a new one.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace m2mvault::policies {

// The closed set of grants a rule can list, spelled in files as to_string().
enum class PolicyGrant {
  key_read,
  key_create,
  key_delete,
  sign,
  psk_release,
  derive,
  handshake,
  audit_read,
  policy_admin,
};

// "key.read", "psk.release", "audit.read", ...
std::string_view to_string(PolicyGrant grant);

// The grant a file spells `text`; nullopt for anything outside the set.
std::optional<PolicyGrant> parse_grant(std::string_view text);

// What the policy needs to know about a key to scope a grant to it.
struct KeyFacts {
  std::string name;                       // the vault's local name
  std::optional<std::string> identifier;  // oneM2M identifier (KeId, KcId, ...), if any
  std::string kind;  // "kpsa" | "kpm" | "ke" | "km" | "kc" | "e2e" | "usage" | "signing"
};

// The peer of a connection, from SO_PEERCRED and its supplementary groups.
struct Principal {
  uid_t uid;
  gid_t gid;
  std::vector<gid_t> groups;
};

// The [limits] table. Zero means unlimited where noted.
struct Limits {
  double requests_per_second = 0;  // per uid, token bucket; 0 = unlimited
  double burst = 0;  // bucket size; when unset and a rate is set, max(1, requests_per_second)
  std::size_t connections_per_principal = 0;  // 0 = unlimited
  std::size_t denial_flood_threshold = 50;    // denials per window per uid before coalescing
  std::chrono::seconds denial_flood_window{10};
};

struct PolicyDecision {
  bool allowed;
  // One line naming the uid, the grant, the key (if any) and the rule that
  // allowed it, or "no rule grants ... (default deny)". Never a secret.
  std::string reason;
};

class PolicyFile {
 public:
  // Reads and parses `file`. Throws Error(invalid_argument) "<file>:<line>:
  // <what>" for bad TOML, unknown keys, wrong types, unknown grants or kinds,
  // unknown user or group names, and rules that grant nothing or name no
  // principal; "<file>: <what>" when the file cannot be read, is not a
  // regular file, is owned by someone other than root or `daemon_uid`, or is
  // writable by group or others (whoever can write it can grant themselves
  // anything).
  static PolicyFile load(const std::filesystem::path& file, uid_t daemon_uid);

  // Parses `text` as if read from `source_name` (used in messages), without
  // the file ownership checks of load().
  static PolicyFile parse(std::string_view text, const std::string& source_name, uid_t daemon_uid);

  // The policy with no file: administrators only, default limits.
  static PolicyFile defaults(uid_t daemon_uid);

  // Root or the daemon uid.
  bool is_administrator(const Principal& p) const { return p.uid == 0 || p.uid == daemon_uid_; }

  // Decides one request. `key` is the key the request acts on, or nullptr
  // for an operation that is not key-scoped (status, key.list, audit.read,
  // policy.admin, ...), which then needs only the grant.
  PolicyDecision authorize(const Principal& p, PolicyGrant grant, const KeyFacts* key) const;

  // For key.list filtering: whether `p` may key.read `key`.
  bool may_read_key(const Principal& p, const KeyFacts& key) const;

  const Limits& limits() const { return limits_; }

  // One line for logs: where the policy came from, how many rules, limits.
  std::string describe() const;

 private:
  struct KeyGlob {
    std::string name_pattern;        // as written: matched case-sensitively
    std::string identifier_pattern;  // FQDN part (after the last '@') lowercased
  };
  struct Rule {
    std::string name;
    std::vector<uid_t> uids;  // from uids and users
    std::vector<gid_t> gids;  // from gids and groups
    std::vector<PolicyGrant> grants;
    std::vector<KeyGlob> keys;       // never empty: ["*"] by default
    std::vector<std::string> kinds;  // empty: every kind
  };

  struct Parser;  // the TOML reading, in the .cpp

  explicit PolicyFile(uid_t daemon_uid) : daemon_uid_(daemon_uid) {}

  static bool matches_principal(const Rule& rule, const Principal& p);
  static bool matches_key(const Rule& rule, const KeyFacts& key);

  uid_t daemon_uid_;
  std::string source_;  // file name, or empty for defaults()
  std::vector<Rule> rules_;
  Limits limits_;
};

}  // namespace m2mvault::policies
