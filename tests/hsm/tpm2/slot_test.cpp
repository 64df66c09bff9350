// Many more keys than the TPM has slots, used from many threads, with no
// resource manager in front of swtpm (3 transient slots).
#include <atomic>
#include <random>
#include <thread>

#include "tests/hsm/tpm2/tpm2_test_support.h"

namespace m2mvault::hsm::tpm2::testing {
namespace {

struct Key {
  ObjectKind kind;
  Bytes secret;  // sealed or HMAC key bytes
  Bytes blob;
  Pkey public_key;
};

TEST(Slots, TwoHundredMixedKeysFromSixteenThreads) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  std::vector<Key> keys(200);
  for (std::size_t i = 0; i < keys.size(); ++i) {
    Key& key = keys[i];
    switch (i % 3) {
      case 0:
        key.kind = ObjectKind::sealed_data;
        key.secret = random_bytes(32);
        key.blob = tpm.seal(key.secret);
        break;
      case 1:
        key.kind = ObjectKind::hmac_key;
        key.secret = random_bytes(32);
        key.blob = tpm.create_hmac_key(key.secret);
        break;
      default: {
        key.kind = ObjectKind::signing_key;
        auto pair = tpm.generate_signing_key();
        key.blob = std::move(pair.blob);
        key.public_key = parse_spki(pair.public_key);
      }
    }
  }

  constexpr int kThreads = 16;
  constexpr int kOperationsPerThread = 40;
  std::atomic<int> failures{0};
  std::atomic<int> done{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 random(static_cast<unsigned>(t) * 7919u + 1u);
      std::uniform_int_distribution<std::size_t> pick(0, keys.size() - 1);
      try {
        for (int i = 0; i < kOperationsPerThread; ++i) {
          const Key& key = keys[pick(random)];
          const Bytes data = random_bytes(1 + static_cast<std::size_t>(i));
          bool ok = false;
          switch (key.kind) {
            case ObjectKind::sealed_data:
              ok = same_bytes(tpm.unseal(key.blob), key.secret);
              break;
            case ObjectKind::hmac_key:
              ok = tpm.hmac_sha256(key.blob, data) == openssl_hmac(key.secret, data);
              break;
            case ObjectKind::signing_key: {
              const Bytes signature =
                  tpm.sign_digest(key.blob, DigestAlgorithm::sha256, digest_of(EVP_sha256(), data));
              ok = digest_verifies(key.public_key.get(), EVP_sha256(), data, signature);
            }
          }
          if (!ok) ++failures;
          ++done;
        }
      } catch (const std::exception& error) {
        ADD_FAILURE() << error.what();
        ++failures;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(done.load(), kThreads * kOperationsPerThread);
  const Stats stats = tpm.stats();
  EXPECT_EQ(stats.loaded_capacity, 2u);
  EXPECT_GT(stats.evictions, 100u);
  EXPECT_EQ(stats.reconnects, 0u);
}

TEST(Slots, OneLoadedObjectStillWorks) {
  Swtpm swtpm;
  Config config = swtpm.config();
  config.max_loaded_objects = 1;
  Tpm2 tpm(config);
  const Bytes ke = random_bytes(32);
  const Bytes ke_blob = tpm.create_hmac_key(ke);
  const Bytes psk = random_bytes(16);
  const Bytes psk_blob = tpm.seal(psk);
  for (int i = 0; i < 5; ++i) {
    const Bytes derived = tpm.derive_sealed(ke_blob, text_bytes("x"));
    EXPECT_TRUE(same_bytes(tpm.unseal(derived), openssl_hmac(ke, text_bytes("x"))));
    EXPECT_TRUE(same_bytes(tpm.unseal(psk_blob), psk));
  }
}

}  // namespace
}  // namespace m2mvault::hsm::tpm2::testing
