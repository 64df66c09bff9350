// Who may do what. The closed table below maps every wire operation to the
// one grant it needs; the policy file (policies/policy_file.h,
// docs/POLICY.md) decides grants per principal and key.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "policies/policy_file.h"

namespace m2mvault::policies {

// The grants of docs/POLICY table; "" for operations anyone may call.
enum class Grant {
  none,
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

std::string_view to_string(Grant grant);

// The grant an operation needs; nullopt for an operation not in the table
// (which the dispatcher rejects before it gets here).
std::optional<Grant> grant_for_operation(std::string_view op);

// Every operation of the table, for documentation and tests.
std::vector<std::string_view> known_operations();

// The grant as a policy file names it; nullopt for Grant::none.
std::optional<PolicyGrant> as_policy_grant(Grant grant);

// The grant a policy file spells `name` ("psk.release", ...); nullopt for
// anything else, including the "none" of operations that need no grant.
std::optional<Grant> grant_named(std::string_view name);

// The policy in force: loaded from a file (or the administrators-only
// default), replaced as a whole by reload(). Thread-safe.
class PolicyStore {
 public:
  // Throws Error(invalid_argument) "<file>:<line>: ..." for a broken file.
  PolicyStore(std::optional<std::filesystem::path> file, uid_t daemon_uid);

  std::shared_ptr<const PolicyFile> current() const;

  // Reads the file again and puts it in force. A broken file throws (with
  // its line) and the old policy stays. Returns the new policy's describe().
  std::string reload();

  const std::optional<std::filesystem::path>& file() const { return file_; }

 private:
  std::shared_ptr<const PolicyFile> load() const;

  std::optional<std::filesystem::path> file_;
  uid_t daemon_uid_;
  mutable std::mutex mutex_;
  std::shared_ptr<const PolicyFile> current_;
};

}  // namespace m2mvault::policies
