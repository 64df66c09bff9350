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
  struct MacCtxFree {
    void operator()(EVP_MAC_CTX* ctx) const noexcept;
  };
  using MacCtxPtr = std::unique_ptr<EVP_MAC_CTX, MacCtxFree>;

  SecureBuffer epoch_key(std::span<const std::uint8_t> nonce);
  static MacCtxPtr keyed_hmac(const SecureBuffer& key);

  AuditMac audit_mac_;
  std::mutex mutex_;
  SecureBuffer key_;    // the current epoch's key
  MacCtxPtr ctx_;       // HMAC keyed with it
  Bytes verify_nonce_;  // the epoch whose key verify_key_ holds
  SecureBuffer verify_key_;
};

}  // namespace m2mvault::hsm
