// The audit log: one JSON line per request, allowed or denied, chained by an
// HMAC whose key stays in the secure element. Tamper-evident, not
// tamper-proof: whoever can write the directory can still destroy records,
// but without the MAC key cannot do so unnoticed (see "What verification can
// and cannot detect" below).
//
// Files: <directory>/audit.log is the current file; when it would grow past
// rotate_bytes it is renamed audit-<seq of its first record, 20 digits>.log
// and a new audit.log starts. Names sort in seq order.
//
// Record line, keys in this order, one object per line:
//   {"seq":N,"time":"2027-01-31T12:00:00.123Z","uid":..,"gid":..,"pid":..,
//    "exe":"..","op":"..","key":"..","key_id":"..","result":"..","error":"..",
//    "count":N,"prev":"<64 hex>","tag":"<64 hex>"}
// canonical = the line without ',"tag":...' (nlohmann dump(), invalid UTF-8
// replaced by U+FFFD); tag = mac(prev tag bytes || canonical). seq starts at 1
// with prev = 64 zeros; a rotated file's first record carries the previous
// file's last tag, so one chain runs through all files.
//
// Fail closed: append() throws Error(backend_unavailable) instead of letting
// a request go unrecorded; the caller must then refuse the request.
#pragma once

#include <sys/types.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <span>
#include <string>

namespace m2mvault::policies {

// One request, allowed or denied. Never a key byte.
struct AuditRecord {
  std::int64_t time_ms = 0;  // Unix ms; 0 = when append() writes it
  uid_t uid = 0;             // the principal
  gid_t gid = 0;
  pid_t pid = 0;
  std::string exe;          // from /proc/<pid>/exe, may be ""
  std::string op;           // wire operation, e.g. "sign"
  std::string key;          // key name as given ("" if none)
  std::string key_id;       // oneM2M identifier if known ("")
  std::string result;       // "ok", "denied" or "error"
  std::string error;        // ErrorCode string ("" when ok)
  std::uint64_t count = 1;  // >1 for a coalesced run of identical denials
  bool durable = false;     // on disk (fdatasync) before append() returns
};

// HMAC-SHA-256 with the audit key held in the secure element.
using AuditMac = std::function<std::array<std::uint8_t, 32>(std::span<const std::uint8_t>)>;

// A record the caller stores outside the log (catalog and token), so that
// cutting the log's tail up to that record is detectable.
struct AuditCheckpoint {
  std::uint64_t seq = 0;  // 0: no record yet
  std::array<std::uint8_t, 32> tag{};
};

struct AuditLogOptions {
  // <state-dir>/audit by default; created 0700 when missing.
  std::filesystem::path directory;
  // Explicit current file (e.g. /dev/full in tests); rotation is off when set.
  std::filesystem::path file;
  std::size_t rotate_bytes = 64 << 20;
  // Non-durable records reach the disk within about this interval; one
  // fdatasync covers every record written meanwhile.
  std::chrono::milliseconds sync_interval{100};
  // Every checkpoint_every-th record is made durable and then passed to
  // on_checkpoint, in seq order, under the log's lock: the callback must not
  // call back into the AuditLog. Exceptions it throws are logged, not raised.
  std::uint64_t checkpoint_every = 1000;
  std::function<void(const AuditCheckpoint&)> on_checkpoint;
  // append() fails closed below this much free space on the log's volume and
  // warns (at most once a minute) below twice as much.
  std::uint64_t free_space_reserve_bytes = 64 << 20;
  // Denial coalescing, see AuditLog::note_denial().
  std::size_t flood_threshold = 50;
  std::chrono::seconds flood_window{10};
};

class AuditLog {
 public:
  // Opens (creating 0700 / 0600 when missing) the directory and the current
  // file, O_APPEND, and continues the chain from the last record of the
  // current file or, when it is empty, of the newest rotated file. That last
  // record must be a whole line whose tag verifies with `mac`. Throws
  // Error(backend_unavailable) naming the file and the reason otherwise (a
  // torn last line after a crash is left for an operator to inspect with
  // `m2mvault audit verify`; the log is never repaired silently).
  // The caller should compare last() with its stored checkpoint: a log that
  // restarts behind the checkpoint was cut.
  AuditLog(AuditLogOptions options, AuditMac mac);
  // Writes pending denial summaries, stops the sync thread, syncs. Never throws.
  ~AuditLog();

  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;

