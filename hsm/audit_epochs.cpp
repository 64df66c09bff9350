#include "hsm/audit_epochs.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/params.h>
#include <openssl/rand.h>

namespace m2mvault::hsm {

void AuditEpochs::MacCtxFree::operator()(EVP_MAC_CTX* ctx) const noexcept {
  EVP_MAC_CTX_free(ctx);
}

AuditEpochs::AuditEpochs(AuditMac audit_mac) : audit_mac_(std::move(audit_mac)) {}

AuditEpochs::~AuditEpochs() = default;

Bytes AuditEpochs::begin() {
  Bytes nonce(16);
  if (RAND_bytes(nonce.data(), static_cast<int>(nonce.size())) != 1)
    throw Error(Failure::internal, "RAND_bytes failed");
  SecureBuffer key = epoch_key(nonce);
  MacCtxPtr ctx = keyed_hmac(key);
  std::lock_guard lock(mutex_);
  key_ = std::move(key);
  ctx_ = std::move(ctx);
  return nonce;
}

Hmac AuditEpochs::mac(std::span<const std::uint8_t> data) {
  std::lock_guard lock(mutex_);
  if (!ctx_) throw Error(Failure::internal, "no audit epoch has begun");
  // A copy of the keyed context: no digest fetch or key setup per record.
  MacCtxPtr ctx(EVP_MAC_CTX_dup(ctx_.get()));
  Hmac out{};
  std::size_t len = 0;
  if (!ctx || EVP_MAC_update(ctx.get(), data.data(), data.size()) != 1 ||
      EVP_MAC_final(ctx.get(), out.data(), &len, out.size()) != 1 || len != out.size()) {
    throw Error(Failure::internal, "HMAC-SHA-256 failed");
  }
  return out;
}

Hmac AuditEpochs::mac_for(std::span<const std::uint8_t> nonce, std::span<const std::uint8_t> data) {
  std::lock_guard lock(mutex_);
  if (verify_nonce_ != Bytes(nonce.begin(), nonce.end())) {
    verify_key_ = epoch_key(nonce);
    verify_nonce_.assign(nonce.begin(), nonce.end());
  }
  Hmac out{};
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), verify_key_.data(), static_cast<int>(verify_key_.size()), data.data(),
            data.size(), out.data(), &len)) {
    throw Error(Failure::internal, "HMAC-SHA-256 failed");
  }
  return out;
}

SecureBuffer AuditEpochs::epoch_key(std::span<const std::uint8_t> nonce) {
  Bytes input(kAuditEpochLabel.begin(), kAuditEpochLabel.end());
  input.insert(input.end(), nonce.begin(), nonce.end());
  Hmac key = audit_mac_(input);
  SecureBuffer out = SecureBuffer::copy_of(key);
  OPENSSL_cleanse(key.data(), key.size());
  return out;
}

// An HMAC-SHA-256 context keyed with `key` (OpenSSL wipes its copy on free).
AuditEpochs::MacCtxPtr AuditEpochs::keyed_hmac(const SecureBuffer& key) {
  static EVP_MAC* hmac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  char digest[] = "SHA256";
  const OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", digest, 0),
                               OSSL_PARAM_construct_end()};
  MacCtxPtr ctx(hmac ? EVP_MAC_CTX_new(hmac) : nullptr);
  if (!ctx || EVP_MAC_init(ctx.get(), key.data(), key.size(), params) != 1)
    throw Error(Failure::internal, "cannot key HMAC-SHA-256");
  return ctx;
}

}  // namespace m2mvault::hsm
