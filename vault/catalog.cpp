#include "vault/catalog.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <future>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "api/error.h"
#include "vault/identifiers.h"

namespace m2mvault::vault {
namespace {

// 1: the walking skeleton. 2: `peer` (whom a handshake-exported key is
// shared with) and `certificate` (a signing key's PEM chain). 3: usage
// counters, `max_uses` and `uses`.
constexpr int kSchemaVersion = 3;

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS keys(
  key_id       INTEGER PRIMARY KEY,
  state        TEXT NOT NULL CHECK (state IN ('pending', 'active')),
  name         TEXT NOT NULL,
  kind         TEXT NOT NULL,
  identifier   TEXT,
  entity       TEXT,
  created      INTEGER NOT NULL,
  expires      INTEGER,
  storage      TEXT NOT NULL,
  blob         BLOB,
  object_id    BLOB,
  token_label  TEXT,
  object_label TEXT,
  public_key   BLOB,
  algorithm    TEXT,
  length       INTEGER NOT NULL DEFAULT 0,
  check_value  TEXT,
  parent       TEXT,
  peer         TEXT,
  certificate  TEXT,
  max_uses     INTEGER,
  uses         INTEGER NOT NULL DEFAULT 0
);
-- Names and identifiers share one namespace: each key's canonical name and
-- canonical identifier (once when equal) point at its row.
CREATE TABLE IF NOT EXISTS names(
  canonical TEXT PRIMARY KEY,
  key_id    INTEGER NOT NULL REFERENCES keys(key_id) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS names_by_key ON names(key_id);
CREATE INDEX IF NOT EXISTS keys_by_state ON keys(state);
-- The audit log's checkpoint (policies/audit_log.h): one row.
CREATE TABLE IF NOT EXISTS audit_checkpoint(
  id  INTEGER PRIMARY KEY CHECK (id = 1),
  seq INTEGER NOT NULL,
  tag BLOB NOT NULL
);
-- list_page() walks the active keys in name order, without sorting.
CREATE INDEX IF NOT EXISTS keys_by_state_name ON keys(state, name);
)sql";

constexpr const char* kColumns =
    "key_id, name, kind, identifier, entity, created, expires, storage, blob, object_id, "
    "token_label, "
    "object_label, public_key, algorithm, length, check_value, parent, peer, certificate, "
    "max_uses, "
    "uses";

struct DbCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
using Db = std::unique_ptr<sqlite3, DbCloser>;

struct StmtFinalizer {
  void operator()(sqlite3_stmt* s) const { sqlite3_finalize(s); }
};
using Stmt = std::unique_ptr<sqlite3_stmt, StmtFinalizer>;

// Resets a long-lived prepared statement when the scope that ran it ends, so
// no statement stays open (holding a read snapshot or a pending step) after
// an error.
class ResetOnExit {
 public:
  explicit ResetOnExit(sqlite3_stmt* s) : s_(s) {}
  ~ResetOnExit() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }
  ResetOnExit(const ResetOnExit&) = delete;
  ResetOnExit& operator=(const ResetOnExit&) = delete;