  // Appends one record (seq = last + 1, prev = last tag), written before
  // returning; durable records (and checkpoint records) are also
  // fdatasync'ed first, concurrent durable appends sharing one fdatasync.
  // Concurrent appends share write()s too: records queued while one batch
  // is being written are chained and written together by one of their
  // callers, with one check of the file's identity.
  // Thread-safe; seq order is write order. Writes the principal's pending
  // denial summaries first, so the log keeps that principal's order.
  //
  // Throws Error(backend_unavailable, "audit log <path>: <why>") and writes
  // nothing (the seq is not used) when
  //  - write() fails or is short (ENOSPC, EIO, ...): a partial line is cut off
  //    again; every later append() simply retries;
  //  - the volume's free space is below the reserve; later appends re-check;
  //  - the open file was unlinked, renamed away, replaced by another inode at
  //    the path, or changed size behind the log's back. Later appends fail
  //    until an operator puts a file at the path again, then reopen it and
  //    continue the chain, provided that file is empty or ends with the
  //    last record this log wrote (a restored copy); any other file keeps
  //    failing. The log never recreates an unlinked file itself, because the
  //    unlink is the event an operator must look at.
  // Each failure and each recovery is logged once (spdlog), not per call.
  AuditCheckpoint append(AuditRecord record);

  // fdatasync of everything appended so far. Throws as append().
  void sync();

  // Replaces the denial-coalescing limits (a reloaded policy's [limits]).
  void set_flood_limits(std::size_t threshold, std::chrono::seconds window);

  // The last record written: seq 0 and a zero tag for a new log.
  AuditCheckpoint last() const;

  // Records a denied request, coalescing floods. A principal's (uid's) first
  // flood_threshold denials within a flood_window are written as append();
  // beyond that, denials with the same (uid, op, key) are counted instead,
  // and one summary record (fields of the first, time of the last, count = N)
  // is written when the window ends, before the principal's next append(),
  // or at destruction. Returns true when this denial was written now. At most
  // 256 (op, key) pairs are counted per principal and window; denials beyond
  // that are written. Throws as append().
  bool note_denial(AuditRecord record);

  // fdatasync calls made so far, for tests and benchmarks.
  std::uint64_t sync_count() const;
  // write() calls made so far: records queued while one is written go out
  // together in the next (group write).
  std::uint64_t write_count() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// --- verification (`m2mvault audit verify`) -------------------------------
//
// What verification can and cannot detect:
//  - a record edited in place ("modified": its tag does not verify, or the
//    line is not in canonical form); a record whose prev does not link to
//    its predecessor although its seq does ("forged", e.g. a chain rebuilt
//    without the MAC key, which also fails its tags: "modified" at seq 1);
//  - a record removed from the middle ("deleted": seq jumps forward and no
//    later line holds the missing seq) and records moved ("reordered": the
//    missing seq appears later, or seq goes backwards);
//  - an unparsable or torn line ("unparsable");
//  - a cut tail, only against a checkpoint stored elsewhere ("truncated":
//    the log ends before the checkpoint's seq, or the record at that seq has
//    another tag, i.e. the log was cut and regrown). A tail cut after the
//    newest checkpoint is invisible: the remaining chain is intact. That is
//    why the daemon checkpoints every checkpoint_every records.
//  - The first record of the whole log may have seq > 1 (older rotated files
//    removed by retention); its prev cannot be checked, so dropping whole
//    oldest files shows only as first_seq > 1, or as "deleted" when the
//    checkpoint's record is among them. Likewise a current file recreated
//    after an unlink: the records of the unlinked file are "deleted" when an
//    earlier file precedes it or the checkpoint names one of them; when it is
//    the only file the report is intact with first_seq > 1.
struct AuditProblem {
  std::uint64_t seq;  // the record expected where the chain breaks
  std::string file;
  std::size_t line;  // 1-based line in `file` where the break was found
  std::string kind;  // "modified", "deleted", "reordered", "truncated", "unparsable", "forged"
  std::string detail;
};

struct AuditVerifyReport {
  bool intact;
  std::uint64_t records;  // records checked (up to the problem)
  std::uint64_t first_seq, last_seq;
  std::optional<AuditProblem> problem;  // the first break only
};

// Checks the chain of a log directory (rotated files, then audit.log) or of
// one file. Throws Error(not_found) when the path does not exist.
AuditVerifyReport verify_audit_log(const std::filesystem::path& directory_or_file,
                                   const AuditMac& mac, std::optional<AuditCheckpoint> checkpoint);

// Passes each record, in seq order across rotated files, to `visit` until it
// returns false. Does not verify tags. Throws Error(not_found) when the path
// does not exist and Error(invalid_argument) naming file and line for a line
// that is not a JSON object.
void read_audit_log(const std::filesystem::path& directory_or_file,
                    const std::function<bool(const nlohmann::json&)>& visit);

}  // namespace m2mvault::policies
