// Maps wire operations (api/PROTOCOL.md) onto the Vault: parameter parsing,
// authorization through the policy, JSON results. No key bytes are ever
// returned or logged.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string_view>

#include "api/protocol.h"
#include "policies/policy.h"
#include "policies/rate_limiter.h"
#include "vault/handshakes.h"
#include "vault/import_batches.h"
#include "vault/vault.h"

namespace m2mvault::vault {

// The JSON object of a key as `key.show` and `key.list` return it.
nlohmann::json key_to_json(const KeyRecord& record);

// What the dispatcher tells the audit log about each request (the daemon
// backs it with policies::AuditLog). Implementations throw
// Error(backend_unavailable) when a record cannot be written: fail closed.
class RequestAudit {
 public:
  struct Entry {
    const api::Principal* principal = nullptr;
    std::string_view op;
    std::string_view key;     // as the request named it
    std::string_view key_id;  // the key's oneM2M identifier, when known
    std::string_view result;  // "ok", "denied", "error"
    std::string_view error;   // error code, when not ok
    bool durable = false;     // key creation/deletion, policy change: synced before the response
  };
  virtual ~RequestAudit() = default;
  virtual void record(const Entry& entry) = 0;
  // A denial: may be coalesced with others of the same principal in a flood.
  virtual void record_denial(const Entry& entry) = 0;
  // The policy's denial-flood limits, at start and after each reload.
  virtual void set_flood_limits(std::size_t threshold, std::chrono::seconds window) = 0;
  // audit.show, audit.verify, audit.stats (api/PROTOCOL.md).
  virtual nlohmann::json query(std::string_view op, const nlohmann::json& params) = 0;
};

class Dispatcher : public api::RequestHandler {
 public:
  // `audit` may be null (no audit log: tests of the dispatch alone).
  Dispatcher(Vault& vault, Handshakes& handshakes, policies::PolicyStore& policies,
             RequestAudit* audit = nullptr);
  nlohmann::json handle(const api::Principal& principal, const api::Request& request) override;
  void after_reply() noexcept override { vault_.prepare(); }

 private:
  struct Context;
  nlohmann::json dispatch(const Context& context, const api::Request& request);
  nlohmann::json handshake_start(const api::Principal& principal, const nlohmann::json& params);
  std::optional<policies::KeyFacts> key_facts(const api::Request& request,
                                              std::string* key_id) const;
  nlohmann::json policy_check(const nlohmann::json& params) const;
  nlohmann::json import_batch(const Context& context, const nlohmann::json& params);

  Vault& vault_;
  Handshakes& handshakes_;
  policies::PolicyStore& policies_;
  RequestAudit* audit_;
  ImportBatches batches_;
  std::mutex limiter_mutex_;
  std::shared_ptr<const policies::PolicyFile>
      limiter_policy_;  // the policy the limiter was made for
  std::unique_ptr<policies::RateLimiter> limiter_;
  std::chrono::steady_clock::time_point started_;
};

}  // namespace m2mvault::vault