 private:
  sqlite3_stmt* s_;
};

[[noreturn]] void fail(sqlite3* db, std::string_view what) {
  throw Error(ErrorCode::internal, fmt::format("catalog: {}: {}", what, sqlite3_errmsg(db)));
}

[[noreturn]] void already_exists(std::string_view given) {
  throw Error(ErrorCode::conflict,
              fmt::format("key name or identifier '{}' already exists", printable_excerpt(given)));
}

[[noreturn]] void row_gone(std::int64_t row) {
  throw Error(ErrorCode::not_found, fmt::format("catalog row {} no longer exists", row));
}

void exec(sqlite3* db, const char* sql) {
  if (sqlite3_exec(db, sql, nullptr, nullptr, nullptr) != SQLITE_OK) fail(db, sql);
}

Stmt prepare(sqlite3* db, std::string_view sql) {
  sqlite3_stmt* s = nullptr;
  if (sqlite3_prepare_v3(db, sql.data(), static_cast<int>(sql.size()), SQLITE_PREPARE_PERSISTENT,
                         &s, nullptr) != SQLITE_OK) {
    fail(db, "prepare");
  }
  return Stmt(s);
}

void sync_directory_of(const std::filesystem::path& file) {
  auto dir = file.parent_path();
  if (dir.empty()) dir = ".";
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // best effort: SQLite syncs the directory again with the WAL
  ::fsync(fd);
  ::close(fd);
}

Db open_db(const std::filesystem::path& path) {
  sqlite3* raw = nullptr;
  int rc =
      sqlite3_open_v2(path.c_str(), &raw,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  Db db(raw);
  if (rc != SQLITE_OK) {
    throw Error(ErrorCode::internal, fmt::format("cannot open catalog {}: {}", path.string(),
                                                 raw ? sqlite3_errmsg(raw) : sqlite3_errstr(rc)));
  }
  sqlite3_busy_timeout(db.get(), 10'000);
  exec(db.get(), "PRAGMA foreign_keys = ON");
  exec(db.get(), "PRAGMA synchronous = FULL");
  return db;
}

void bind_optional(sqlite3_stmt* s, int i, const std::optional<std::string>& v) {
  if (v) {
    sqlite3_bind_text(s, i, v->data(), static_cast<int>(v->size()), SQLITE_TRANSIENT);
  } else {
    sqlite3_bind_null(s, i);
  }
}

void bind_text(sqlite3_stmt* s, int i, std::string_view v) {
  sqlite3_bind_text(s, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
}

void bind_blob(sqlite3_stmt* s, int i, const std::vector<std::uint8_t>& v) {
  if (v.empty()) {
    sqlite3_bind_null(s, i);
  } else {
    sqlite3_bind_blob(s, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
  }
}

std::optional<std::string> column_text(sqlite3_stmt* s, int i) {
  if (sqlite3_column_type(s, i) == SQLITE_NULL) return std::nullopt;
  auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s, i));
  return std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(s, i)));
}

std::vector<std::uint8_t> column_blob(sqlite3_stmt* s, int i) {
  auto* p = static_cast<const std::uint8_t*>(sqlite3_column_blob(s, i));
  return p ? std::vector<std::uint8_t>(p, p + sqlite3_column_bytes(s, i))
           : std::vector<std::uint8_t>{};
}

KeyRecord read_record(sqlite3_stmt* s) {
  KeyRecord r;
  r.row = sqlite3_column_int64(s, 0);
  r.name = column_text(s, 1).value_or("");
  try {
    r.kind = parse_key_kind(column_text(s, 2).value_or(""));
    r.storage = parse_storage(column_text(s, 7).value_or(""));
  } catch (const Error& e) {
    // Only this daemon writes the catalog: a bad value is damage, not bad input.
    throw Error(ErrorCode::internal, fmt::format("catalog row {} ('{}'): {}", r.row,
                                                 printable_excerpt(r.name), e.what()));
  }
  r.identifier = column_text(s, 3);
  r.entity = column_text(s, 4);
  r.created = sqlite3_column_int64(s, 5);
  if (sqlite3_column_type(s, 6) != SQLITE_NULL) r.expires = sqlite3_column_int64(s, 6);
  r.blob = column_blob(s, 8);
  r.object_id = column_blob(s, 9);
  r.token_label = column_text(s, 10).value_or("");
  r.object_label = column_text(s, 11).value_or("");
  r.public_key = column_blob(s, 12);
  r.algorithm = column_text(s, 13).value_or("");
  r.length = static_cast<std::size_t>(sqlite3_column_int64(s, 14));
  r.check_value = column_text(s, 15);
  r.parent = column_text(s, 16);
  r.peer = column_text(s, 17);
  r.certificate = column_text(s, 18);
  if (sqlite3_column_type(s, 19) != SQLITE_NULL) r.max_uses = sqlite3_column_int64(s, 19);
  r.uses = sqlite3_column_int64(s, 20);
  return r;
}

// One queued write: runs inside the group's transaction, in its own savepoint.
struct WriteOp {
  std::function<void(sqlite3*)> apply;
  std::promise<void> done;
};

// A read connection with its prepared statements; borrowed by one thread at a time.
struct Reader {
  Db db;
  Stmt find;
  Stmt count;
};

class SqliteCatalog final : public Catalog {
 public:
  explicit SqliteCatalog(const std::filesystem::path& path) : path_(path) {
    try {
      open_schema();
    } catch (const Error& e) {
      std::string_view what = e.what();
      if (what.find(path.string()) != std::string_view::npos) throw;
      if (what.starts_with("catalog: ")) what.remove_prefix(9);
      throw Error(e.code(), fmt::format("catalog {}: {}", path.string(), what));
    }
    writer_ = std::thread([this] { write_loop(); });
  }

