#include "hsm/tpm2/nv_checkpoint.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <utility>

namespace m2mvault::hsm::tpm2 {
namespace {

constexpr std::string_view kMagic = "m2c1";
constexpr std::size_t kHeaderSize = 4 + 8 + 2;

void put_be(Bytes& out, std::uint64_t value, int bytes) {
  for (int shift = 8 * (bytes - 1); shift >= 0; shift -= 8) {
    out.push_back(static_cast<std::uint8_t>(value >> shift));
  }
}

std::uint64_t get_be(std::span<const std::uint8_t> bytes) {
  std::uint64_t value = 0;
  for (const std::uint8_t byte : bytes) value = (value << 8) | byte;
  return value;
}

// The magic, count, length and value: what the MAC covers after the label
// and the handle.
Bytes record_header_and_value(std::uint64_t count, std::span<const std::uint8_t> value) {
  Bytes out(kMagic.begin(), kMagic.end());
  put_be(out, count, 8);
  put_be(out, value.size(), 2);
  out.insert(out.end(), value.begin(), value.end());
  return out;
}

void check_value_size(std::span<const std::uint8_t> value) {
  if (value.empty() || value.size() > kMaxCheckpointValue) {
    throw Error(Failure::invalid_argument, "an audit checkpoint is 1.." +
                                               std::to_string(kMaxCheckpointValue) +
                                               " bytes, not " + std::to_string(value.size()));
  }
}

}  // namespace

Bytes nv_checkpoint_mac_input(std::uint32_t handle, std::uint64_t count,
                              std::span<const std::uint8_t> value) {
  Bytes out(kNvCheckpointLabel.begin(), kNvCheckpointLabel.end());
  put_be(out, handle, 4);
  const Bytes record = record_header_and_value(count, value);
  out.insert(out.end(), record.begin(), record.end());
  return out;
}

Bytes encode_nv_checkpoint(const NvCheckpointRecord& record) {
  check_value_size(record.value);
  Bytes out = record_header_and_value(record.count, record.value);
  out.insert(out.end(), record.mac.begin(), record.mac.end());
  out.resize(kNvCheckpointSize, 0);
  return out;
}

std::optional<NvCheckpointRecord> decode_nv_checkpoint(std::span<const std::uint8_t> bytes) {
  if (bytes.size() < kHeaderSize || !std::equal(kMagic.begin(), kMagic.end(), bytes.begin())) {
    return std::nullopt;
  }
  NvCheckpointRecord record;
  record.count = get_be(bytes.subspan(4, 8));
  const std::size_t length = get_be(bytes.subspan(12, 2));
  if (length == 0 || length > kMaxCheckpointValue ||
      bytes.size() < kHeaderSize + length + record.mac.size()) {
    return std::nullopt;
  }
  const auto value = bytes.subspan(kHeaderSize, length);
  record.value.assign(value.begin(), value.end());
  const auto mac = bytes.subspan(kHeaderSize + length, record.mac.size());
  std::copy(mac.begin(), mac.end(), record.mac.begin());
  return record;
}

NvAuditCheckpoint::NvAuditCheckpoint(std::shared_ptr<Tpm2> tpm, std::uint32_t handle, Mac mac)
    : tpm_(std::move(tpm)),
      record_{handle, NvType::ordinary, kNvCheckpointSize},
      counter_{handle + 1, NvType::counter, 8},
      mac_(std::move(mac)) {
  if (handle < kOwnerNvFirst || handle >= kOwnerNvLast) {
    throw Error(Failure::invalid_argument,
                "the audit checkpoint's NV indices " + hex_handle(handle) + " and the next " +
                    "must lie in the owner range " + hex_handle(kOwnerNvFirst) + ".." +
                    hex_handle(kOwnerNvLast));
  }
}

std::optional<Bytes> NvAuditCheckpoint::load() {
  std::optional<std::uint64_t> count;
  if (tpm_->nv_state(counter_) == NvState::written) count = tpm_->nv_count(counter_);
  auto record = verified_record(count);
  if (!record) return std::nullopt;
  return std::move(record->value);
}

void NvAuditCheckpoint::store(std::span<const std::uint8_t> value) {
  check_value_size(value);
  tpm_->nv_define(counter_);
  // A counter's first increment sets it above any count this TPM's deleted
  // counters reached: from then on it has a value to bind records to.
  if (tpm_->nv_state(counter_) == NvState::unwritten) tpm_->nv_increment(counter_);
  tpm_->nv_define(record_);
  const std::uint64_t count = tpm_->nv_count(counter_);
  if (const auto current = verified_record(count)) {
    if (std::lexicographical_compare(value.begin(), value.end(), current->value.begin(),
                                     current->value.end())) {
      throw Error(Failure::invalid_argument,
                  "refusing to move the audit checkpoint in NV index " +
                      hex_handle(record_.handle) +
                      " back to an earlier record: the audit log restarted behind it (cut, or "
                      "restored from a copy); 'm2mvault audit verify' names the damage");
    }
    if (current->count == count &&
        std::equal(value.begin(), value.end(), current->value.begin(), current->value.end())) {
      return;  // stored already: spare the NV a write
    }
  }
  const auto write = [&](std::uint64_t bound_to) {
    NvCheckpointRecord record{bound_to, Bytes(value.begin(), value.end()), {}};
    record.mac = mac_(nv_checkpoint_mac_input(record_.handle, bound_to, value));
    tpm_->nv_write(record_, encode_nv_checkpoint(record));
  };
  // Record first, then the counter: a crash in between leaves the record one
  // ahead of the counter, which load() accepts (it is the newest record).
  write(count + 1);
  tpm_->nv_increment(counter_);
  // A retried increment (the TPM counted, its answer was lost) or anyone
  // else's moved the counter further: bind the record to where it is.
  if (const std::uint64_t now = tpm_->nv_count(counter_); now != count + 1) write(now);
}

std::optional<NvCheckpointRecord> NvAuditCheckpoint::verified_record(
    std::optional<std::uint64_t> count) {
  if (tpm_->nv_state(record_) != NvState::written) return std::nullopt;
  const std::string where = "the audit checkpoint in TPM NV index " + hex_handle(record_.handle);
  const std::string undefine = "tpm2_nvundefine -C o " + hex_handle(record_.handle) +
                               "; tpm2_nvundefine -C o " + hex_handle(counter_.handle);
  auto record = decode_nv_checkpoint(tpm_->nv_read(record_));
  Hmac expected{};
  if (record)
    expected = mac_(nv_checkpoint_mac_input(record_.handle, record->count, record->value));
  if (!record || CRYPTO_memcmp(expected.data(), record->mac.data(), expected.size()) != 0) {
    throw Error(Failure::unavailable,
                where +
                    " was not written with this vault's audit key: by someone else, or by the "
                    "vault of another state directory on this TPM (one initialized again?). If "
                    "this state directory replaced that one on purpose, undefine both indices (" +
                    undefine + ") or give this vault its own pair ([tpm2] audit_nv_index)");
  }
  if (!count) {
    throw Error(Failure::unavailable,
                where + " cannot be checked for rollback: its counter, NV index " +
                    hex_handle(counter_.handle) +
                    ", is gone (undefined with owner authorization). Once the cause is known, "
                    "undefine the record too (" +
                    undefine + ") to start a new checkpoint");
  }
  if (record->count == *count || record->count == *count + 1) return record;
  if (record->count < *count) {
    throw Error(Failure::unavailable,
                where + " is bound to count " + std::to_string(record->count) +
                    " but its counter, NV index " + hex_handle(counter_.handle) + ", is at " +
                    std::to_string(*count) +
                    ": an earlier checkpoint was written back (rolled back). Once the cause is "
                    "known, undefine both indices (" +
                    undefine + ") to start a new checkpoint");
  }
  throw Error(Failure::unavailable, where + " is bound to count " + std::to_string(record->count) +
                                        ", ahead of its counter at " + std::to_string(*count) +
                                        ", which no store of this vault leaves: it was written "
                                        "by someone else holding the audit key");
}

}  // namespace m2mvault::hsm::tpm2
