#include "policies/policy_file.h"

#include <fmt/format.h>
#include <fnmatch.h>
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <set>
#include <type_traits>
#include <utility>
#include <vector>

#include "api/error.h"

namespace m2mvault::policies {
namespace {

struct GrantName {
  PolicyGrant grant;
  std::string_view text;
};

constexpr std::array kGrantNames{
    GrantName{PolicyGrant::key_read, "key.read"},
    GrantName{PolicyGrant::key_create, "key.create"},
    GrantName{PolicyGrant::key_delete, "key.delete"},
    GrantName{PolicyGrant::sign, "sign"},
    GrantName{PolicyGrant::psk_release, "psk.release"},
    GrantName{PolicyGrant::derive, "derive"},
    GrantName{PolicyGrant::handshake, "handshake"},
    GrantName{PolicyGrant::audit_read, "audit.read"},
    GrantName{PolicyGrant::policy_admin, "policy.admin"},
};

// The key kinds of vault::KeyKind, spelled as the catalog spells them. The
// policies layer sits below vault/, so the list is repeated here.
constexpr std::array<std::string_view, 8> kKinds{"kpsa", "kpm", "ke",    "km",
                                                 "kc",   "e2e", "usage", "signing"};

// Lowercases what follows the last '@': the FQDN of a oneM2M identifier
// (KeId = encode(RelativeKeId)@MEF-FQDN, KcId, ...), which is case-insensitive.
std::string lowercase_fqdn_part(std::string text) {
  const auto at = text.rfind('@');
  if (at == std::string::npos) return text;
  std::transform(text.begin() + static_cast<std::ptrdiff_t>(at) + 1, text.end(),
                 text.begin() + static_cast<std::ptrdiff_t>(at) + 1,
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

bool glob_matches(const std::string& pattern, const std::string& subject) {
  // No FNM_PATHNAME: base64 identifiers may contain '/', and '*' covers it.
  return ::fnmatch(pattern.c_str(), subject.c_str(), 0) == 0;
}

// Key names and identifiers come from clients; keep a reason on one line.
std::string printable(std::string_view text) {
  std::string out(text);
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  }
  return out;
}

std::string describe_key(const KeyFacts& key) {
  std::string text = fmt::format("key '{}'", printable(key.name));
  if (key.identifier) text += fmt::format(" ({})", printable(*key.identifier));
  text += fmt::format(" of kind {}", printable(key.kind));
  return text;
}

// Looks `name` up with a getpwnam_r-style function: the id, nullopt for no
// such name, or an errno in `error` when the lookup itself failed.
template <typename Entry, typename Lookup>
std::optional<unsigned> lookup_id(const std::string& name, long size_hint, Lookup lookup,
                                  int& error) {
  std::size_t size = size_hint > 0 ? static_cast<std::size_t>(size_hint) : 16384;
  error = 0;
  for (;;) {
    std::vector<char> buffer(size);
    Entry entry{};
    Entry* result = nullptr;
    const int rc = lookup(name.c_str(), &entry, buffer.data(), buffer.size(), &result);
    if (rc == ERANGE && size < (1u << 20)) {
      size *= 2;
      continue;
    }
    // Some NSS modules report a missing name as an error (getpwnam_r(3)).
    if (rc == ENOENT || rc == ESRCH) return std::nullopt;
    if (rc != 0) {
      error = rc;
      return std::nullopt;
    }
    if (!result) return std::nullopt;
    if constexpr (std::is_same_v<Entry, passwd>) {
      return result->pw_uid;
    } else {
      return result->gr_gid;
    }
  }
}

}  // namespace

std::string_view to_string(PolicyGrant grant) {
  for (const auto& entry : kGrantNames) {
    if (entry.grant == grant) return entry.text;
  }
  return "unknown";
}

std::optional<PolicyGrant> parse_grant(std::string_view text) {
  for (const auto& entry : kGrantNames) {
    if (entry.text == text) return entry.grant;
  }
  return std::nullopt;
}

// Reads the TOML tree into a PolicyFile, naming the file and line of the
// first thing it rejects.
struct PolicyFile::Parser {
  const std::string& source;
  PolicyFile& policy;

