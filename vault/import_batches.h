// Open psk-table imports (key.import_batch): rows staged over several
// requests and committed, or dropped, all together. A batch belongs to the
// uid that opened it, and is dropped when it has been idle too long.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "vault/vault.h"

namespace m2mvault::vault {

class ImportBatches {
 public:
  using Clock = std::chrono::steady_clock;

  ImportBatches(Vault& vault, std::chrono::seconds idle_timeout = std::chrono::minutes(5),
                std::size_t per_principal = 4);
  // Drops every open batch's staged rows.
  ~ImportBatches();

  struct Outcome {
    std::string batch;  // empty once committed or aborted
    std::size_t staged = 0;
    std::vector<Catalog::BatchProblem> problems;  // of this call's rows
    bool committed = false;
  };

  // Stages `specs` (with `values`) into `batch` — a new one when `batch` is
  // empty — and commits when `commit` is set and no row of the batch was
  // ever bad (`other_bad_rows`: the caller refused rows of this call itself). A batch that had a
  // bad row can only be aborted. Throws Error(not_found) for a batch the caller does not own or
  // that expired, Error(backend_unavailable) when the caller holds too many.
  Outcome stage(uid_t uid, const std::string& batch, const std::vector<ImportSpec>& specs,
                const std::vector<hsm::SecureBuffer>& values, bool commit, bool other_bad_rows);

  // Drops a batch's staged rows.
  void abort(uid_t uid, const std::string& batch);

 private:
  struct Batch {
    uid_t owner;
    std::vector<std::int64_t> rows;
    bool failed = false;
    Clock::time_point last_used;
  };
  void expire_idle(Clock::time_point now);

  Vault& vault_;
  std::chrono::seconds idle_timeout_;
  std::size_t per_principal_;
  std::mutex mutex_;  // held across a batch's catalog work: batches are rare
  std::map<std::string, Batch> open_;
};

}  // namespace m2mvault::vault
