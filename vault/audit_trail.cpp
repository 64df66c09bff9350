#include "vault/audit_trail.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <deque>
#include <map>
#include <nlohmann/json.hpp>

#include "api/encoding.h"
#include "api/error.h"
#include "vault/in_token.h"
#include "vault/time_format.h"

namespace m2mvault::vault {
namespace {

using nlohmann::json;

// The token keeps the checkpoint as 8 big-endian bytes of seq, then the tag:
// comparing two values bytewise compares their sequence numbers.
std::vector<std::uint8_t> encode_checkpoint(const policies::AuditCheckpoint& c) {
  std::vector<std::uint8_t> out(8);
  for (int i = 0; i < 8; ++i) out[i] = static_cast<std::uint8_t>(c.seq >> (56 - 8 * i));
  out.insert(out.end(), c.tag.begin(), c.tag.end());
  return out;
}

std::optional<policies::AuditCheckpoint> decode_checkpoint(const std::vector<std::uint8_t>& v) {
  if (v.size() != 40) return std::nullopt;
  policies::AuditCheckpoint c;
  for (int i = 0; i < 8; ++i) c.seq = (c.seq << 8) | v[static_cast<std::size_t>(i)];
  std::copy(v.begin() + 8, v.end(), c.tag.begin());
  return c;
}

constexpr std::string_view kEpochOp = R"("op":"audit.epoch")";

// Whether a MAC input (prev tag || canonical line) is an epoch record: JSON
// escaping keeps that text out of every string value, so only the op field
// can hold it.
bool is_epoch_record(std::span<const std::uint8_t> data) {
  if (data.size() <= 32) return false;
  std::string_view line(reinterpret_cast<const char*>(data.data()) + 32, data.size() - 32);
  return line.find(kEpochOp) != std::string_view::npos;
}

// The nonce an epoch record names in its "key" field (32 hex digits).
std::optional<std::vector<std::uint8_t>> epoch_nonce(std::span<const std::uint8_t> data) {
  std::string_view line(reinterpret_cast<const char*>(data.data()) + 32, data.size() - 32);
  const auto at = line.find(R"("key":")", line.find(kEpochOp));
  if (at == std::string_view::npos) return std::nullopt;
  return encoding::hex_decode(line.substr(at + 7, 32));
}

// The MAC of records being verified in order: an epoch record is MAC'd by
// the token's audit key and makes its epoch key current for what follows;
// records before any epoch record (logs from before epochs) use the
// token's key.
policies::AuditMac verifying_mac(hsm::SecureElement& se) {
  auto nonce = std::make_shared<std::optional<std::vector<std::uint8_t>>>();
  return [&se, nonce](std::span<const std::uint8_t> data) {
    if (is_epoch_record(data)) {
      *nonce = epoch_nonce(data);
      return se.audit_mac(data);
    }
    return *nonce ? se.audit_epoch_mac_for(**nonce, data) : se.audit_mac(data);
  };
}

std::string exe_of(pid_t pid) {
  char buf[4096];
  const std::string link = fmt::format("/proc/{}/exe", pid);
  const ssize_t n = ::readlink(link.c_str(), buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

std::optional<std::string> text_param(const json& p, const char* name) {
  auto it = p.find(name);
  if (it == p.end() || it->is_null()) return std::nullopt;
  if (!it->is_string())
    throw Error(ErrorCode::invalid_argument, fmt::format("parameter '{}' must be a string", name));
  return it->get<std::string>();
}

}  // namespace

AuditTrail::AuditTrail(const Config& config, const std::filesystem::path& state_dir,
                       Catalog& catalog, hsm::SecureElement& se)
    : catalog_(catalog),
      se_(se),
      directory_(config.audit.directory.empty() ? state_dir / "audit" : config.audit.directory),
      file_(config.audit.file) {
  policies::AuditLogOptions options;
  options.directory = directory_;
  options.file = file_;
  options.rotate_bytes = config.audit.rotate_bytes;
  options.sync_interval = config.audit.sync_interval;
  // The log's own checkpointing runs under its lock; this trail posts
  // checkpoints to a thread instead (checkpoint_loop()).
  options.checkpoint_every = 0;
  checkpoint_every_ = config.audit.checkpoint_every;
  options.free_space_reserve_bytes = config.audit.free_space_reserve_bytes;
  // Until this run's epoch begins, the log's last record is checked with the
  // key of the epoch that wrote it.
  try {
    // (A device such as /dev/full holds no records to read.)
    if (file_.empty() || std::filesystem::is_regular_file(file_))
      policies::read_audit_log(path(), [this](const json& r) {
        if (r.value("op", "") == "audit.epoch")
          resume_nonce_ = encoding::hex_decode(r.value("key", ""));
        return true;
      });
  } catch (const Error& e) {
    if (e.code() != ErrorCode::not_found) throw;
  }
  log_ = std::make_unique<policies::AuditLog>(options, [this](std::span<const std::uint8_t> data) {
    if (is_epoch_record(data)) return se_.audit_mac(data);
    if (live_) return se_.audit_epoch_mac(data);
    return resume_nonce_ ? se_.audit_epoch_mac_for(*resume_nonce_, data) : se_.audit_mac(data);
  });
  // This run's epoch: its nonce in a record MAC'd by the token's key; the
  // records after it are MAC'd in software with the epoch key.
  const auto nonce = in_token([&] { return se_.begin_audit_epoch(); });
  live_ = true;
  epoch_nonce_ = encoding::hex_encode(nonce);
  try {
    write_epoch_record();
  } catch (const Error& e) {
    // Fail closed per request: each one tries again and is refused until
    // the log takes records (and this epoch record first).
    spdlog::error("audit log: cannot record this run's epoch: {}", e.what());
  }
  // Before the checkpointer starts: reading the stored checkpoint may throw
  // (a TPM checkpoint rolled back), and a constructor that throws must not
  // leave a joinable thread behind.
  const auto last = log_->last();
  if (auto stored = stored_audit_checkpoint(catalog_, se_); stored && stored->seq > last.seq) {
    spdlog::error(
        "audit log {} ends at record {} but its checkpoint says {}: the log was cut; 'm2mvault "
        "audit verify' reports it",
        path().string(), last.seq, stored->seq);
  }
  checkpointer_ = std::thread([this] { checkpoint_loop(); });
}

AuditTrail::~AuditTrail() {
  {
    std::lock_guard lock(checkpoint_mutex_);
    stopping_ = true;
  }
  checkpoint_cv_.notify_all();
  if (checkpointer_.joinable()) checkpointer_.join();
  try {
    log_->sync();
    const auto last = log_->last();
    if (last.seq > 0) store_checkpoint(last);
  } catch (const std::exception& e) {
    spdlog::error("audit log: final checkpoint not stored: {}", e.what());
  }
}

std::filesystem::path AuditTrail::path() const {
  return file_.empty() ? directory_ : file_;
}

void AuditTrail::store_checkpoint(const policies::AuditCheckpoint& c) {
  catalog_.set_audit_checkpoint(c.seq, std::vector<std::uint8_t>(c.tag.begin(), c.tag.end()));
  in_token([&] { se_.store_audit_checkpoint(encode_checkpoint(c)); });
}

std::optional<policies::AuditCheckpoint> stored_audit_checkpoint(Catalog& catalog,
                                                                 hsm::SecureElement& se) {
  std::optional<policies::AuditCheckpoint> best;
  if (auto row = catalog.audit_checkpoint(); row && row->second.size() == 32) {
    policies::AuditCheckpoint c;
    c.seq = row->first;
    std::copy(row->second.begin(), row->second.end(), c.tag.begin());
    best = c;
  }
  if (auto value = in_token([&] { return se.load_audit_checkpoint(); })) {
    if (auto c = decode_checkpoint(*value); c && (!best || c->seq > best->seq)) best = c;
  }
  return best;
}

json verify_audit_trail(const std::filesystem::path& path, Catalog& catalog,
                        hsm::SecureElement& se) {
  const auto report =
      policies::verify_audit_log(path, verifying_mac(se), stored_audit_checkpoint(catalog, se));
  json out = {{"intact", report.intact},
              {"records", report.records},
              {"first_seq", report.first_seq},
              {"last_seq", report.last_seq}};
  if (report.problem) {
    out["problem"] = {{"seq", report.problem->seq},
                      {"file", report.problem->file},
                      {"line", report.problem->line},
                      {"kind", report.problem->kind},
                      {"detail", report.problem->detail}};
  }
  return out;
}

std::filesystem::path audit_path(const Config& config, const std::filesystem::path& state_dir) {
  if (!config.audit.file.empty()) return config.audit.file;
  return config.audit.directory.empty() ? state_dir / "audit" : config.audit.directory;
}

void AuditTrail::write_epoch_record() {
  if (epoch_written_.load(std::memory_order_acquire)) return;
  std::lock_guard lock(epoch_mutex_);
  if (epoch_written_.load(std::memory_order_relaxed)) return;
  policies::AuditRecord epoch;
  epoch.uid = ::geteuid();
  epoch.gid = ::getegid();
  epoch.pid = ::getpid();
  epoch.exe = exe_of(::getpid());
  epoch.op = "audit.epoch";
  epoch.key = epoch_nonce_;
  epoch.result = "ok";
  epoch.durable = true;
  log_->append(std::move(epoch));
  epoch_written_.store(true, std::memory_order_release);
}

policies::AuditRecord AuditTrail::to_record(const Entry& e) const {
  policies::AuditRecord r;
  r.uid = e.principal->uid;
  r.gid = e.principal->gid;
  r.pid = e.principal->pid;
  r.exe = e.principal->exe;
  r.op = std::string(e.op);
  r.key = e.key == "-" ? std::string() : std::string(e.key);
  r.key_id = std::string(e.key_id);
  r.result = std::string(e.result);
  r.error = std::string(e.error);
  r.durable = e.durable;
  return r;
}

void AuditTrail::record(const Entry& entry) {
  write_epoch_record();
  const auto written = log_->append(to_record(entry));
  if (checkpoint_every_ && written.seq % checkpoint_every_ == 0) post_checkpoint(written);
}

void AuditTrail::post_checkpoint(const policies::AuditCheckpoint& checkpoint) {
  {
    std::lock_guard lock(checkpoint_mutex_);
    if (!pending_checkpoint_ || pending_checkpoint_->seq < checkpoint.seq)
      pending_checkpoint_ = checkpoint;
  }
  checkpoint_cv_.notify_one();
}

void AuditTrail::checkpoint_loop() {
  std::unique_lock lock(checkpoint_mutex_);
  while (true) {
    checkpoint_cv_.wait(lock, [this] { return stopping_ || pending_checkpoint_; });
    if (stopping_) return;  // the destructor stores the final one
    const auto checkpoint = *pending_checkpoint_;
    pending_checkpoint_.reset();
    lock.unlock();
    try {
      log_->sync();  // a checkpoint names only a record on disk
      store_checkpoint(checkpoint);
    } catch (const std::exception& e) {
      spdlog::error("audit log: checkpoint {} not stored: {}", checkpoint.seq, e.what());
    }
    lock.lock();
  }
}

void AuditTrail::record_daemon_event(std::string_view op, std::string_view key,
                                     std::string_view result, std::string_view error) {
  write_epoch_record();
  policies::AuditRecord r;
  r.uid = ::geteuid();
  r.gid = ::getegid();
  r.pid = ::getpid();
  r.exe = exe_of(::getpid());
  r.op = std::string(op);
  r.key = std::string(key);
  r.result = std::string(result);
  r.error = std::string(error);
  r.durable = true;
  log_->append(std::move(r));
}

void AuditTrail::record_denial(const Entry& entry) {
  write_epoch_record();
  log_->note_denial(to_record(entry));
}

json AuditTrail::query(std::string_view op, const json& p) {
  if (op == "audit.verify") {
    log_->sync();
    return verify_audit_trail(path(), catalog_, se_);
  }
  if (op == "audit.stats") {
    std::uint64_t records = 0, requests = 0, denied = 0, errors = 0;
    std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> keys, principals;
    policies::read_audit_log(path(), [&](const json& r) {
      const std::uint64_t count = r.value("count", std::uint64_t{1});
      const std::string result = r.value("result", "");
      if (result == "started") return true;  // its outcome is the next record of the request
      if (r.value("op", "") == "audit.epoch") return true;  // the daemon's own, not a request
      std::string key = r.value("key_id", "");
      if (key.empty()) key = r.value("key", "");
      const std::string uid = std::to_string(r.value("uid", 0u));
      ++records;
      requests += count;
      auto& k = keys[key];
      auto& u = principals[uid];
      if (result == "denied") {
        denied += count;
        if (!key.empty()) k.second += count;
        u.second += count;
      } else {
        if (result == "error") errors += count;
        if (!key.empty() && result == "ok") k.first += count;
      }
      u.first += count;
      return true;
    });
    json by_key = json::object(), by_uid = json::object();
    for (const auto& [k, v] : keys)
      if (!k.empty()) by_key[k] = {{"uses", v.first}, {"denied", v.second}};
    for (const auto& [u, v] : principals) by_uid[u] = {{"requests", v.first}, {"denied", v.second}};
    return {{"records", records}, {"requests", requests}, {"denied", denied},
            {"errors", errors},   {"keys", by_key},       {"principals", by_uid}};
  }
  // audit.show: filters, oldest first, paged by seq.
  constexpr std::size_t kPage = 1000;
  const auto key = text_param(p, "key");
  const auto uid = text_param(p, "uid");
  const auto want_op = text_param(p, "op");
  const auto result = text_param(p, "result");
  const auto since = text_param(p, "since");
  const auto until = text_param(p, "until");
  const std::int64_t since_ms = since ? parse_rfc3339(*since) * 1000 : 0;
  const std::int64_t until_ms = until ? parse_rfc3339(*until) * 1000 : INT64_MAX;
  std::uint64_t after = 0;
  if (auto it = p.find("after"); it != p.end() && it->is_number_unsigned()) after = *it;
  std::size_t limit = 0;
  if (auto it = p.find("limit"); it != p.end() && it->is_number_unsigned()) limit = *it;
  std::deque<json> matched;
  std::uint64_t last_seq = 0;
  bool more = false;
  policies::read_audit_log(path(), [&](const json& r) {
    const std::uint64_t seq = r.value("seq", std::uint64_t{0});
    if (seq <= after) return true;
    if (key && r.value("key", "") != *key && r.value("key_id", "") != *key) return true;
    if (uid && std::to_string(r.value("uid", 0u)) != *uid) return true;
    if (want_op && r.value("op", "") != *want_op) return true;
    if (result && r.value("result", "") != *result) return true;
    if (since || until) {
      // Records carry milliseconds; filters are whole seconds.
      std::string time = r.value("time", "");
      if (auto dot = time.find('.'); dot != std::string::npos) time = time.substr(0, dot) + "Z";
      const std::int64_t t = parse_rfc3339(time) * 1000;
      if (t < since_ms || t >= until_ms) return true;
    }
    matched.push_back(r);
    if (limit) {
      if (matched.size() > limit) matched.pop_front();  // keep the newest
      return true;
    }
    if (matched.size() > kPage) {
      matched.pop_back();
      more = true;
      return false;
    }
    last_seq = seq;
    return true;
  });
  json records = json::array();
  for (auto& r : matched) records.push_back(std::move(r));
  return {{"records", std::move(records)}, {"next", more ? json(last_seq) : json(nullptr)}};
}

}  // namespace m2mvault::vault