  [[noreturn]] void bad(const toml::node& node, std::string_view what) const {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("{}:{}: {}", source, node.source().begin.line, what));
  }

  // Rejects keys the daemon does not know, so a typo is not silently ignored.
  void check_keys(const toml::table& table, const std::set<std::string_view>& allowed,
                  std::string_view section) const {
    for (const auto& [key, node] : table) {
      if (!allowed.contains(key.str())) {
        bad(node, fmt::format("unknown key '{}{}'", section, key.str()));
      }
    }
  }

  double number(const toml::node& node, std::string_view key, double minimum) const {
    double value = 0;
    if (const auto* i = node.as_integer()) {
      value = static_cast<double>(i->get());
    } else if (const auto* f = node.as_floating_point()) {
      value = f->get();
    } else {
      bad(node, fmt::format("'{}' must be a number", key));
    }
    if (!std::isfinite(value) || value < minimum) {
      bad(node, fmt::format("'{}' must be a number of at least {}", key, minimum));
    }
    return value;
  }

  std::int64_t integer(const toml::node& node, std::string_view key, std::int64_t minimum) const {
    const auto* i = node.as_integer();
    if (!i || i->get() < minimum) {
      bad(node, fmt::format("'{}' must be an integer of at least {}", key, minimum));
    }
    return i->get();
  }

  // A non-empty array of elements `read_element` accepts.
  template <typename Read>
  void array(const toml::table& table, std::string_view key, Read read_element) const {
    const toml::node* node = table.get(key);
    if (!node) return;
    const toml::array* items = node->as_array();
    if (!items) bad(*node, fmt::format("'{}' must be an array", key));
    if (items->empty()) bad(*node, fmt::format("'{}' must not be empty", key));
    for (const toml::node& item : *items) read_element(item);
  }

  std::string string(const toml::node& node, std::string_view key) const {
    const auto* s = node.as_string();
    if (!s || s->get().empty()) bad(node, fmt::format("'{}' must hold non-empty strings", key));
    return s->get();
  }

  unsigned id(const toml::node& node, std::string_view key) const {
    const auto* i = node.as_integer();
    // (uid_t)-1 and (gid_t)-1 mean "no id" to the kernel; never a principal.
    constexpr auto kMax = static_cast<std::int64_t>(std::numeric_limits<uid_t>::max()) - 1;
    if (!i || i->get() < 0 || i->get() > kMax) {
      bad(node, fmt::format("'{}' must hold ids from 0 to {}", key, kMax));
    }
    return static_cast<unsigned>(i->get());
  }

  void read_limits(const toml::node& node) const {
    const toml::table* table = node.as_table();
    if (!table) bad(node, "'limits' must be a table");
    check_keys(*table,
               {"requests_per_second", "burst", "connections_per_principal",
                "denial_flood_threshold", "denial_flood_window_s"},
               "limits.");
    Limits& limits = policy.limits_;
    if (const auto* n = table->get("requests_per_second")) {
      limits.requests_per_second = number(*n, "requests_per_second", 0);
    }
    if (const auto* n = table->get("burst")) {
      limits.burst = number(*n, "burst", 1);
    } else if (limits.requests_per_second > 0) {
      limits.burst = std::max(1.0, limits.requests_per_second);
    }
    if (const auto* n = table->get("connections_per_principal")) {
      limits.connections_per_principal =
          static_cast<std::size_t>(integer(*n, "connections_per_principal", 0));
    }
    if (const auto* n = table->get("denial_flood_threshold")) {
      limits.denial_flood_threshold =
          static_cast<std::size_t>(integer(*n, "denial_flood_threshold", 1));
    }
    if (const auto* n = table->get("denial_flood_window_s")) {
      limits.denial_flood_window = std::chrono::seconds(integer(*n, "denial_flood_window_s", 1));
    }
  }