  ~SqliteCatalog() override {
    {
      std::lock_guard lock(queue_mutex_);
      stopping_ = true;
    }
    queue_cv_.notify_all();
    writer_.join();
  }

  // Transactions the writer has committed (one per group).
  std::uint64_t commits() const { return commits_.load(); }

 private:
  void open_schema() {
    const std::filesystem::path& path = path_;
    // The catalog holds metadata and wrapped blobs: readable by the daemon only.
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0) {
      ::close(fd);
      sync_directory_of(path);  // the new file's name survives a power cut
    }
    writer_db_ = open_db(path);
    sqlite3* db = writer_db_.get();
    sqlite3_stmt* raw = nullptr;
    if (sqlite3_prepare_v2(db, "PRAGMA journal_mode = WAL", -1, &raw, nullptr) != SQLITE_OK)
      fail(db, "WAL");
    Stmt wal(raw);
    if (sqlite3_step(wal.get()) != SQLITE_ROW) fail(db, "WAL");
    auto mode = column_text(wal.get(), 0);
    if (mode != "wal") fail(db, "cannot switch to WAL mode");
    wal.reset();

    Stmt version = prepare(db, "PRAGMA user_version");
    sqlite3_step(version.get());
    const int found = sqlite3_column_int(version.get(), 0);
    version.reset();
    if (found > kSchemaVersion) {
      throw Error(ErrorCode::internal,
                  fmt::format("catalog {} has schema version {}, newer than this daemon's {}",
                              path.string(), found, kSchemaVersion));
    }
    exec(db, "BEGIN IMMEDIATE");
    if (found >= 1 && found < 2) {
      exec(db, "ALTER TABLE keys ADD COLUMN peer TEXT");
      exec(db, "ALTER TABLE keys ADD COLUMN certificate TEXT");
    }
    if (found >= 1 && found < 3) {
      exec(db, "ALTER TABLE keys ADD COLUMN max_uses INTEGER");
      exec(db, "ALTER TABLE keys ADD COLUMN uses INTEGER NOT NULL DEFAULT 0");
    }
    exec(db, kSchema);
    exec(db, fmt::format("PRAGMA user_version = {}", kSchemaVersion).c_str());
    exec(db, "COMMIT");

    insert_key_ = prepare(
        db,
        "INSERT INTO keys(state, name, kind, identifier, entity, created, expires, storage, "
        "blob, object_id, token_label, object_label, public_key, algorithm, length, "
        "check_value, parent, peer, certificate, max_uses) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
    insert_name_ = prepare(db, "INSERT INTO names(canonical, key_id) VALUES (?, ?)");
    activate_ = prepare(db,
                        "UPDATE keys SET state = 'active', public_key = coalesce(?, public_key), "
                        "blob = coalesce(?, blob) WHERE key_id = ?");
    remove_ = prepare(db, "DELETE FROM keys WHERE key_id = ?");
  }

 public:
  KeyRecord insert(KeyRecord record) override { return insert_as(std::move(record), "active"); }
  KeyRecord insert_pending(KeyRecord record) override {
    return insert_as(std::move(record), "pending");
  }

  void activate(std::int64_t row, const std::vector<std::uint8_t>& public_key,
                const std::vector<std::uint8_t>& blob) override {
    write([&](sqlite3* db) {
      sqlite3_stmt* s = activate_.get();
      ResetOnExit reset(s);
      bind_blob(s, 1, public_key);
      bind_blob(s, 2, blob);
      sqlite3_bind_int64(s, 3, row);
      if (sqlite3_step(s) != SQLITE_DONE) fail(db, "activate");
      if (sqlite3_changes(db) == 0) row_gone(row);
    });
  }

  void remove(std::int64_t row) override {
    write([&](sqlite3* db) {
      sqlite3_stmt* s = remove_.get();
      ResetOnExit reset(s);
      sqlite3_bind_int64(s, 1, row);
      if (sqlite3_step(s) != SQLITE_DONE) fail(db, "remove");
      if (sqlite3_changes(db) == 0) row_gone(row);
    });
  }

