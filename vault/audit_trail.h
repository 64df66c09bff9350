// The daemon's audit trail: policies::AuditLog with its MAC key in the
// secure element and its checkpoint in the catalog and the token, behind the
// dispatcher's RequestAudit interface (docs/THREAT-MODEL.md).
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "hsm/secure_element.h"
#include "policies/audit_log.h"
#include "vault/catalog.h"
#include "vault/config.h"
#include "vault/dispatch.h"

namespace m2mvault::vault {

// The newest audit checkpoint stored in the catalog or the token.
std::optional<policies::AuditCheckpoint> stored_audit_checkpoint(Catalog& catalog,
                                                                 hsm::SecureElement& se);

// Verifies the audit log at `path` (directory or file) with the token's
// audit key against the stored checkpoint: the `audit.verify` result.
nlohmann::json verify_audit_trail(const std::filesystem::path& path, Catalog& catalog,
                                  hsm::SecureElement& se);

// Where the audit log of this configuration lives (directory, or the file).
std::filesystem::path audit_path(const Config& config, const std::filesystem::path& state_dir);

class AuditTrail final : public RequestAudit {
 public:
  // Opens the log under config.audit (default <state_dir>/audit) and checks
  // it against the stored checkpoints; a log behind them is reported (error
  // log line) and `audit verify` names it truncated. Throws
  // Error(backend_unavailable) when the log cannot be opened.
  AuditTrail(const Config& config, const std::filesystem::path& state_dir, Catalog& catalog,
             hsm::SecureElement& se);
  // Syncs and stores the final checkpoint.
  ~AuditTrail() override;

  void record(const Entry& entry) override;
  void record_denial(const Entry& entry) override;
  nlohmann::json query(std::string_view op, const nlohmann::json& params) override;
  void set_flood_limits(std::size_t threshold, std::chrono::seconds window) override {
    log_->set_flood_limits(threshold, window);
  }

  // A record of the daemon's own doing (e.g. a policy reload on SIGHUP),
  // durable; `key` names what it concerned. Throws as record().
  void record_daemon_event(std::string_view op, std::string_view key, std::string_view result,
                           std::string_view error);

 private:
  policies::AuditRecord to_record(const Entry& entry) const;
  void store_checkpoint(const policies::AuditCheckpoint& checkpoint);
  std::filesystem::path path() const;

  Catalog& catalog_;
  hsm::SecureElement& se_;
  std::filesystem::path directory_;
  std::filesystem::path file_;
  std::optional<std::vector<std::uint8_t>> resume_nonce_;  // the epoch of the log's last record
  bool live_ = false;                                      // this run's epoch has begun
  // This run's epoch record goes into the log first, before any request's.
  void write_epoch_record();
  std::mutex epoch_mutex_;
  std::string epoch_nonce_;
  std::atomic<bool> epoch_written_{false};  // read without epoch_mutex_ on every record
  std::unique_ptr<policies::AuditLog> log_;

  // Checkpoints are stored by a thread of their own: an fdatasync, a
  // catalog commit and a token write must not hold up the log's appends.
  void post_checkpoint(const policies::AuditCheckpoint& checkpoint);
  void checkpoint_loop();
  std::uint64_t checkpoint_every_ = 0;
  std::mutex checkpoint_mutex_;
  std::condition_variable checkpoint_cv_;
  std::optional<policies::AuditCheckpoint> pending_checkpoint_;
  bool stopping_ = false;
  std::thread checkpointer_;
};

}  // namespace m2mvault::vault
