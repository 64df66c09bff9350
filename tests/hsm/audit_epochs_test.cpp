// AuditEpochs::mac() computes HMAC-SHA-256 from precomputed pad states; it
// must agree with OpenSSL's one-shot HMAC() and with Python's hmac module
// for every message length around SHA-256's block boundaries.
#include "hsm/audit_epochs.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <array>
#include <string>
#include <vector>

namespace m2mvault::hsm {
namespace {

// The token's audit key, as a test stand-in: a fixed key in software.
Hmac token_mac(std::span<const std::uint8_t> data) {
  std::array<std::uint8_t, 32> key{};
  for (std::size_t i = 0; i < key.size(); ++i) key[i] = static_cast<std::uint8_t>(i);
  Hmac out{};
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), key.size(), data.data(), data.size(), out.data(), &len);
  return out;
}

Hmac one_shot(const Hmac& key, std::span<const std::uint8_t> data) {
  Hmac out{};
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), key.size(), data.data(), data.size(), out.data(), &len);
  return out;
}

std::string hex(const Hmac& mac) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (auto b : mac) {
    out += kDigits[b >> 4];
    out += kDigits[b & 0xf];
  }
  return out;
}

TEST(AuditEpochs, MacBeforeAnEpochBeginsFails) {
  AuditEpochs epochs(token_mac);
  const std::vector<std::uint8_t> data{1, 2, 3};
  EXPECT_THROW(epochs.mac(data), Error);
}

TEST(AuditEpochs, MacAgreesWithOneShotHmacAtEveryBlockBoundary) {
  AuditEpochs epochs(token_mac);
  const Bytes nonce = epochs.begin();
  ASSERT_EQ(nonce.size(), 16u);
  Bytes label(kAuditEpochLabel.begin(), kAuditEpochLabel.end());
  label.insert(label.end(), nonce.begin(), nonce.end());
  const Hmac epoch_key = token_mac(label);
  for (std::size_t size : {0, 1, 31, 55, 56, 63, 64, 65, 119, 120, 128, 350, 1000, 4096}) {
    std::vector<std::uint8_t> data(size);
    for (std::size_t i = 0; i < size; ++i) data[i] = static_cast<std::uint8_t>(i * 31 + 7);
    EXPECT_EQ(hex(epochs.mac(data)), hex(one_shot(epoch_key, data))) << size << " bytes";
    EXPECT_EQ(epochs.mac(data), epochs.mac_for(nonce, data)) << size << " bytes";
  }
}

TEST(AuditEpochs, MacMatchesPythonsHmacForAKnownNonce) {
  // python3: ek = hmac.new(bytes(range(32)), b"m2mvault audit epoch" + b"\xa5" * 16,
  //   hashlib.sha256).digest(); hmac.new(ek, b'{"seq":1}', hashlib.sha256).hexdigest()
  AuditEpochs epochs(token_mac);
  epochs.begin();
  const Bytes nonce(16, 0xa5);
  const std::string record = R"({"seq":1})";
  const std::vector<std::uint8_t> data(record.begin(), record.end());
  EXPECT_EQ(hex(epochs.mac_for(nonce, data)),
            "1f7bd4c46848e7f9fb1c1f743d68348fb24fa95de56431600e140c0185898bed");
}

TEST(AuditEpochs, ANewEpochChangesTheKey) {
  AuditEpochs epochs(token_mac);
  const std::vector<std::uint8_t> data{'x'};
  const Bytes first = epochs.begin();
  const Hmac before = epochs.mac(data);
  const Bytes second = epochs.begin();
  ASSERT_NE(first, second);
  EXPECT_NE(epochs.mac(data), before);
  EXPECT_EQ(epochs.mac_for(first, data), before);
}

}  // namespace
}  // namespace m2mvault::hsm