  void set_identifier(std::int64_t row, KeyKind kind, const std::string& identifier) override {
    const std::string canonical = canonical_identifier(kind, identifier);
    write([&](sqlite3* db) {
      Stmt current = prepare(db, "SELECT name FROM keys WHERE key_id = ?");
      sqlite3_bind_int64(current.get(), 1, row);
      if (sqlite3_step(current.get()) != SQLITE_ROW) row_gone(row);
      const std::string name_canonical = canonical_name(column_text(current.get(), 0).value_or(""));
      current.reset();
      // Every entry of the row but its name is the old identifier's.
      Stmt drop = prepare(db, "DELETE FROM names WHERE key_id = ? AND canonical != ?");
      sqlite3_bind_int64(drop.get(), 1, row);
      bind_text(drop.get(), 2, name_canonical);
      if (sqlite3_step(drop.get()) != SQLITE_DONE) fail(db, "set identifier");
      drop.reset();
      if (canonical != name_canonical) {
        sqlite3_stmt* add = insert_name_.get();
        ResetOnExit reset(add);
        bind_text(add, 1, canonical);
        sqlite3_bind_int64(add, 2, row);
        int rc = sqlite3_step(add);
        if (rc == SQLITE_CONSTRAINT) already_exists(identifier);
        if (rc != SQLITE_DONE) fail(db, "set identifier");
      }
      Stmt update = prepare(db, "UPDATE keys SET identifier = ? WHERE key_id = ?");
      bind_text(update.get(), 1, identifier);
      sqlite3_bind_int64(update.get(), 2, row);
      if (sqlite3_step(update.get()) != SQLITE_DONE) fail(db, "set identifier");
    });
  }

  void set_audit_checkpoint(std::uint64_t seq, const std::vector<std::uint8_t>& tag) override {
    write([&](sqlite3* db) {
      Stmt upsert = prepare(db,
                            "INSERT INTO audit_checkpoint(id, seq, tag) VALUES (1, ?, ?) "
                            "ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, tag = excluded.tag");
      sqlite3_bind_int64(upsert.get(), 1, static_cast<sqlite3_int64>(seq));
      bind_blob(upsert.get(), 2, tag);
      if (sqlite3_step(upsert.get()) != SQLITE_DONE) fail(db, "audit checkpoint");
    });
  }

  std::optional<std::pair<std::uint64_t, std::vector<std::uint8_t>>> audit_checkpoint() override {
    Lease reader(*this);
    Stmt s = prepare(reader->db.get(), "SELECT seq, tag FROM audit_checkpoint WHERE id = 1");
    if (sqlite3_step(s.get()) != SQLITE_ROW) return std::nullopt;
    return std::make_pair(static_cast<std::uint64_t>(sqlite3_column_int64(s.get(), 0)),
                          column_blob(s.get(), 1));
  }

  std::optional<std::int64_t> consume_use(std::int64_t row) override {
    std::optional<std::int64_t> uses;
    write([&](sqlite3* db) {
      Stmt update = prepare(db,
                            "UPDATE keys SET uses = uses + 1 WHERE key_id = ? AND "
                            "max_uses IS NOT NULL AND uses < max_uses RETURNING uses");
      sqlite3_bind_int64(update.get(), 1, row);
      const int rc = sqlite3_step(update.get());
      if (rc == SQLITE_ROW) {
        uses = sqlite3_column_int64(update.get(), 0);
      } else if (rc != SQLITE_DONE) {
        fail(db, "count a use");
      }
    });
    return uses;
  }

  void set_certificate(std::int64_t row, const std::string& pem) override {
    write([&](sqlite3* db) {
      Stmt update = prepare(db, "UPDATE keys SET certificate = ? WHERE key_id = ?");
      bind_text(update.get(), 1, pem);
      sqlite3_bind_int64(update.get(), 2, row);
      if (sqlite3_step(update.get()) != SQLITE_DONE) fail(db, "set certificate");
      if (sqlite3_changes(db) == 0) row_gone(row);
    });
  }

  std::optional<KeyRecord> find(std::string_view name_or_identifier) override {
    std::string canonical;
    try {
      canonical = canonical_name(name_or_identifier);
    } catch (const Error&) {
      return std::nullopt;  // not a valid name, so no key has it
    }
    // Loaded before the read, so an entry never claims a newer generation
    // than the data it holds.
    const std::uint64_t generation = generation_.load(std::memory_order_acquire);
    {
      std::lock_guard lock(found_mutex_);
      if (found_generation_ == generation) {
        if (auto it = found_.find(canonical); it != found_.end()) return it->second;
      }
    }
    std::optional<KeyRecord> record;
    {
      Lease reader(*this);
      sqlite3_stmt* s = reader->find.get();
      ResetOnExit reset(s);
      bind_text(s, 1, canonical);
      int rc = sqlite3_step(s);
      if (rc == SQLITE_ROW) {
        record = read_record(s);
      } else if (rc != SQLITE_DONE) {
        fail(reader->db.get(), "find");
      }
    }
    if (record) remember(canonical, *record, generation);
    return record;
  }

