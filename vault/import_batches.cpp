#include "vault/import_batches.h"

#include <fmt/format.h>
#include <openssl/rand.h>
#include <spdlog/spdlog.h>

#include "api/encoding.h"
#include "api/error.h"

namespace m2mvault::vault {
namespace {

std::string new_batch_id() {
  std::uint8_t bytes[16];
  if (RAND_bytes(bytes, sizeof bytes) != 1) throw Error(ErrorCode::internal, "no randomness");
  return encoding::hex_encode(bytes);
}

}  // namespace

ImportBatches::ImportBatches(Vault& vault, std::chrono::seconds idle_timeout,
                             std::size_t per_principal)
    : vault_(vault), idle_timeout_(idle_timeout), per_principal_(per_principal) {}

ImportBatches::~ImportBatches() {
  std::lock_guard lock(mutex_);
  for (auto& [id, batch] : open_) {
    try {
      if (!batch.rows.empty()) vault_.discard_staged(batch.rows);
    } catch (const std::exception& e) {
      // Left pending: the next start drops them.
      spdlog::warn("import batch {}: staged rows not dropped: {}", id, e.what());
    }
  }
}

void ImportBatches::expire_idle(Clock::time_point now) {
  for (auto it = open_.begin(); it != open_.end();) {
    if (now - it->second.last_used < idle_timeout_) {
      ++it;
      continue;
    }
    spdlog::info("import batch {} of uid {} idle for {} s: its {} staged rows are dropped",
                 it->first, it->second.owner, idle_timeout_.count(), it->second.rows.size());
    if (!it->second.rows.empty()) vault_.discard_staged(it->second.rows);
    it = open_.erase(it);
  }
}

ImportBatches::Outcome ImportBatches::stage(uid_t uid, const std::string& batch_id,
                                            const std::vector<ImportSpec>& specs,
                                            const std::vector<hsm::SecureBuffer>& values,
                                            bool commit, bool other_bad_rows) {
  std::lock_guard lock(mutex_);
  const auto now = Clock::now();
  expire_idle(now);
  Outcome outcome;
  std::string id = batch_id;
  if (id.empty()) {
    std::size_t held = 0;
    for (const auto& [_, b] : open_) held += b.owner == uid;
    if (held >= per_principal_) {
      throw Error(ErrorCode::backend_unavailable,
                  fmt::format("uid {} already has {} import batches open", uid, held));
    }
    id = new_batch_id();
    open_.emplace(id, Batch{uid, {}, false, now});
  }
  auto it = open_.find(id);
  if (it == open_.end() || it->second.owner != uid) {
    throw Error(ErrorCode::not_found, fmt::format("no open import batch '{}'", id));
  }
  Batch& batch = it->second;
  batch.last_used = now;
  if (other_bad_rows) batch.failed = true;
  if (!specs.empty()) {
    outcome.problems = vault_.stage_imports(specs, values, batch.rows);
    if (!outcome.problems.empty()) batch.failed = true;
  }
  outcome.staged = batch.rows.size();
  if (commit) {
    if (batch.failed) {
      throw Error(ErrorCode::invalid_argument,
                  "the batch has bad rows and cannot be committed: abort it");
    }
    vault_.commit_staged(batch.rows);
    open_.erase(it);
    outcome.committed = true;
    return outcome;
  }
  outcome.batch = id;
  return outcome;
}

void ImportBatches::abort(uid_t uid, const std::string& batch_id) {
  std::lock_guard lock(mutex_);
  auto it = open_.find(batch_id);
  if (it == open_.end() || it->second.owner != uid) {
    throw Error(ErrorCode::not_found, fmt::format("no open import batch '{}'", batch_id));
  }
  std::vector<std::int64_t> rows = std::move(it->second.rows);
  open_.erase(it);
  if (!rows.empty()) vault_.discard_staged(rows);
}

}  // namespace m2mvault::vault
