// Ke as an HMAC-SHA-256 key inside the TPM, and the TS-0003 10.3 derivations.
#include "tests/hsm/tpm2/tpm2_test_support.h"

namespace m2mvault::hsm::tpm2::testing {
namespace {

const Bytes kKpsaLabel =
    text_bytes("oneM2M Enrolment Key to Provisioned Secure Connection Key derivation");
const Bytes kKmLabel = text_bytes("oneM2M Enrolment Key to Master Credential derivation");

Bytes concat(Bytes a, const Bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST(HmacKey, ImportedKeMacsLikeOpenSsl) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  for (const std::size_t size : {8u, 32u, 64u, 65u, 100u, 128u}) {
    const Bytes ke = random_bytes(size);
    const Bytes blob = tpm.create_hmac_key(ke);
    EXPECT_EQ(blob_kind(blob), ObjectKind::hmac_key);
    for (const std::size_t length : {0u, 1u, 77u, 1024u}) {
      const Bytes data = random_bytes(length);
      EXPECT_EQ(tpm.hmac_sha256(blob, data), openssl_hmac(ke, data))
          << size << "-byte key, " << length << "-byte input";
    }
  }
}

TEST(HmacKey, InputOverOneKilobyteIsInvalidArgument) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  const Bytes blob = tpm.create_hmac_key(random_bytes(32));
  EXPECT_EQ(failure_of_call([&] { tpm.hmac_sha256(blob, Bytes(kMaxHmacInput + 1)); }),
            Failure::invalid_argument);
}

TEST(HmacKey, GeneratedKeyIsStableAndOwn) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  const Bytes first = tpm.generate_hmac_key();
  const Bytes second = tpm.generate_hmac_key();
  const Bytes data = text_bytes("Enrolee-B-ID");
  EXPECT_EQ(tpm.hmac_sha256(first, data), tpm.hmac_sha256(first, data));
  EXPECT_NE(tpm.hmac_sha256(first, data), tpm.hmac_sha256(second, data));
}

// Kpsa := HMAC-SHA-256(Ke, label || Enrolee-B-ID) (10.3.3), sealed in the TPM.
TEST(Derivation, KpsaFromKeIsSealedWithTheRightValue) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  const Bytes ke = random_bytes(32);
  const Bytes ke_blob = tpm.create_hmac_key(ke);
  const Bytes input = concat(kKpsaLabel, text_bytes("enrolee.example.com"));
  const Bytes kpsa_blob = tpm.derive_sealed(ke_blob, input);
  EXPECT_EQ(blob_kind(kpsa_blob), ObjectKind::sealed_data);
  const Hmac expected = openssl_hmac(ke, input);
  EXPECT_TRUE(same_bytes(tpm.unseal(kpsa_blob), expected));
}

TEST(Derivation, KmWithCheckValue) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  const Bytes ke = random_bytes(32);
  const Bytes ke_blob = tpm.create_hmac_key(ke);
  const Bytes input = concat(kKmLabel, text_bytes("maf.example.com"));
  const Bytes mac_data = text_bytes("key check");
  const auto km = tpm.derive_sealed_with_mac(ke_blob, input, mac_data);
  const Hmac expected = openssl_hmac(ke, input);
  EXPECT_EQ(km.mac, openssl_hmac(expected, mac_data));
  EXPECT_TRUE(same_bytes(tpm.unseal(km.blob), expected));
}

TEST(Derivation, DerivedHmacKeyChains) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  const Bytes ke = random_bytes(32);
  const Bytes ke_blob = tpm.create_hmac_key(ke);
  const Bytes step = text_bytes("first step");
  const Bytes child = tpm.derive_hmac_key(ke_blob, step);
  EXPECT_EQ(blob_kind(child), ObjectKind::hmac_key);
  const Hmac child_value = openssl_hmac(ke, step);
  const Bytes data = text_bytes("second step");
  EXPECT_EQ(tpm.hmac_sha256(child, data), openssl_hmac(child_value, data));
}

}  // namespace
}  // namespace m2mvault::hsm::tpm2::testing
