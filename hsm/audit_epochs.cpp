// SHA-256's block function through the low-level API, deprecated in
// OpenSSL 3.0 but kept: its state is a plain struct that can be copied, which
// is what an HMAC with precomputed pad states needs (EVP contexts allocate on
// every copy).
#define OPENSSL_SUPPRESS_DEPRECATED 1

#include "hsm/audit_epochs.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <array>
#include <cstring>

namespace m2mvault::hsm {
namespace {

constexpr std::size_t kBlock = 64;  // SHA-256's block, HMAC's pad length

// The SHA-256 states after the inner and the outer pad block of HMAC with
// `key` (RFC 2104; a key of at most one block is zero-padded).
SecureBuffer pad_states(const SecureBuffer& key) {
  if (key.size() > kBlock) throw Error(Failure::internal, "audit epoch key longer than a block");
  SecureBuffer states(2 * sizeof(SHA256_CTX));
  SecureBuffer pad(kBlock);
  auto* inner = reinterpret_cast<SHA256_CTX*>(states.data());
  auto* outer = inner + 1;
  for (const auto& [state, byte] : {std::pair{inner, 0x36}, std::pair{outer, 0x5c}}) {
    std::memset(pad.data(), byte, kBlock);
    for (std::size_t i = 0; i < key.size(); ++i) pad.data()[i] ^= key.data()[i];
    if (SHA256_Init(state) != 1 || SHA256_Update(state, pad.data(), kBlock) != 1)
      throw Error(Failure::internal, "SHA-256 failed");
  }
  return states;
}

}  // namespace

AuditEpochs::AuditEpochs(AuditMac audit_mac) : audit_mac_(std::move(audit_mac)) {}

AuditEpochs::~AuditEpochs() = default;

Bytes AuditEpochs::begin() {
  Bytes nonce(16);
  if (RAND_bytes(nonce.data(), static_cast<int>(nonce.size())) != 1)
    throw Error(Failure::internal, "RAND_bytes failed");
  SecureBuffer key = epoch_key(nonce);
  SecureBuffer states = pad_states(key);
  std::lock_guard lock(mutex_);
  key_ = std::move(key);
  midstates_ = std::move(states);
  return nonce;
}

Hmac AuditEpochs::mac(std::span<const std::uint8_t> data) {
  std::lock_guard lock(mutex_);
  if (midstates_.size() != 2 * sizeof(SHA256_CTX))
    throw Error(Failure::internal, "no audit epoch has begun");
  const auto* pads = reinterpret_cast<const SHA256_CTX*>(midstates_.data());
  std::array<std::uint8_t, SHA256_DIGEST_LENGTH> inner{};
  Hmac out{};
  SHA256_CTX inner_work = pads[0];
  SHA256_CTX outer_work = pads[1];
  const bool ok = SHA256_Update(&inner_work, data.data(), data.size()) == 1 &&
                  SHA256_Final(inner.data(), &inner_work) == 1 &&
                  SHA256_Update(&outer_work, inner.data(), inner.size()) == 1 &&
                  SHA256_Final(out.data(), &outer_work) == 1;
  OPENSSL_cleanse(&inner_work, sizeof inner_work);
  OPENSSL_cleanse(&outer_work, sizeof outer_work);
  OPENSSL_cleanse(inner.data(), inner.size());
  if (!ok) throw Error(Failure::internal, "HMAC-SHA-256 failed");
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

}  // namespace m2mvault::hsm
