// The PSK kinds (Kpsa, Kpm, Km, Kc, pairwiseE2EKey) as sealed data objects.
#include "tests/hsm/tpm2/tpm2_test_support.h"

namespace m2mvault::hsm::tpm2::testing {
namespace {

TEST(SealedData, SealThenUnsealReturnsTheSecret) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  for (const std::size_t size : {1u, 8u, 32u, 48u, 128u}) {
    const Bytes secret = random_bytes(size);
    const Bytes blob = tpm.seal(secret);
    EXPECT_EQ(blob_kind(blob), ObjectKind::sealed_data);
    EXPECT_TRUE(same_bytes(tpm.unseal(blob), secret)) << size << " bytes";
  }
}

TEST(SealedData, BlobHoldsNoPlaintext) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  const Bytes secret = random_bytes(32);
  const Bytes blob = tpm.seal(secret);
  EXPECT_EQ(std::search(blob.begin(), blob.end(), secret.begin(), secret.end()), blob.end());
}

TEST(SealedData, EmptyOrOversizeSecretIsInvalidArgument) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  EXPECT_EQ(failure_of_call([&] { tpm.seal(Bytes{}); }), Failure::invalid_argument);
  EXPECT_EQ(failure_of_call([&] { tpm.seal(Bytes(kMaxSecretSize + 1, 7)); }),
            Failure::invalid_argument);
}

TEST(SealedData, SealWithMacReturnsTheCheckValue) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  const Bytes secret = random_bytes(32);
  const Bytes mac_data = text_bytes("check value");
  const auto sealed = tpm.seal_with_mac(secret, mac_data);
  EXPECT_EQ(sealed.mac, openssl_hmac(secret, mac_data));
  EXPECT_TRUE(same_bytes(tpm.unseal(sealed.blob), secret));
}

TEST(SealedData, TamperedBlobIsRefusedWithoutLeakingIt) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  const Bytes secret = random_bytes(32);
  Bytes blob = tpm.seal(secret);
  blob[blob.size() - 5] ^= 0x01;  // inside the encrypted private area
  try {
    tpm.unseal(blob);
    FAIL() << "a tampered blob was unsealed";
  } catch (const Error& error) {
    EXPECT_EQ(error.failure(), Failure::not_found) << error.what();
    EXPECT_NE(std::string(error.what()).find("TPM2_Load"), std::string::npos) << error.what();
  }
  EXPECT_EQ(failure_of_call([&] { tpm.unseal(Bytes{1, 2, 3}); }), Failure::invalid_argument);
}

TEST(SealedData, TamperedAuthValueFailsWithoutLockingTheTpm) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  const Bytes secret = random_bytes(32);
  const Bytes good = tpm.seal(secret);
  Bytes bad = good;
  bad[4] ^= 0x80;  // first byte of the auth value
  // Objects are noDA: the TPM answers TPM_RC_BAD_AUTH ("without DA
  // implications"), not TPM_RC_AUTH_FAIL, so failures never lock it out.
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(tpm_error_of([&] { tpm.unseal(bad); }), TPM2_RC_BAD_AUTH);
  }
  EXPECT_EQ(failure_of_call([&] { tpm.unseal(bad); }), Failure::invalid_argument);
  EXPECT_TRUE(same_bytes(tpm.unseal(good), secret));
}

}  // namespace
}  // namespace m2mvault::hsm::tpm2::testing