  std::vector<KeyRecord> list(std::optional<KeyKind> kind) override {
    return list_page(kind, "", static_cast<std::size_t>(-1) >> 1);
  }

  std::vector<KeyRecord> list_page(std::optional<KeyKind> kind, const std::string& after,
                                   std::size_t limit) override {
    const std::string kind_text = kind ? std::string(to_string(*kind)) : std::string();
    return select(fmt::format("SELECT {} FROM keys WHERE state = 'active' AND name > ?{} "
                              "ORDER BY name LIMIT ?",
                              kColumns, kind ? " AND kind = ?" : ""),
                  [&](sqlite3_stmt* s) {
                    int i = 1;
                    bind_text(s, i++, std::string_view(after));
                    if (kind) bind_text(s, i++, std::string_view(kind_text));
                    sqlite3_bind_int64(s, i, static_cast<sqlite3_int64>(limit));
                  });
  }

  std::vector<KeyRecord> pending() override {
    return select(
        fmt::format("SELECT {} FROM keys WHERE state = 'pending' ORDER BY key_id", kColumns),
        [](sqlite3_stmt*) {});
  }

  std::size_t count() override {
    Lease reader(*this);
    sqlite3_stmt* s = reader->count.get();
    ResetOnExit reset(s);
    if (sqlite3_step(s) != SQLITE_ROW) fail(reader->db.get(), "count");
    return static_cast<std::size_t>(sqlite3_column_int64(s, 0));
  }

 private:
  using Names = std::vector<std::pair<std::string, std::string>>;  // canonical, as given

  // The names a record takes in the shared namespace, validated (throws
  // Error(invalid_argument)); fills in the default name.
  static Names names_of(KeyRecord& record) {
    if (record.name.empty()) {
      if (!record.identifier || record.identifier->empty())
        throw Error(ErrorCode::invalid_argument, "a key needs a name or an identifier");
      record.name = *record.identifier;
    }
    Names names;
    names.emplace_back(canonical_name(record.name), record.name);
    if (record.identifier) {
      std::string id = canonical_identifier(record.kind, *record.identifier);
      if (id != names[0].first) names.emplace_back(std::move(id), *record.identifier);
    }
    return names;
  }

  KeyRecord insert_as(KeyRecord record, const char* state) {
    // Canonical forms are computed (and validated) before queueing.
    const Names names = names_of(record);
    write([&](sqlite3* db) { insert_row(db, record, state, names); });
    return record;
  }

  // Inside a write: one keys row and its names; sets record.row.
  void insert_row(sqlite3* db, KeyRecord& record, const char* state, const Names& names) {
    sqlite3_stmt* s = insert_key_.get();
    ResetOnExit reset(s);
    bind_text(s, 1, state);
    bind_text(s, 2, record.name);
    bind_text(s, 3, to_string(record.kind));
    bind_optional(s, 4, record.identifier);
    bind_optional(s, 5, record.entity);
    sqlite3_bind_int64(s, 6, record.created);
    if (record.expires) sqlite3_bind_int64(s, 7, *record.expires);
    bind_text(s, 8, to_string(record.storage));
    bind_blob(s, 9, record.blob);
    bind_blob(s, 10, record.object_id);
    bind_text(s, 11, record.token_label);
    bind_text(s, 12, record.object_label);
    bind_blob(s, 13, record.public_key);
    bind_text(s, 14, record.algorithm);
    sqlite3_bind_int64(s, 15, static_cast<sqlite3_int64>(record.length));
    bind_optional(s, 16, record.check_value);
    bind_optional(s, 17, record.parent);
    bind_optional(s, 18, record.peer);
    bind_optional(s, 19, record.certificate);
    if (record.max_uses) sqlite3_bind_int64(s, 20, *record.max_uses);
    if (sqlite3_step(s) != SQLITE_DONE) fail(db, "insert");
    record.row = sqlite3_last_insert_rowid(db);
    for (const auto& [canonical, given] : names) {
      sqlite3_stmt* n = insert_name_.get();
      ResetOnExit reset_name(n);
      bind_text(n, 1, canonical);
      sqlite3_bind_int64(n, 2, record.row);
      int rc = sqlite3_step(n);
      if (rc == SQLITE_CONSTRAINT) already_exists(given);
      if (rc != SQLITE_DONE) fail(db, "insert name");
    }
  }

