// A TPM object is an HMAC key or unsealable data, never both; the TPM says so.
#include "tests/hsm/tpm2/tpm2_test_support.h"

namespace m2mvault::hsm::tpm2::testing {
namespace {

TEST(ObjectKind, HmacKeyCannotBeUnsealed) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  const Bytes ke = tpm.create_hmac_key(random_bytes(32));
  EXPECT_EQ(tpm_error_of([&] { tpm.unseal(ke); }), TPM2_RC_ATTRIBUTES);
  EXPECT_EQ(failure_of_call([&] { tpm.unseal(ke); }), Failure::invalid_argument);
  const Bytes generated = tpm.generate_hmac_key();
  EXPECT_EQ(tpm_error_of([&] { tpm.unseal(generated); }), TPM2_RC_ATTRIBUTES);
}

TEST(ObjectKind, SealedDataCannotHmac) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  const Bytes kpsa = tpm.seal(random_bytes(32));
  EXPECT_EQ(tpm_error_of([&] { tpm.hmac_sha256(kpsa, text_bytes("data")); }), TPM2_RC_KEY);
  EXPECT_EQ(failure_of_call([&] { tpm.derive_sealed(kpsa, text_bytes("data")); }),
            Failure::invalid_argument);
}

TEST(ObjectKind, SigningKeyNeitherUnsealsNorHmacs) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  const Bytes key = tpm.generate_signing_key().blob;
  EXPECT_NE(tpm_error_of([&] { tpm.unseal(key); }), 0u);
  EXPECT_NE(tpm_error_of([&] { tpm.hmac_sha256(key, text_bytes("data")); }), 0u);
  const Bytes kpsa = tpm.seal(random_bytes(32));
  EXPECT_NE(tpm_error_of([&] { tpm.sign_digest(kpsa, DigestAlgorithm::sha256, Bytes(32, 1)); }),
            0u);
}

}  // namespace
}  // namespace m2mvault::hsm::tpm2::testing