  Rule read_rule(const toml::node& node, std::size_t index, std::set<std::string>& names) const {
    const toml::table* table = node.as_table();
    if (!table) bad(node, "'rule' must be an array of tables: write [[rule]]");
    check_keys(*table, {"name", "uids", "gids", "users", "groups", "grants", "keys", "kinds"},
               "rule.");
    Rule rule;
    if (const auto* n = table->get("name")) {
      rule.name = string(*n, "name");
      if (!names.insert(rule.name).second) {
        bad(*n, fmt::format("another rule is already named '{}'", rule.name));
      }
    } else {
      rule.name = fmt::format("#{}", index + 1);
    }
    const std::string& name = rule.name;

    array(*table, "uids", [&](const toml::node& item) { rule.uids.push_back(id(item, "uids")); });
    array(*table, "gids", [&](const toml::node& item) { rule.gids.push_back(id(item, "gids")); });
    array(*table, "users", [&](const toml::node& item) {
      const std::string user = string(item, "users");
      int error = 0;
      auto uid = lookup_id<passwd>(user, ::sysconf(_SC_GETPW_R_SIZE_MAX), ::getpwnam_r, error);
      if (error) bad(item, fmt::format("cannot look up user '{}': {}", user, std::strerror(error)));
      if (!uid) bad(item, fmt::format("rule '{}': unknown user '{}'", name, user));
      rule.uids.push_back(*uid);
    });
    array(*table, "groups", [&](const toml::node& item) {
      const std::string group_name = string(item, "groups");
      int error = 0;
      auto gid = lookup_id<group>(group_name, ::sysconf(_SC_GETGR_R_SIZE_MAX), ::getgrnam_r, error);
      if (error) {
        bad(item, fmt::format("cannot look up group '{}': {}", group_name, std::strerror(error)));
      }
      if (!gid) bad(item, fmt::format("rule '{}': unknown group '{}'", name, group_name));
      rule.gids.push_back(*gid);
    });
    if (rule.uids.empty() && rule.gids.empty()) {
      bad(node, fmt::format("rule '{}' names no principal (uids, gids, users or groups)", name));
    }

    array(*table, "grants", [&](const toml::node& item) {
      const std::string text = string(item, "grants");
      auto grant = parse_grant(text);
      if (!grant) {
        bad(item, fmt::format("rule '{}': unknown grant '{}' (expected key.read, key.create, "
                              "key.delete, sign, psk.release, derive, handshake, audit.read or "
                              "policy.admin)",
                              name, text));
      }
      if (std::find(rule.grants.begin(), rule.grants.end(), *grant) == rule.grants.end()) {
        rule.grants.push_back(*grant);
      }
    });
    if (rule.grants.empty()) bad(node, fmt::format("rule '{}' grants nothing", name));

    array(*table, "keys", [&](const toml::node& item) {
      std::string pattern = string(item, "keys");
      rule.keys.push_back({pattern, lowercase_fqdn_part(pattern)});
    });
    if (rule.keys.empty()) rule.keys.push_back({"*", "*"});

    array(*table, "kinds", [&](const toml::node& item) {
      const std::string kind = string(item, "kinds");
      if (std::find(kKinds.begin(), kKinds.end(), kind) == kKinds.end()) {
        bad(item, fmt::format("rule '{}': unknown key kind '{}' (expected kpsa, kpm, ke, km, kc, "
                              "e2e, usage or signing)",
                              name, kind));
      }
      rule.kinds.push_back(kind);
    });
    return rule;
  }

  void read(const toml::table& root) const {
    check_keys(root, {"limits", "rule"}, "");
    if (const toml::node* node = root.get("limits")) read_limits(*node);
    const toml::node* node = root.get("rule");
    if (!node) return;
    const toml::array* rules = node->as_array();
    if (!rules) bad(*node, "'rule' must be an array of tables: write [[rule]]");
    std::set<std::string> names;
    for (std::size_t i = 0; i < rules->size(); ++i) {
      policy.rules_.push_back(read_rule(*rules->get(i), i, names));
    }
  }
};

PolicyFile PolicyFile::parse(std::string_view text, const std::string& source_name,
                             uid_t daemon_uid) {
  toml::table root;
  try {
    root = toml::parse(text, source_name);
  } catch (const toml::parse_error& e) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("{}:{}: {}", source_name, e.source().begin.line, e.description()));
  }
  PolicyFile policy(daemon_uid);
  policy.source_ = source_name;
  Parser{source_name, policy}.read(root);
  return policy;
}

