// The PSK kinds: wrapped at rest under the KEK, used inside the token.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <iostream>

#include "hsm/pkcs11/pkcs11_backend.h"
#include "tests/hsm/hsm_environment.h"
#include "tests/hsm/raw_pkcs11.h"
#include "tests/hsm/test_support.h"

namespace m2mvault::hsm::testing {
namespace {

SecureElement& backend() {
  return *setup().backend;
}

bool contains(std::span<const std::uint8_t> haystack, std::span<const std::uint8_t> needle) {
  return std::search(haystack.begin(), haystack.end(), needle.begin(), needle.end()) !=
         haystack.end();
}

class WrapRoundTrip : public ::testing::TestWithParam<std::size_t> {};

TEST_P(WrapRoundTrip, UnwrapReturnsExactlyTheWrappedBytes) {
  const Bytes secret = random_bytes(GetParam());
  const Bytes blob = backend().wrap_secret(secret);
  // (A 1-byte secret turns up in any 40-byte blob by chance one time in seven.)
  if (secret.size() >= 8) {
    EXPECT_FALSE(contains(blob, secret));
  }
  const SecureBuffer plain = backend().unwrap_secret(blob);
  ASSERT_EQ(plain.size(), secret.size());
  EXPECT_TRUE(std::equal(secret.begin(), secret.end(), plain.data()));
  // A second unwrap goes through the cached session object.
  const SecureBuffer again = backend().unwrap_secret(blob);
  EXPECT_TRUE(std::equal(secret.begin(), secret.end(), again.data(), again.data() + again.size()));
}

INSTANTIATE_TEST_SUITE_P(Lengths, WrapRoundTrip,
                         ::testing::Values(1, 8, 16, 31, 32, 48, 64, 65, 100, 1024));

TEST(WrappedSecret, LengthsOutsideOneTo1024AreRefused) {
  for (std::size_t size : {std::size_t{0}, std::size_t{1025}}) {
    try {
      backend().wrap_secret(Bytes(size, 0x11));
      FAIL() << size;
    } catch (const Error& error) {
      EXPECT_EQ(error.failure(), Failure::invalid_argument);
    }
  }
}

TEST(WrappedSecret, DamagedBlobIsRefused) {
  Bytes blob = backend().wrap_secret(random_bytes(32));
  blob.back() ^= 0x01;
  try {
    backend().unwrap_secret(blob);
    FAIL();
  } catch (const Error& error) {
    EXPECT_EQ(error.failure(), Failure::invalid_argument) << error.what();
  }
  EXPECT_THROW(backend().unwrap_secret(Bytes{1, 2, 3}), Error);
}

TEST(WrappedSecret, HmacWithTheSeedKpsaMatchesOpenSsl) {
  const Bytes kpsa = from_hex("1a2b3c4d5e6f7a8b");
  const Bytes data = text_bytes("oneM2M Kpsa HMAC check");
  const Bytes blob = backend().wrap_secret(kpsa);
  EXPECT_EQ(backend().hmac_sha256(WrappedSecretRef{blob}, data), openssl_hmac(kpsa, data));
}

TEST(WrappedSecret, HmacWith32And48ByteKeysMatchesOpenSsl) {
  for (std::size_t size : {32, 48, 64, 65, 100, 1024}) {
    const Bytes key = random_bytes(size);
    const Bytes data = random_bytes(77);
    const Bytes blob = backend().wrap_secret(key);
    EXPECT_EQ(backend().hmac_sha256(WrappedSecretRef{blob}, data), openssl_hmac(key, data)) << size;
    EXPECT_EQ(backend().hmac_sha256(WrappedSecretRef{blob}, {}), openssl_hmac(key, {})) << size;
  }
}

TEST(TokenSecret, HmacWithKeMatchesOpenSsl) {
  for (std::size_t size : {8, 32, 48, 100}) {
    const Bytes ke = random_bytes(size);
    const Bytes id = backend().new_object_id();
    ASSERT_EQ(id.size(), 16u);
    backend().create_token_secret(id, ke);
    const Bytes data = text_bytes("oneM2M Enrolment Key to Master Credential derivation");
    EXPECT_EQ(backend().hmac_sha256(TokenKeyRef{"", id, ""}, data), openssl_hmac(ke, data));
    backend().destroy_token_object(id);
  }
}

TEST(Derivation, DerivedSecretUnwrapsToTheHmacOfItsParent) {
  const Bytes data = text_bytes(
      "oneM2M Enrolment Key to Provisioned Secure Connection Key "
      "derivationEnrolee-B-ID");
  // A wrapped parent.
  const Bytes parent = random_bytes(48);
  const Bytes derived =
      backend().derive_wrapped_secret(WrappedSecretRef{backend().wrap_secret(parent)}, data);
  const Hmac expected = openssl_hmac(parent, data);
  EXPECT_FALSE(contains(derived, expected));
  SecureBuffer plain = backend().unwrap_secret(derived);
  ASSERT_EQ(plain.size(), 32u);
  EXPECT_TRUE(std::equal(expected.begin(), expected.end(), plain.data()));

  // A token parent (Ke).
  const Bytes ke = random_bytes(48);
  const Bytes id = backend().new_object_id();
  backend().create_token_secret(id, ke);
  const Bytes from_ke = backend().derive_wrapped_secret(TokenKeyRef{"", id, ""}, data);
  plain = backend().unwrap_secret(from_ke);
  const Hmac expected_ke = openssl_hmac(ke, data);
  EXPECT_TRUE(std::equal(expected_ke.begin(), expected_ke.end(), plain.data()));
  backend().destroy_token_object(id);
}

TEST(WrappedSecret, MacTakenAtWrapTimeMatchesOpenSsl) {
  const Bytes label = text_bytes("m2mvault key check value");
  for (std::size_t size : {8u, 32u, 48u}) {
    const Bytes key = random_bytes(size);
    const auto wrapped = backend().wrap_secret_with_mac(key, label);
    EXPECT_EQ(wrapped.mac, openssl_hmac(key, label)) << size;
    SecureBuffer plain = backend().unwrap_secret(wrapped.blob);
    EXPECT_TRUE(std::equal(key.begin(), key.end(), plain.data(), plain.data() + plain.size())) << size;
  }
  const Bytes ke = random_bytes(32);
  const Bytes id = backend().new_object_id();
  backend().create_token_secret(id, ke);
  const Bytes data = text_bytes("oneM2M Enrolment Key to Master Credential derivationmaf.example.com");
  const auto derived = backend().derive_wrapped_secret_with_mac(TokenKeyRef{"", id, ""}, data, label);
  const Hmac km = openssl_hmac(ke, data);
  EXPECT_EQ(derived.mac, openssl_hmac(Bytes(km.begin(), km.end()), label));
  backend().destroy_token_object(id);
}

TEST(WrappedSecret, Wrapping1000SecretsCreatesNoPersistentObject) {
  RawSession raw(setup().config.module, pkcs11::kDefaultTokenLabel, setup().user_pin);
  const std::size_t before = raw.count_token_objects();
  ASSERT_GE(before, 1u);  // the KEK, at least
  for (int i = 0; i < 1000; ++i) {
    const Bytes blob = backend().wrap_secret(random_bytes(8 + i % 60));
    if (i % 10 == 0) backend().hmac_sha256(WrappedSecretRef{blob}, Bytes{1, 2, 3});
  }
  EXPECT_EQ(raw.count_token_objects(), before);
}

TEST(WrappedSecret, MeasuredRate) {
  using Clock = std::chrono::steady_clock;
  const Bytes secret = random_bytes(32);
  constexpr int kWraps = 2000;
  auto start = Clock::now();
  for (int i = 0; i < kWraps; ++i) backend().wrap_secret(secret);
  const double wrap_seconds = std::chrono::duration<double>(Clock::now() - start).count();

  const Bytes blob = backend().wrap_secret(secret);
  const Bytes data(64, 0x5a);
  constexpr int kHmacs = 5000;
  start = Clock::now();
  for (int i = 0; i < kHmacs; ++i) backend().hmac_sha256(WrappedSecretRef{blob}, data);
  const double hmac_seconds = std::chrono::duration<double>(Clock::now() - start).count();

  std::cout << "[ rate     ] wrap_secret " << static_cast<int>(kWraps / wrap_seconds)
            << " ops/s, hmac_sha256 (cached wrapped key) "
            << static_cast<int>(kHmacs / hmac_seconds) << " ops/s\n";
  RecordProperty("wrap_ops_per_s", static_cast<int>(kWraps / wrap_seconds));
  RecordProperty("hmac_ops_per_s", static_cast<int>(kHmacs / hmac_seconds));
}

}  // namespace
}  // namespace m2mvault::hsm::testing