 public:
  std::vector<BatchProblem> insert_pending_batch(std::vector<KeyRecord>& records) override {
    std::vector<BatchProblem> problems;
    std::vector<Names> names(records.size());
    for (std::size_t i = 0; i < records.size(); ++i) {
      try {
        names[i] = names_of(records[i]);
      } catch (const Error& e) {
        problems.push_back({i, e.what()});
      }
    }
    // Valid records are tried even so, to report their clashes too.
    struct Rejected {};  // rolls the whole batch back
    try {
      write([&](sqlite3* db) {
        for (std::size_t i = 0; i < records.size(); ++i) {
          if (names[i].empty()) continue;  // invalid, already reported
          exec(db, "SAVEPOINT batch_row");
          try {
            insert_row(db, records[i], "pending", names[i]);
            exec(db, "RELEASE batch_row");
          } catch (const Error& e) {
            if (e.code() != ErrorCode::conflict) throw;
            problems.push_back({i, e.what()});
            exec(db, "ROLLBACK TO batch_row");
            exec(db, "RELEASE batch_row");
          }
        }
        if (!problems.empty()) throw Rejected{};
      });
    } catch (const Rejected&) {
      for (auto& r : records) r.row = 0;
    }
    std::sort(problems.begin(), problems.end(),
              [](const BatchProblem& a, const BatchProblem& b) { return a.index < b.index; });
    return problems;
  }

  void activate_batch(const std::vector<std::int64_t>& rows) override {
    write([&](sqlite3* db) {
      Stmt update =
          prepare(db, "UPDATE keys SET state = 'active' WHERE key_id = ? AND state = 'pending'");
      for (std::int64_t row : rows) {
        ResetOnExit reset(update.get());
        sqlite3_bind_int64(update.get(), 1, row);
        if (sqlite3_step(update.get()) != SQLITE_DONE) fail(db, "activate batch");
        if (sqlite3_changes(db) == 0) row_gone(row);
      }
    });
  }

  void remove_batch(const std::vector<std::int64_t>& rows) override {
    write([&](sqlite3* db) {
      for (std::int64_t row : rows) {
        sqlite3_stmt* s = remove_.get();
        ResetOnExit reset(s);
        sqlite3_bind_int64(s, 1, row);
        if (sqlite3_step(s) != SQLITE_DONE) fail(db, "remove batch");
      }
    });
  }

 private:
  // Queues `apply` for the writer and waits until its group is committed.
  void write(std::function<void(sqlite3*)> apply) {
    WriteOp op{std::move(apply), {}};
    auto done = op.done.get_future();
    {
      std::lock_guard lock(queue_mutex_);
      queue_.push_back(std::move(op));
    }
    queue_cv_.notify_one();
    done.get();
  }

  void write_loop() {
    sqlite3* db = writer_db_.get();
    while (true) {
      std::deque<WriteOp> batch;
      {
        std::unique_lock lock(queue_mutex_);
        queue_cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stopping with nothing left
        batch.swap(queue_);
      }
      std::vector<std::exception_ptr> errors(batch.size());
      std::exception_ptr group_error;
      try {
        exec(db, "BEGIN IMMEDIATE");
        for (std::size_t i = 0; i < batch.size(); ++i) {
          exec(db, "SAVEPOINT op");
          try {
            batch[i].apply(db);
            exec(db, "RELEASE op");
          } catch (...) {
            errors[i] = std::current_exception();
            exec(db, "ROLLBACK TO op");
            exec(db, "RELEASE op");
          }
        }
        exec(db, "COMMIT");
        commits_.fetch_add(1);
      } catch (...) {
        group_error = std::current_exception();
        sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
      }
      // Before any writer hears that its write is done: whoever acts on
      // that (a revocation answered, say) finds no lookup from before it.
      generation_.fetch_add(1, std::memory_order_acq_rel);
      for (std::size_t i = 0; i < batch.size(); ++i) {
        if (group_error) {
          batch[i].done.set_exception(group_error);
        } else if (errors[i]) {
          batch[i].done.set_exception(errors[i]);
        } else {
          batch[i].done.set_value();
        }
      }
    }
  }

