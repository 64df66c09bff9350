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
    OperationGrant{"key.generate", Grant::key_create},
    OperationGrant{"key.adopt", Grant::key_create},
    OperationGrant{"key.set_id", Grant::key_create},
    OperationGrant{"key.delete", Grant::key_delete},
    OperationGrant{"key.derive", Grant::derive},
    OperationGrant{"sign", Grant::sign},
    OperationGrant{"cert.csr", Grant::sign},
    OperationGrant{"cert.import", Grant::key_create},
    OperationGrant{"handshake.start", Grant::handshake},
    OperationGrant{"handshake.step", Grant::handshake},
    OperationGrant{"handshake.abort", Grant::handshake},
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

Decision Policy::authorize(const Peer& peer, Grant grant) const {
  if (grant == Grant::none) return {true, "operation needs no grant"};
  if (is_administrator(peer))
    return {true, "uid " + std::to_string(peer.uid) + " is an administrator"};
  return {false, "uid " + std::to_string(peer.uid) + " holds no grant '" +
                     std::string(to_string(grant)) + "' (default deny)"};
}

}  // namespace m2mvault::policies
