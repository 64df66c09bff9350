// Maps wire operations (api/PROTOCOL.md) onto the Vault: parameter parsing,
// authorization through the policy, JSON results. No key bytes are ever
// returned or logged.
#pragma once

#include <chrono>

#include "api/protocol.h"
#include "policies/policy.h"
#include "vault/handshakes.h"
#include "vault/vault.h"

namespace m2mvault::vault {

// The JSON object of a key as `key.show` and `key.list` return it.
nlohmann::json key_to_json(const KeyRecord& record);

class Dispatcher : public api::RequestHandler {
 public:
  Dispatcher(Vault& vault, Handshakes& handshakes, const policies::Policy& policy);
  nlohmann::json handle(const api::Principal& principal, const api::Request& request) override;

 private:
  nlohmann::json dispatch(const api::Principal& principal, const api::Request& request);
  nlohmann::json handshake_start(const api::Principal& principal, const nlohmann::json& params);

  Vault& vault_;
  Handshakes& handshakes_;
  const policies::Policy& policy_;
  std::chrono::steady_clock::time_point started_;
};

}  // namespace m2mvault::vault
