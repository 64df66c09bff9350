// The tpm2 SecureElement: the contract the vault relies on, on swtpm, and
// the TPM counterparts of the PKCS#11 token-object tests (a Ke cannot be
// unsealed; a signing key's blob does not load into another TPM).
#include <openssl/evp.h>
#include <sys/stat.h>

#include <memory>

#include "hsm/tpm2/tpm2_backend.h"
#include "tests/hsm/tpm2/tpm2_test_support.h"

namespace m2mvault::hsm::tpm2::testing {
namespace {

std::unique_ptr<SecureElement> open_on(const Swtpm& swtpm, const TempDir& state) {
  return open(BackendConfig{swtpm.config(), state.path()});
}

TEST(Tpm2Backend, InfoNamesTheBackendTctiAndModel) {
  Swtpm swtpm;
  TempDir state;
  const auto se = open_on(swtpm, state);
  const BackendInfo info = se->info();
  EXPECT_EQ(info.backend, "tpm2");
  EXPECT_EQ(info.module, swtpm.tcti());
  EXPECT_FALSE(info.token_model.empty());
}

TEST(Tpm2Backend, PskIsSealedAndItsCheckValueComputedFromTheUnsealedBytes) {
  Swtpm swtpm;
  TempDir state;
  const auto se = open_on(swtpm, state);
  const Bytes kpsa = from_hex("1a2b3c4d5e6f7a8b");
  const Bytes label = text_bytes("m2mvault key check value");
  const auto wrapped = se->wrap_secret_with_mac(kpsa, label);
  EXPECT_EQ(blob_kind(wrapped.blob), ObjectKind::sealed_data);
  EXPECT_EQ(wrapped.mac, openssl_hmac(kpsa, label));
  EXPECT_TRUE(same_bytes(se->unwrap_secret(wrapped.blob), kpsa));
  const Hmac mac = se->hmac_sha256(WrappedSecretRef{wrapped.blob}, label);
  EXPECT_EQ(mac, openssl_hmac(kpsa, label));
}

TEST(Tpm2Backend, KeIsAnHmacKeyThatCannotBeUnsealed) {
  Swtpm swtpm;
  TempDir state;
  const auto se = open_on(swtpm, state);
  const Bytes ke = random_bytes(32);
  const Bytes id = se->new_object_id();
  const Bytes blob = se->create_token_secret(id, ke);
  ASSERT_FALSE(blob.empty());
  EXPECT_EQ(blob_kind(blob), ObjectKind::hmac_key);
  const TokenKeyRef ref{"", id, "", blob};
  const Bytes data = text_bytes("oneM2M Enrolment Key to Master Credential derivationmaf.example");
  const Hmac mac = se->hmac_sha256(ref, data);
  EXPECT_EQ(mac, openssl_hmac(ke, data));
  // The TPM refuses TPM2_Unseal of an HMAC key (TPM_RC_ATTRIBUTES).
  EXPECT_EQ(failure_of_call([&] { se->unwrap_secret(blob); }), Failure::invalid_argument);
  // A ref without its blob (a PKCS#11 row) names nothing here.
  EXPECT_EQ(failure_of_call([&] {
              se->hmac_sha256(TokenKeyRef{"", id, ""}, data);
            }),
            Failure::not_found);
}

TEST(Tpm2Backend, DerivationFromKeIsSealedWithTheRightValue) {
  Swtpm swtpm;
  TempDir state;
  const auto se = open_on(swtpm, state);
  const Bytes ke = random_bytes(32);
  const Bytes blob = se->create_token_secret(se->new_object_id(), ke);
  const Bytes data = text_bytes(
      "oneM2M Enrolment Key to Provisioned Secure Connection Key "
      "derivationenrolee-b.example");
  const Bytes label = text_bytes("m2mvault key check value");
  const auto derived =
      se->derive_wrapped_secret_with_mac(TokenKeyRef{"", {}, "", blob}, data, label);
  const Hmac expected = openssl_hmac(ke, data);
  EXPECT_TRUE(same_bytes(se->unwrap_secret(derived.blob), expected));
  EXPECT_EQ(derived.mac, openssl_hmac(expected, label));
}

TEST(Tpm2Backend, SigningKeySignsAndItsBlobDoesNotLoadInAnotherTpm) {
  Swtpm swtpm;
  Swtpm other;
  TempDir state;
  TempDir other_state;
  const auto se = open_on(swtpm, state);
  const auto foreign = open_on(other, other_state);
  const auto key = se->generate_signing_key(se->new_object_id(), SigningAlgorithm::ec_p256);
  const TokenKeyRef ref{"", {}, "", key.blob};
  EXPECT_EQ(se->public_key(ref), key.public_key);
  const Pkey public_key = parse_spki(key.public_key);
  ASSERT_TRUE(public_key);
  const Bytes message = text_bytes("ServerKeyExchange");
  for (const EVP_MD* md : {EVP_sha256(), EVP_sha384(), EVP_sha512()}) {
    const Bytes signature = se->sign_digest(ref, SignatureScheme::ecdsa, digest_of(md, message));
    EXPECT_TRUE(digest_verifies(public_key.get(), md, message, signature)) << EVP_MD_get0_name(md);
  }
  // TPM2_Load under the other TPM's primary fails its integrity check.
  EXPECT_EQ(failure_of_call([&] {
              foreign->sign_digest(ref, SignatureScheme::ecdsa, digest_of(EVP_sha256(), message));
            }),
            Failure::not_found);
  EXPECT_EQ(failure_of_call(
                [&] { se->generate_signing_key(se->new_object_id(), SigningAlgorithm::rsa_2048); }),
            Failure::unsupported);
}

TEST(Tpm2Backend, PrivateKeyIsAnEvpPkeyThatSignsInTheTpm) {
  Swtpm swtpm;
  TempDir state;
  const auto se = open_on(swtpm, state);
  const auto key = se->generate_signing_key(se->new_object_id(), SigningAlgorithm::ec_p256);
  const std::shared_ptr<EVP_PKEY> pkey = se->private_key(TokenKeyRef{"", {}, "", key.blob});
  const Pkey public_key = parse_spki(key.public_key);
  ASSERT_TRUE(pkey && public_key);
  EXPECT_EQ(EVP_PKEY_eq(pkey.get(), public_key.get()), 1);
  const Bytes message = text_bytes("certificate request");
  for (const EVP_MD* md : {EVP_sha256(), EVP_sha384()}) {
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    ASSERT_EQ(EVP_DigestSignInit(ctx.get(), nullptr, md, nullptr, pkey.get()), 1);
    std::size_t size = 0;
    ASSERT_EQ(EVP_DigestSign(ctx.get(), nullptr, &size, message.data(), message.size()), 1);
    Bytes signature(size);
    ASSERT_EQ(EVP_DigestSign(ctx.get(), signature.data(), &size, message.data(), message.size()),
              1);
    signature.resize(size);
    EXPECT_TRUE(digest_verifies(public_key.get(), md, message, signature));
  }
}

// No key, that is: the audit checkpoint is the one thing in TPM NV
// (nv_checkpoint_test.cpp).
TEST(Tpm2Backend, NoKeyPersistsInTheTpm) {
  Swtpm swtpm;
  TempDir state;
  const auto se = open_on(swtpm, state);
  const Bytes id = se->new_object_id();
  (void)se->create_token_secret(id, random_bytes(32));
  EXPECT_FALSE(se->token_object_exists(id));
  EXPECT_TRUE(se->list_vault_objects().empty());
  EXPECT_NO_THROW(se->destroy_token_object(id));
}

TEST(Tpm2Backend, AuditKeyLivesInTheStateDirectoryAndTheCheckpointInTheTpm) {
  Swtpm swtpm;
  TempDir state;
  const Bytes data = text_bytes("record");
  Hmac first{};
  {
    const auto se = open_on(swtpm, state);
    first = se->audit_mac(data);
    EXPECT_FALSE(se->load_audit_checkpoint());
    se->store_audit_checkpoint(text_bytes("one"));
    se->store_audit_checkpoint(text_bytes("two"));
    const Bytes nonce = se->begin_audit_epoch();
    const Hmac epoch = se->audit_epoch_mac(data);
    EXPECT_EQ(se->audit_epoch_mac_for(nonce, data), epoch);
  }
  struct stat st {};
  ASSERT_EQ(::stat((state.path() / kAuditKeyFile).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_FALSE(std::filesystem::exists(state.path() / kLegacyAuditCheckpointFile));
  const auto se = open_on(swtpm, state);
  EXPECT_EQ(se->audit_mac(data), first);
  EXPECT_EQ(se->load_audit_checkpoint(), text_bytes("two"));
}

TEST(Tpm2Backend, EveryKeyWorksAfterTheTpmIsReset) {
  Swtpm swtpm;
  TempDir state;
  const auto se = open_on(swtpm, state);
  const Bytes kpsa = random_bytes(16);
  const Bytes ke = random_bytes(32);
  const Bytes psk_blob = se->wrap_secret(kpsa);
  const TokenKeyRef ke_ref{"", {}, "", se->create_token_secret({}, ke)};
  const auto signing = se->generate_signing_key({}, SigningAlgorithm::ec_p256);
  const Pkey public_key = parse_spki(signing.public_key);
  const Hmac audit = se->audit_mac(text_bytes("a"));
  for (int reset = 0; reset < 2; ++reset) {
    swtpm.restart();
    EXPECT_TRUE(same_bytes(se->unwrap_secret(psk_blob), kpsa));
    const Hmac mac = se->hmac_sha256(ke_ref, text_bytes("x"));
    EXPECT_EQ(mac, openssl_hmac(ke, text_bytes("x")));
    const Bytes message = text_bytes("after reset");
    EXPECT_TRUE(
        digest_verifies(public_key.get(), EVP_sha256(), message,
                        se->sign_digest(TokenKeyRef{"", {}, "", signing.blob},
                                        SignatureScheme::ecdsa, digest_of(EVP_sha256(), message))));
    EXPECT_EQ(se->audit_mac(text_bytes("a")), audit);
  }
}

}  // namespace
}  // namespace m2mvault::hsm::tpm2::testing
