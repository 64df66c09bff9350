// The key catalog: SQLite in WAL mode. Holds every key's metadata and, for
// PSK kinds, the wrapped blob. Names and identifiers share one namespace.
//
// Durability: a call that creates, completes or removes a key returns only
// after its transaction is on disk. Concurrent writers are committed together
// in one transaction (group commit), so N concurrent creations cost about one
// fsync, not N.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "vault/key_model.h"

namespace m2mvault::vault {

class Catalog {
 public:
  // Opens (creating if absent) the catalog at `path`. Throws Error(internal)
  // naming the file if SQLite cannot open it or the schema is newer.
  static std::unique_ptr<Catalog> open(const std::filesystem::path& path);
  virtual ~Catalog() = default;

  // Inserts an active key. The record's name and identifier (canonical forms
  // computed here) must be unused by any key's name or identifier, else
  // Error(conflict) naming the clash. Returns the record with `row` set.
  virtual KeyRecord insert(KeyRecord record) = 0;

  // Two-phase create of a token-resident key: insert_pending() makes the row
  // durable in state "pending" (name reserved, same conflict rules);
  // remove() drops a row (pending or active), durably.
  virtual KeyRecord insert_pending(KeyRecord record) = 0;
  // activate() marks it active (durable), storing `public_key` and `blob`
  // (the secure element's blob of a token key, on a TPM) when non-empty.
  // Both throw Error(not_found) when the row no longer exists.
  virtual void activate(std::int64_t row, const std::vector<std::uint8_t>& public_key = {},
                        const std::vector<std::uint8_t>& blob = {}) = 0;
  virtual void remove(std::int64_t row) = 0;

  // Many keys at once, all or none (psk-table import): insert_pending_batch()
  // inserts every record as a pending row in one transaction and sets their
  // `row`s, or, when any record is invalid or clashes with a key or with
  // another record, inserts none and names each such record by its index.
  // Pending rows reserve their names but are not found; activate_batch()
  // makes them active in one transaction; remove_batch() drops them; a
  // start finds any left by a crash and drops them (Vault::reconcile).
  struct BatchProblem {
    std::size_t index;
    std::string message;
  };
  virtual std::vector<BatchProblem> insert_pending_batch(std::vector<KeyRecord>& records) = 0;
  virtual void activate_batch(const std::vector<std::int64_t>& rows) = 0;
  virtual void remove_batch(const std::vector<std::int64_t>& rows) = 0;

  // Replaces a key's oneM2M identifier (e.g. with the KmID a MAF assigned
  // later). The new identifier must be unused (Error(conflict)); the key's
  // name is unchanged, and the old identifier stops finding it unless it is
  // also the name.
  virtual void set_identifier(std::int64_t row, KeyKind kind, const std::string& identifier) = 0;

  // Attaches a signing key's certificate chain (PEM, leaf first), replacing
  // any earlier one. Throws Error(not_found) when the row no longer exists.
  virtual void set_certificate(std::int64_t row, const std::string& pem) = 0;

  // Counts one use of a key with a usage limit, durably, before the use:
  // the new count, or nullopt when the limit is already reached (nothing
  // changes). A crash after counting loses a use, never grants an extra one.
  virtual std::optional<std::int64_t> consume_use(std::int64_t row) = 0;

  // The audit log's checkpoint (sequence number and tag of a record), kept
  // here and in the token so that a cut log tail is detectable.
  virtual void set_audit_checkpoint(std::uint64_t seq, const std::vector<std::uint8_t>& tag) = 0;
  virtual std::optional<std::pair<std::uint64_t, std::vector<std::uint8_t>>> audit_checkpoint() = 0;

  // Active key whose canonical name or canonical identifier equals the
  // canonical form of `name_or_identifier` (canonical_name()). Text that is
  // not a valid name finds nothing: nullopt, never an exception. Reads use
  // their own connections and never wait for the writer.
  virtual std::optional<KeyRecord> find(std::string_view name_or_identifier) = 0;
  // Active keys, ordered by name; all kinds when `kind` is empty.
  virtual std::vector<KeyRecord> list(std::optional<KeyKind> kind = std::nullopt) = 0;
  // One page of list(): at most `limit` keys whose name sorts after `after`.
  virtual std::vector<KeyRecord> list_page(std::optional<KeyKind> kind, const std::string& after,
                                           std::size_t limit) = 0;
  // Rows still pending (for reconciliation at start).
  virtual std::vector<KeyRecord> pending() = 0;
  // Number of active keys.
  virtual std::size_t count() = 0;
};

// Transactions the catalog's writer has committed since open(): with group
// commit, fewer than the writes. For tests and benchmarks; throws
// Error(internal) for a Catalog that is not the one open() returns.
std::uint64_t catalog_commit_count(Catalog& catalog);

}  // namespace m2mvault::vault