  // Keeps a looked-up record for the next find() of the same name, while no
  // write has been committed since `generation` was read.
  void remember(const std::string& canonical, const KeyRecord& record, std::uint64_t generation) {
    std::lock_guard lock(found_mutex_);
    if (generation < found_generation_) return;  // a write came after this read began
    if (generation > found_generation_) {
      found_.clear();
      found_generation_ = generation;
    }
    if (found_.size() >= kFoundCapacity) found_.clear();
    found_.insert_or_assign(canonical, record);
  }

  // A read connection for the length of one call; back to the pool after it.
  class Lease {
   public:
    explicit Lease(SqliteCatalog& catalog) : catalog_(catalog), reader_(catalog.borrow()) {}
    ~Lease() { catalog_.give_back(std::move(reader_)); }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    Reader* operator->() const { return reader_.get(); }

   private:
    SqliteCatalog& catalog_;
    std::unique_ptr<Reader> reader_;
  };

  std::unique_ptr<Reader> borrow() {
    {
      std::lock_guard lock(readers_mutex_);
      if (!readers_.empty()) {
        auto r = std::move(readers_.back());
        readers_.pop_back();
        return r;
      }
    }
    auto r = std::make_unique<Reader>();
    r->db = open_db(path_);
    exec(r->db.get(), "PRAGMA query_only = ON");
    r->find =
        prepare(r->db.get(), fmt::format("SELECT {} FROM keys WHERE state = 'active' AND key_id = "
                                         "(SELECT key_id FROM names WHERE canonical = ?)",
                                         kColumns));
    r->count = prepare(r->db.get(), "SELECT count(*) FROM keys WHERE state = 'active'");
    return r;
  }

  void give_back(std::unique_ptr<Reader> reader) {
    std::lock_guard lock(readers_mutex_);
    readers_.push_back(std::move(reader));
  }

  // Runs a query returning key rows, with `bind` setting its parameters.
  std::vector<KeyRecord> select(const std::string& sql,
                                const std::function<void(sqlite3_stmt*)>& bind) {
    Lease reader(*this);
    Stmt s = prepare(reader->db.get(), sql);
    bind(s.get());
    std::vector<KeyRecord> out;
    int rc;
    while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) out.push_back(read_record(s.get()));
    if (rc != SQLITE_DONE) fail(reader->db.get(), "select");
    return out;
  }

  std::filesystem::path path_;
  Db writer_db_;
  Stmt insert_key_, insert_name_, activate_, remove_;
  std::thread writer_;
  std::mutex queue_mutex_;
  std::condition_variable queue_cv_;
  std::deque<WriteOp> queue_;
  bool stopping_ = false;
  std::atomic<std::uint64_t> commits_{0};
  // find()'s records, valid only while no write group has ended since they
  // were read: the writer bumps generation_ after every group (see
  // write_loop()). All writes go through that one thread.
  static constexpr std::size_t kFoundCapacity = 4096;
  std::atomic<std::uint64_t> generation_{0};
  std::mutex found_mutex_;
  std::uint64_t found_generation_ = 0;
  std::unordered_map<std::string, KeyRecord> found_;
  std::mutex readers_mutex_;
  std::vector<std::unique_ptr<Reader>> readers_;
};

}  // namespace

std::unique_ptr<Catalog> Catalog::open(const std::filesystem::path& path) {
  // The catalog is SQLite's only user in the daemon. Its allocation
  // statistics take a process-wide mutex on every malloc, which serializes
  // the readers; turn them off (possible only before SQLite initializes, so
  // a later call is a harmless SQLITE_MISUSE).
  static std::once_flag configured;
  std::call_once(configured, [] { sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0); });
  return std::make_unique<SqliteCatalog>(path);
}

}  // namespace m2mvault::vault

namespace m2mvault::vault {

std::uint64_t catalog_commit_count(Catalog& catalog) {
  auto* sqlite = dynamic_cast<SqliteCatalog*>(&catalog);
  if (sqlite == nullptr) {
    throw Error(ErrorCode::internal, "catalog_commit_count() needs the SQLite catalog");
  }
  return sqlite->commits();
}

}  // namespace m2mvault::vault
