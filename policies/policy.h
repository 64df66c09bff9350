// Who may do what. The closed table below maps every wire operation to the
// one grant it needs; the policy decides grants per principal.
//
// Walking-skeleton policy: default deny; the daemon's own uid and root are
// administrators and hold every grant. Policy files with grants for other
// principals come with the policies issue.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace m2mvault::policies {

// The grants of docs/POLICY table; "" for operations anyone may call.
enum class Grant { none, key_read, key_create, key_delete, sign, psk_release, derive, handshake };

std::string_view to_string(Grant grant);

// The grant an operation needs; nullopt for an operation not in the table
// (which the dispatcher rejects before it gets here).
std::optional<Grant> grant_for_operation(std::string_view op);

// Every operation of the table, for documentation and tests.
std::vector<std::string_view> known_operations();

struct Peer {
  uid_t uid;
  gid_t gid;
  std::vector<gid_t> groups;
};

struct Decision {
  bool allowed;
  std::string reason;  // one line, names the principal and the grant
};

class Policy {
 public:
  explicit Policy(uid_t daemon_uid) : daemon_uid_(daemon_uid) {}

  bool is_administrator(const Peer& peer) const { return peer.uid == 0 || peer.uid == daemon_uid_; }

  Decision authorize(const Peer& peer, Grant grant) const;

 private:
  uid_t daemon_uid_;
};

}  // namespace m2mvault::policies
