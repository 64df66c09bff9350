#include "policies/policy.h"

#include <array>
#include <utility>

namespace m2mvault::policies {
namespace {

struct OperationGrant {
  std::string_view op;
  Grant grant;
};

// The closed table: every wire operation, exactly one grant each.
constexpr std::array kOperations{
    OperationGrant{"ping", Grant::none},
    OperationGrant{"status", Grant::key_read},
    OperationGrant{"key.list", Grant::key_read},
    OperationGrant{"key.show", Grant::key_read},
    OperationGrant{"key.public", Grant::key_read},
    OperationGrant{"key.check", Grant::key_read},
    OperationGrant{"key.import", Grant::key_create},
    OperationGrant{"key.import_batch", Grant::key_create},
    OperationGrant{"key.generate", Grant::key_create},
    OperationGrant{"key.adopt", Grant::key_create},
    OperationGrant{"key.set_id", Grant::key_create},
    OperationGrant{"key.delete", Grant::key_delete},
    OperationGrant{"key.derive", Grant::derive},
    OperationGrant{"sign", Grant::sign},
    OperationGrant{"psk.release", Grant::psk_release},
    OperationGrant{"cert.csr", Grant::sign},
    OperationGrant{"cert.import", Grant::key_create},
    OperationGrant{"handshake.start", Grant::handshake},
    OperationGrant{"handshake.step", Grant::handshake},
    OperationGrant{"handshake.abort", Grant::handshake},
    OperationGrant{"audit.show", Grant::audit_read},
    OperationGrant{"audit.verify", Grant::audit_read},
    OperationGrant{"audit.stats", Grant::audit_read},
    OperationGrant{"policy.check", Grant::policy_admin},
    OperationGrant{"policy.reload", Grant::policy_admin},
};

}  // namespace

std::string_view to_string(Grant grant) {
  switch (grant) {
    case Grant::none:
      return "none";
    case Grant::key_read:
      return "key.read";
    case Grant::key_create:
      return "key.create";
    case Grant::key_delete:
      return "key.delete";
    case Grant::sign:
      return "sign";
    case Grant::psk_release:
      return "psk.release";
    case Grant::derive:
      return "derive";
    case Grant::handshake:
      return "handshake";
    case Grant::audit_read:
      return "audit.read";
    case Grant::policy_admin:
      return "policy.admin";
  }
  return "unknown";
}

std::optional<Grant> grant_for_operation(std::string_view op) {
  for (const auto& entry : kOperations) {
    if (entry.op == op) return entry.grant;
  }
  return std::nullopt;
}

std::vector<std::string_view> known_operations() {
  std::vector<std::string_view> ops;
  for (const auto& entry : kOperations) ops.push_back(entry.op);
  return ops;
}

std::optional<PolicyGrant> as_policy_grant(Grant grant) {
  if (grant == Grant::none) return std::nullopt;
  return parse_grant(to_string(grant));
}

std::optional<Grant> grant_named(std::string_view name) {
  for (auto g :
       {Grant::key_read, Grant::key_create, Grant::key_delete, Grant::sign, Grant::psk_release,
        Grant::derive, Grant::handshake, Grant::audit_read, Grant::policy_admin}) {
    if (to_string(g) == name) return g;
  }
  return std::nullopt;
}

PolicyStore::PolicyStore(std::optional<std::filesystem::path> file, uid_t daemon_uid)
    : file_(std::move(file)), daemon_uid_(daemon_uid), current_(load()) {}

std::shared_ptr<const PolicyFile> PolicyStore::load() const {
  return std::make_shared<const PolicyFile>(file_ ? PolicyFile::load(*file_, daemon_uid_)
                                                  : PolicyFile::defaults(daemon_uid_));
}

std::shared_ptr<const PolicyFile> PolicyStore::current() const {
  std::lock_guard lock(mutex_);
  return current_;
}

std::string PolicyStore::reload() {
  auto fresh = load();  // throws, leaving the old policy in force
  std::string described = fresh->describe();
  std::lock_guard lock(mutex_);
  current_ = std::move(fresh);
  return described;
}

}  // namespace m2mvault::policies
