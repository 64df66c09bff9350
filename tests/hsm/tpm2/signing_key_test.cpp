// ECC P-256 signing keys generated in the TPM; one TPM2_Sign per signature.
#include "tests/hsm/tpm2/tpm2_test_support.h"

namespace m2mvault::hsm::tpm2::testing {
namespace {

TEST(SigningKey, EcdsaSha256VerifiesWithOpenSsl) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  const auto key = tpm.generate_signing_key();
  EXPECT_EQ(blob_kind(key.blob), ObjectKind::signing_key);
  EXPECT_EQ(signing_public_key(key.blob), key.public_key);
  const Pkey public_key = parse_spki(key.public_key);
  ASSERT_TRUE(public_key);
  EXPECT_EQ(EVP_PKEY_get_bits(public_key.get()), 256);
  for (int i = 0; i < 5; ++i) {
    const Bytes message = random_bytes(100 + static_cast<std::size_t>(i));
    const Bytes signature =
        tpm.sign_digest(key.blob, DigestAlgorithm::sha256, digest_of(EVP_sha256(), message));
    EXPECT_TRUE(digest_verifies(public_key.get(), EVP_sha256(), message, signature));
  }
}

TEST(SigningKey, EcdsaSha384VerifiesWithOpenSsl) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  const auto key = tpm.generate_signing_key();
  const Pkey public_key = parse_spki(key.public_key);
  ASSERT_TRUE(public_key);
  const Bytes message = text_bytes("TLS 1.2 ServerKeyExchange params");
  const Bytes signature =
      tpm.sign_digest(key.blob, DigestAlgorithm::sha384, digest_of(EVP_sha384(), message));
  EXPECT_TRUE(digest_verifies(public_key.get(), EVP_sha384(), message, signature));
  EXPECT_FALSE(digest_verifies(public_key.get(), EVP_sha384(), text_bytes("other"), signature));
}

TEST(SigningKey, DigestOfWrongLengthIsInvalidArgument) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  const auto key = tpm.generate_signing_key();
  EXPECT_EQ(failure_of_call([&] { tpm.sign_digest(key.blob, DigestAlgorithm::sha256, Bytes(48)); }),
            Failure::invalid_argument);
}

TEST(SigningKey, BlobCannotBeLoadedIntoAnotherTpm) {
  Swtpm first;
  Swtpm second;
  Tpm2 tpm(first.config());
  Tpm2 other(second.config());
  const auto key = tpm.generate_signing_key();
  const Bytes digest = digest_of(EVP_sha256(), text_bytes("message"));
  EXPECT_FALSE(tpm.sign_digest(key.blob, DigestAlgorithm::sha256, digest).empty());
  try {
    other.sign_digest(key.blob, DigestAlgorithm::sha256, digest);
    FAIL() << "a signing key was used in another TPM";
  } catch (const TpmError& error) {
    EXPECT_EQ(error.failure(), Failure::not_found) << error.what();
    EXPECT_EQ(tpm_error_number(error.rc()), TPM2_RC_INTEGRITY) << error.what();
  }
  // Likewise a Ke and a sealed PSK.
  const Bytes ke = tpm.create_hmac_key(random_bytes(32));
  EXPECT_EQ(failure_of_call([&] { other.hmac_sha256(ke, text_bytes("x")); }), Failure::not_found);
  const Bytes kpsa = tpm.seal(random_bytes(32));
  EXPECT_EQ(failure_of_call([&] { other.unseal(kpsa); }), Failure::not_found);
}

}  // namespace
}  // namespace m2mvault::hsm::tpm2::testing
