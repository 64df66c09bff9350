// Audit epochs (SecureElement::begin_audit_epoch()), shared by the backends:
// an epoch key is HMAC-SHA-256(audit key, kAuditEpochLabel || nonce),
// computed by the secure element through `audit_mac`, then held here in a
// locked buffer so that a record costs a software HMAC.
#pragma once

#include <openssl/types.h>

#include <functional>
#include <memory>
#include <mutex>
#include <span>

#include "hsm/secure_buffer.h"
#include "hsm/secure_element.h"

namespace m2mvault::hsm {

class AuditEpochs {
 public:
  using AuditMac = std::function<Hmac(std::span<const std::uint8_t>)>;
  explicit AuditEpochs(AuditMac audit_mac);
  ~AuditEpochs();
  AuditEpochs(const AuditEpochs&) = delete;
  AuditEpochs& operator=(const AuditEpochs&) = delete;

  // The SecureElement methods of the same names; thread-safe.
  Bytes begin();
  Hmac mac(std::span<const std::uint8_t> data);
  Hmac mac_for(std::span<const std::uint8_t> nonce, std::span<const std::uint8_t> data);

 private:
  SecureBuffer epoch_key(std::span<const std::uint8_t> nonce);
  AuditMac audit_mac_;
  std::mutex mutex_;
  SecureBuffer key_;  // the current epoch's key
  // HMAC-SHA-256 with key_, as two SHA-256 states: after the key's inner
  // pad block and after its outer pad block. A record then costs a copy of
  // each and the hashing of its own bytes: no allocation, no key setup.
  SecureBuffer midstates_;
  Bytes verify_nonce_;  // the epoch whose key verify_key_ holds
  SecureBuffer verify_key_;
};

}  // namespace m2mvault::hsm