PolicyFile PolicyFile::load(const std::filesystem::path& file, uid_t daemon_uid) {
  const std::string name = file.string();
  auto fail = [&](std::string_view what) {
    return Error(ErrorCode::invalid_argument, fmt::format("{}: {}", name, what));
  };
  std::unique_ptr<std::FILE, decltype(&std::fclose)> stream(std::fopen(name.c_str(), "re"),
                                                            &std::fclose);
  if (!stream) throw fail(fmt::format("cannot open policy file: {}", std::strerror(errno)));
  // Checked on the open file, so what is checked is what is read.
  struct stat st {};
  if (::fstat(::fileno(stream.get()), &st) != 0) {
    throw fail(fmt::format("cannot stat policy file: {}", std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode)) throw fail("policy file is not a regular file");
  if (st.st_uid != 0 && st.st_uid != daemon_uid) {
    throw fail(fmt::format("policy file is owned by uid {}, not root or the daemon (uid {})",
                           st.st_uid, daemon_uid));
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    throw fail("policy file is writable by group or others (chmod go-w)");
  }
  std::string text;
  std::array<char, 8192> chunk;
  std::size_t n = 0;
  while ((n = std::fread(chunk.data(), 1, chunk.size(), stream.get())) > 0)
    text.append(chunk.data(), n);
  if (std::ferror(stream.get())) throw fail("cannot read policy file");
  return parse(text, name, daemon_uid);
}

PolicyFile PolicyFile::defaults(uid_t daemon_uid) {
  return PolicyFile(daemon_uid);
}

bool PolicyFile::matches_principal(const Rule& rule, const Principal& p) {
  auto has = [](const auto& ids, auto id) {
    return std::find(ids.begin(), ids.end(), id) != ids.end();
  };
  if (has(rule.uids, p.uid) || has(rule.gids, p.gid)) return true;
  return std::any_of(p.groups.begin(), p.groups.end(), [&](gid_t g) { return has(rule.gids, g); });
}

bool PolicyFile::matches_key(const Rule& rule, const KeyFacts& key) {
  if (!rule.kinds.empty() &&
      std::find(rule.kinds.begin(), rule.kinds.end(), key.kind) == rule.kinds.end()) {
    return false;
  }
  const std::optional<std::string> identifier =
      key.identifier ? std::optional(lowercase_fqdn_part(*key.identifier)) : std::nullopt;
  return std::any_of(rule.keys.begin(), rule.keys.end(), [&](const KeyGlob& glob) {
    return glob_matches(glob.name_pattern, key.name) ||
           (identifier && glob_matches(glob.identifier_pattern, *identifier));
  });
}

PolicyDecision PolicyFile::authorize(const Principal& p, PolicyGrant grant,
                                     const KeyFacts* key) const {
  if (is_administrator(p)) return {true, fmt::format("uid {} is an administrator", p.uid)};
  const std::string on_key = key ? " on " + describe_key(*key) : std::string();
  for (const Rule& rule : rules_) {
    if (!matches_principal(rule, p)) continue;
    if (std::find(rule.grants.begin(), rule.grants.end(), grant) == rule.grants.end()) continue;
    if (key && !matches_key(rule, *key)) continue;
    return {true, fmt::format("uid {} holds '{}'{} by rule '{}'", p.uid, to_string(grant), on_key,
                              rule.name)};
  }
  return {false, fmt::format("no rule grants uid {} '{}'{} (default deny)", p.uid, to_string(grant),
                             on_key)};
}

bool PolicyFile::may_read_key(const Principal& p, const KeyFacts& key) const {
  return authorize(p, PolicyGrant::key_read, &key).allowed;
}

std::string PolicyFile::describe() const {
  std::string text = source_.empty() ? std::string("no policy file: administrators only")
                                     : fmt::format("policy {}: {} rule{}", source_, rules_.size(),
                                                   rules_.size() == 1 ? "" : "s");
  if (limits_.requests_per_second > 0) {
    text += fmt::format(", {} requests/s per uid (burst {})", limits_.requests_per_second,
                        limits_.burst);
  }
  if (limits_.connections_per_principal > 0) {
    text += fmt::format(", {} connections per uid", limits_.connections_per_principal);
  }
  return text;
}

}  // namespace m2mvault::policies
