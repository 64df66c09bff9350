// The bytes that enter the TS-0003 10.3 HMACs, and the KeId/KcId encodings,
// against values written out by hand from the specification.
#include <gtest/gtest.h>

#include "api/encoding.h"
#include "api/error.h"
#include "vault/identifiers.h"
#include "vault/normalize.h"
#include "vault/vault.h"

namespace m2mvault::vault {
namespace {

std::string text_of(const std::vector<std::uint8_t>& bytes) {
  return std::string(bytes.begin(), bytes.end());
}

TEST(DerivationInput, MasterCredentialIsLabelThenMafId) {
  DeriveSpec spec;
  spec.derivation = Derivation::master_credential;
  spec.subject = "maf.example.com";
  EXPECT_EQ(text_of(derivation_input(spec)),
            "oneM2M Enrolment Key to Master Credential derivationmaf.example.com");
}

TEST(DerivationInput, KpsaIsLabelThenNfkcEnroleeId) {
  DeriveSpec spec;
  spec.derivation = Derivation::provisioned_secure_connection_key;
  spec.subject =
      "\xEF\xAC\x81"
      "eld";  // U+FB01 LATIN SMALL LIGATURE FI
  EXPECT_EQ(text_of(derivation_input(spec)),
            "oneM2M Enrolment Key to Provisioned Secure Connection Key derivationfield");
}

TEST(DerivationInput, UsageKeyPutsTheSuidInOneOctet) {
  DeriveSpec spec;
  spec.derivation = Derivation::usage_constrained_key;
  spec.subject = "in.example.com";
  spec.suid = 21;
  EXPECT_EQ(text_of(derivation_input(spec)),
            std::string("oneM2M Enrolment Key to Usage-Constrained Symmetric Key derivation") +
                '\x15' + "in.example.com");
  spec.suid = 256;
  EXPECT_THROW(derivation_input(spec), Error);
}

TEST(Nfkc, NormalizesCompatibilityCharactersAndRefusesInvalidUtf8) {
  EXPECT_EQ(nfkc("\xEF\xBC\xAD\xEF\xBC\xA1\xEF\xBC\xA6", "id"), "MAF");  // full-width
  EXPECT_EQ(nfkc("cafe\xCC\x81", "id"), "caf\xC3\xA9");                  // composed
  EXPECT_EQ(nfkc("", "id"), "");
  for (const char* bad :
       {"\xff", "ab\xc3", "\xc3\x28", "\xed\xa0\x80" /* surrogate */, "\xc0\xaf" /* overlong */}) {
    try {
      nfkc(bad, "MAF-ID");
      ADD_FAILURE() << "accepted invalid UTF-8";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::invalid_argument);
      EXPECT_NE(std::string(e.what()).find("MAF-ID"), std::string::npos);
    }
  }
}

TEST(KeyIdEncoding, Tr0038A4BytesInBothFormats) {
  // The 16 most significant bytes of TR-0038 A.4's keying material. Its
  // printed base64 example encodes the hex *text* (an erratum); these are the
  // bytes, as `echo FF15D84E3E38D6974B0EB3E5606C85FE | xxd -r -p | base64` prints them.
  auto bytes = encoding::hex_decode("FF15D84E3E38D6974B0EB3E5606C85FE").value();
  std::span<const std::uint8_t, 16> relative(bytes.data(), 16);
  EXPECT_EQ(encode_relative_key_id(relative, IdFormat::base64), "/xXYTj441pdLDrPlYGyF/g==");
  EXPECT_EQ(encode_relative_key_id(relative, IdFormat::hex), "ff15d84e3e38d6974b0eb3e5606c85fe");
  EXPECT_NE(encode_relative_key_id(relative, IdFormat::base64),
            "RkYxNUQ4NEUzRTM4RDY5NzRCMEVCM0U1NjA2Qzg1RkU=");
}

}  // namespace
}  // namespace m2mvault::vault
