// The audit checkpoint kept in TPM NV (docs/TPM2.md, "The audit checkpoint
// in NV"), so that rolling back the state directory does not roll it back.
//
// Two owner-hierarchy NV indices at a fixed pair of handles:
//  - `handle`: an ordinary index of kNvCheckpointSize bytes holding one
//    record: the checkpoint value, the count it is bound to, and
//    HMAC-SHA-256 with the vault's audit key over both;
//  - `handle + 1`: an NV counter, advanced by every store. The TPM never
//    sets a counter back; one undefined and defined again starts above the
//    highest count of any counter the TPM deleted.
// load() refuses, with Error(unavailable) and a message saying why, a record
// whose MAC fails (written without the audit key: by someone else, or by the
// vault of another state directory on this TPM) and a record bound to an
// older count (an earlier record written back: a rollback).
//
// Not thread-safe: the backend serializes its checkpoint calls.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>

#include "hsm/tpm2/tpm2.h"

namespace m2mvault::hsm::tpm2 {

// The default pair: 0x01834D30 (record) and 0x01834D31 (counter); "M2" in
// the low half, in the owner range.
inline constexpr std::uint32_t kDefaultAuditNvIndex = 0x01834D30;
// The record index's size, and the longest value it holds: the vault's
// checkpoint is 40 bytes (8-byte sequence number, 32-byte tag).
inline constexpr std::uint16_t kNvCheckpointSize = 128;
inline constexpr std::size_t kMaxCheckpointValue = kNvCheckpointSize - 4 - 8 - 2 - 32;

// One record, as kept in the ordinary index:
//   "m2c1" | count (8, big-endian) | value length (2, big-endian) | value |
//   MAC (32) | zero padding to kNvCheckpointSize
// MAC = HMAC-SHA-256(audit key, kNvCheckpointLabel || handle (4, big-endian)
//   || the record's bytes before the MAC).
struct NvCheckpointRecord {
  std::uint64_t count = 0;
  Bytes value;
  Hmac mac{};
};
inline constexpr std::string_view kNvCheckpointLabel = "m2mvault audit checkpoint in TPM NV";

// What the MAC covers, for a record of `handle`.
Bytes nv_checkpoint_mac_input(std::uint32_t handle, std::uint64_t count,
                              std::span<const std::uint8_t> value);
// kNvCheckpointSize bytes. Throws Error(invalid_argument) for a value longer
// than kMaxCheckpointValue.
Bytes encode_nv_checkpoint(const NvCheckpointRecord& record);
// nullopt for bytes that are no record.
std::optional<NvCheckpointRecord> decode_nv_checkpoint(std::span<const std::uint8_t> bytes);

class NvAuditCheckpoint {
 public:
  // HMAC-SHA-256 with the vault's audit key (in the TPM).
  using Mac = std::function<Hmac(std::span<const std::uint8_t>)>;

  // `handle` and `handle + 1` must both lie in the owner NV range; throws
  // Error(invalid_argument) otherwise. Sends no TPM command.
  NvAuditCheckpoint(std::shared_ptr<Tpm2> tpm, std::uint32_t handle, Mac mac);

  // The stored value; nullopt when none was ever stored (no record index, or
  // never written). Throws Error(unavailable) for a record that fails its MAC
  // or its count (see the file comment), or when the counter is gone.
  std::optional<Bytes> load();

  // Stores `value` (1..kMaxCheckpointValue bytes): defines the indices on
  // first use, then writes the record bound to the next count and advances
  // the counter. Values compare bytewise, as the vault's (big-endian sequence
  // number first) do in sequence order: a value lower than the stored one is
  // refused with Error(invalid_argument), so a log restarted behind its
  // checkpoint cannot make the vault erase the evidence; the value already
  // stored costs no NV write. Throws as load() when the stored record does
  // not verify: it is left in place.
  void store(std::span<const std::uint8_t> value);

  const NvIndex& record_index() const noexcept { return record_; }
  const NvIndex& counter_index() const noexcept { return counter_; }

 private:
  // The stored record, checked against `count` (see load()); nullopt when
  // the record index holds none.
  std::optional<NvCheckpointRecord> verified_record(std::optional<std::uint64_t> count);

  std::shared_ptr<Tpm2> tpm_;
  NvIndex record_;
  NvIndex counter_;
  Mac mac_;
};

}  // namespace m2mvault::hsm::tpm2
