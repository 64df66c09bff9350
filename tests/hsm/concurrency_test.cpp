// Concurrent callers each get correct results (the session pool and the
// unwrap cache under load).
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "tests/hsm/hsm_environment.h"
#include "tests/hsm/test_support.h"

namespace m2mvault::hsm::testing {
namespace {

TEST(Concurrency, EightThreadsHmacSignAndWrapCorrectly) {
  SecureElement& backend = *setup().backend;
  const Bytes key = from_hex("1a2b3c4d5e6f7a8b");
  const Bytes blob = backend.wrap_secret(key);
  const Bytes signing_id = backend.new_object_id();
  const Bytes spki = backend.generate_signing_key(signing_id, SigningAlgorithm::ec_p256).public_key;
  const Pkey public_key = parse_spki(spki);
  ASSERT_TRUE(public_key);

  std::atomic<int> failures{0};
  std::atomic<int> operations{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      try {
        for (int i = 0; i < 60; ++i) {
          const Bytes data = random_bytes(1 + (t * 7 + i) % 90);
          if (backend.hmac_sha256(WrappedSecretRef{blob}, data) != openssl_hmac(key, data)) {
            ++failures;
          }
          const Bytes digest = sha256(data);
          const Bytes signature =
              backend.sign_digest(TokenKeyRef{"", signing_id, ""}, SignatureScheme::ecdsa, digest);
          if (!verifies(public_key.get(), SignatureScheme::ecdsa, digest, signature)) ++failures;
          const Bytes secret = random_bytes(1 + (t + i) % 64);
          const Bytes own_blob = backend.wrap_secret(secret);
          const SecureBuffer plain = backend.unwrap_secret(own_blob);
          if (!std::equal(secret.begin(), secret.end(), plain.data(),
                          plain.data() + plain.size())) {
            ++failures;
          }
          if (backend.hmac_sha256(WrappedSecretRef{own_blob}, data) != openssl_hmac(secret, data)) {
            ++failures;
          }
          operations += 5;
        }
      } catch (const std::exception& error) {
        ADD_FAILURE() << error.what();
        ++failures;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(operations.load(), 8 * 60 * 5);
  backend.destroy_token_object(signing_id);
}

TEST(Concurrency, SmallUnwrapCacheEvictsWhileInUse) {
  pkcs11::Config config = setup().config;
  config.unwrap_cache = 2;
  config.sessions = 3;
  auto backend = pkcs11::open(config);
  std::vector<Bytes> keys;
  std::vector<Bytes> blobs;
  for (int i = 0; i < 6; ++i) {
    keys.push_back(random_bytes(8 + i));
    blobs.push_back(backend->wrap_secret(keys.back()));
  }
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 100; ++i) {
        const std::size_t k = static_cast<std::size_t>(t + i) % keys.size();
        const Bytes data{static_cast<std::uint8_t>(i)};
        if (backend->hmac_sha256(WrappedSecretRef{blobs[k]}, data) != openssl_hmac(keys[k], data)) {
          ++failures;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
}

}  // namespace
}  // namespace m2mvault::hsm::testing
