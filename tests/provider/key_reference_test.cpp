// The key reference format of docs/PROVIDER.md: what `m2mvault key reference`
// writes and the provider's decoder reads.
#include "engine/provider/key_reference.h"

#include <gtest/gtest.h>

#include <string>

#include "api/encoding.h"

namespace m2mvault::provider {
namespace {

// Written by hand from the documented structure (and by the Python encoder
// in tests/integration/test_provider.py).
constexpr const char* kInCseEc = "MC4CAQAwFgYUaYPqjPn4tq/CgoWfhKDO2+XWu08EETAPAgEBDAZpbi1jc2UMAkVD";
constexpr const char* kKpsaNamedRsa =
    "MEwCAQAwFgYUaYPqjPn4tq/CgoWfhKDO2+XWu08ELzAtAgEBDCNBRTEyMzQ1Njc4"
    "OTAxMi1Mb2NrQGluLnByb3ZpZGVyLmNvbQwDUlNB";

std::vector<std::uint8_t> der_of(const char* base64) {
  return *encoding::base64_decode(base64);
}

TEST(KeyReference, EncodesTheDocumentedBytes) {
  EXPECT_EQ(encode_key_reference_der({"in-cse", KeyType::ec}), der_of(kInCseEc));
  EXPECT_EQ(encode_key_reference_der({"AE123456789012-Lock@in.provider.com", KeyType::rsa}),
            der_of(kKpsaNamedRsa));
}

TEST(KeyReference, PemIsACommentAndAPrivateKeyBlock) {
  const std::string pem = encode_key_reference_pem({"in-cse", KeyType::ec});
  EXPECT_EQ(pem,
            "# m2mvault key reference to in-cse (EC); not a secret\n"
            "-----BEGIN PRIVATE KEY-----\n"
            "MC4CAQAwFgYUaYPqjPn4tq/CgoWfhKDO2+XWu08EETAPAgEBDAZpbi1jc2UMAkVD\n"
            "-----END PRIVATE KEY-----\n");
  auto back = decode_key_reference_pem(pem);
  ASSERT_TRUE(back);
  EXPECT_EQ(back->name, "in-cse");
  EXPECT_EQ(back->type, KeyType::ec);
}

TEST(KeyReference, RoundTripsLongNames) {
  const std::string name(kMaxKeyNameBytes, 'k');
  auto back = decode_key_reference_der(encode_key_reference_der({name, KeyType::rsa}));
  ASSERT_TRUE(back);
  EXPECT_EQ(back->name, name);
  EXPECT_EQ(back->type, KeyType::rsa);
}

TEST(KeyReference, RejectsWhatIsNotOne) {
  auto der = der_of(kInCseEc);
  auto trailing = der;
  trailing.push_back(0);
  EXPECT_FALSE(decode_key_reference_der(trailing));
  auto other_oid = der;
  other_oid[10] ^= 1;  // inside the OBJECT IDENTIFIER
  EXPECT_FALSE(decode_key_reference_der(other_oid));
  auto truncated = der;
  truncated.pop_back();
  EXPECT_FALSE(decode_key_reference_der(truncated));
  auto bad_type = der;
  bad_type.back() = 'X';  // "EX"
  EXPECT_FALSE(decode_key_reference_der(bad_type));
  EXPECT_FALSE(decode_key_reference_der({}));
  // An ordinary PKCS#8 EC key is not a reference.
  EXPECT_FALSE(
      decode_key_reference_pem("-----BEGIN PRIVATE KEY-----\n"
                               "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgYirTZSx+5O8Y6tlG\n"
                               "-----END PRIVATE KEY-----\n"));
}

TEST(KeyReference, KeyTypeFromTheVaultAlgorithm) {
  EXPECT_EQ(key_type_for_algorithm("ec-p256"), KeyType::ec);
  EXPECT_EQ(key_type_for_algorithm("rsa-2048"), KeyType::rsa);
  EXPECT_FALSE(key_type_for_algorithm("hmac-sha256"));
}

}  // namespace
}  // namespace m2mvault::provider
