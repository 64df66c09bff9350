// Identifier syntax and canonical forms (SPEC-NOTES.md "Identifiers").
#include "vault/identifiers.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdint>

#include "api/error.h"

namespace m2mvault::vault {
namespace {

ErrorCode code_of_identifier(KeyKind kind, const std::string& text) {
  try {
    canonical_identifier(kind, text);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(text.substr(0, 20)), std::string::npos) << e.what();
    return e.code();
  }
  ADD_FAILURE() << "accepted " << text;
  return ErrorCode::internal;
}

TEST(KpsaId, TheSeedsExamplesAreValid) {
  EXPECT_EQ(canonical_identifier(KeyKind::kpsa, "AE123456789012-Lock@in.provider.com"),
            "AE123456789012-Lock@in.provider.com");
  EXPECT_EQ(canonical_identifier(KeyKind::kpsa, "AE123456789015-Lock@in.provider.com"),
            "AE123456789015-Lock@in.provider.com");
}

TEST(KpsaId, FqdnIsComparedLowercasedRelativeExactly) {
  EXPECT_EQ(canonical_identifier(KeyKind::kpsa, "AE1-Lock@IN.Provider.COM"),
            "AE1-Lock@in.provider.com");
  EXPECT_NE(canonical_identifier(KeyKind::kpsa, "ae1-lock@in.provider.com"),
            canonical_identifier(KeyKind::kpsa, "AE1-Lock@in.provider.com"));
}

TEST(KpsaId, InvalidFormsAreRejectedWithTheirText) {
  for (const char* bad : {"AE1", "AE1@", "@in.provider.com", "AE 1@in.provider.com", "AE1@a@b.com",
                          "AE1@in..provider.com", "AE1@-in.provider.com", "AE1@in.provider.com-",
                          "AE/1@in.provider.com", "AE1@in_provider.com"}) {
    EXPECT_EQ(code_of_identifier(KeyKind::kpsa, bad), ErrorCode::invalid_argument) << bad;
  }
  EXPECT_EQ(code_of_identifier(KeyKind::kpsa, std::string(250, 'a') + "@b.com"),
            ErrorCode::invalid_argument);
  EXPECT_EQ(code_of_identifier(KeyKind::kpsa, "a@" + std::string(64, 'b') + ".com"),
            ErrorCode::invalid_argument);
}

TEST(KeId, Base64OfSixteenBytesIsKeptExactly) {
  // FF15D84E3E38D6974B0EB3E5606C85FE (TR-0038 A.4) as `xxd -r -p | base64` prints it.
  EXPECT_EQ(canonical_identifier(KeyKind::ke, "/xXYTj441pdLDrPlYGyF/g==@MEF.example.com"),
            "/xXYTj441pdLDrPlYGyF/g==@mef.example.com");
  EXPECT_NE(canonical_identifier(KeyKind::ke, "/xXYTj441pdLDrPlYGyF/g==@mef.example.com"),
            canonical_identifier(KeyKind::ke, "/XxYTj441pdLDrPlYGyF/g==@mef.example.com"));
}

TEST(KeId, HexBinaryIsCaseInsensitive) {
  EXPECT_EQ(canonical_identifier(KeyKind::kc, "FF15D84E3E38D6974B0EB3E5606C85FE@maf.example.com"),
            "ff15d84e3e38d6974b0eb3e5606c85fe@maf.example.com");
}

TEST(KeId, TheErratumOfTr0038A4IsNotSixteenBytes) {
  // TR-0038 A.4 base64-encodes the 32-character hex *text*: 44 characters.
  EXPECT_EQ(code_of_identifier(KeyKind::ke,
                               "RkYxNUQ4NEUzRTM4RDY5NzRCMEVCM0U1NjA2Qzg1RkU=@mef.example.com"),
            ErrorCode::invalid_argument);
  EXPECT_EQ(code_of_identifier(KeyKind::ke, "AE1-Lock@mef.example.com"),
            ErrorCode::invalid_argument);
  EXPECT_EQ(code_of_identifier(KeyKind::ke,
                               "/xXYTj441pdLDrPlYGyF/h==@mef.example.com"),  // non-zero pad bits
            ErrorCode::invalid_argument);
}

TEST(KeyName, NamesAndIdentifiersShareOneCanonicalForm) {
  EXPECT_EQ(canonical_name("mn-cse-123456"), "mn-cse-123456");
  EXPECT_EQ(canonical_name("AE1-Lock@IN.provider.com"),
            canonical_identifier(KeyKind::kpsa, "AE1-Lock@in.provider.com"));
  EXPECT_EQ(canonical_name("FF15D84E3E38D6974B0EB3E5606C85FE@Maf.example.com"),
            canonical_identifier(KeyKind::kc, "ff15d84e3e38d6974b0eb3e5606c85fe@maf.example.com"));
  EXPECT_THROW(canonical_name(""), Error);
  EXPECT_THROW(canonical_name("-rf"), Error);
  EXPECT_THROW(canonical_name("has space"), Error);
  EXPECT_THROW(canonical_name(std::string(256, 'a')), Error);
}

// FF15D84E3E38D6974B0EB3E5606C85FE, the RelativeKeId of TR-0038 A.4, as bytes.
constexpr std::array<std::uint8_t, 16> kRelativeKeId{
    0xFF, 0x15, 0xD8, 0x4E, 0x3E, 0x38, 0xD6, 0x97, 0x4B, 0x0E, 0xB3, 0xE5, 0x60, 0x6C, 0x85, 0xFE};
// `echo -n FF15D84E3E38D6974B0EB3E5606C85FE | xxd -r -p | base64`
constexpr const char* kRelativeKeIdBase64 = "/xXYTj441pdLDrPlYGyF/g==";

std::string message_of_identifier(KeyKind kind, const std::string& text) {
  try {
    canonical_identifier(kind, text);
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "accepted " << text;
  return {};
}

TEST(KpsaId, RelativePartTakesLettersDigitsDotUnderscoreAndHyphen) {
  EXPECT_EQ(canonical_identifier(KeyKind::kpsa, "a.B_c-9@x.example"), "a.B_c-9@x.example");
  for (const char* bad : {"a+b@in.provider.com", "a=b@in.provider.com", "a:b@in.provider.com",
                          "a/b@in.provider.com", "a b@in.provider.com"}) {
    EXPECT_EQ(code_of_identifier(KeyKind::kpsa, bad), ErrorCode::invalid_argument) << bad;
  }
  // "été": letters, but not ASCII ones.
  EXPECT_THROW(canonical_identifier(KeyKind::kpsa, "\xc3\xa9t\xc3\xa9@in.provider.com"), Error);
}

TEST(KpsaId, MessagesNameTheIdentifierAndTheFault) {
  EXPECT_EQ(message_of_identifier(KeyKind::kpsa, "x@"),
            "invalid KpsaID 'x@': missing FQDN after '@'");
  EXPECT_EQ(message_of_identifier(KeyKind::kpsa, "@in.provider.com"),
            "invalid KpsaID '@in.provider.com': missing relative part before '@'");
  EXPECT_EQ(message_of_identifier(KeyKind::kpsa, "a@b@in.provider.com"),
            "invalid KpsaID 'a@b@in.provider.com': more than one '@'");
  EXPECT_EQ(message_of_identifier(KeyKind::kpsa, ""), "invalid KpsaID '': empty");
  EXPECT_NE(message_of_identifier(KeyKind::kpsa, "AE1@in..provider.com")
                .find("'in..provider.com' is not a valid FQDN"),
            std::string::npos);
  // A control character is shown escaped: the message stays one line.
  const std::string shown = message_of_identifier(KeyKind::kpsa, "a\nb@in.provider.com");
  EXPECT_EQ(shown.find('\n'), std::string::npos) << shown;
  EXPECT_NE(shown.find("a\\x0ab@in.provider.com"), std::string::npos) << shown;
}

TEST(KpsaId, IdentifiersOfUpTo255CharactersAreValid) {
  // 1 + '@' + 63 + '.' + 63 + '.' + 63 + '.' + 61 = 255.
  const std::string fqdn = std::string(63, 'a') + "." + std::string(63, 'b') + "." +
                           std::string(63, 'c') + "." + std::string(61, 'd');
  ASSERT_EQ(fqdn.size(), 253u);
  EXPECT_EQ(canonical_identifier(KeyKind::kpsa, "r@" + fqdn).size(), 255u);
  EXPECT_EQ(code_of_identifier(KeyKind::kpsa, "rr@" + fqdn), ErrorCode::invalid_argument);
  EXPECT_EQ(code_of_identifier(KeyKind::kpsa, std::string(200, 'r') + "@" + std::string(55, 'f')),
            ErrorCode::invalid_argument);  // 256 characters
  EXPECT_EQ(canonical_identifier(KeyKind::kpsa, std::string(200, 'r') + "@" + std::string(54, 'f'))
                .size(),
            255u);
}

TEST(KpsaId, FqdnLabelRules) {
  EXPECT_TRUE(is_valid_fqdn("in.provider.com"));
  EXPECT_TRUE(is_valid_fqdn("localhost"));
  EXPECT_TRUE(is_valid_fqdn("a-b.c9"));
  EXPECT_TRUE(is_valid_fqdn(std::string(63, 'a') + ".com"));
  for (const std::string& bad :
       {std::string(), std::string("in.provider.com."), std::string(".in.provider.com"),
        std::string("a..b"), std::string("-a.b"), std::string("a-.b"), std::string("a_b.c"),
        std::string("a b.c"), std::string(64, 'a') + ".com", std::string("\xc3\xa9.com"),
        // 255 characters in labels of 63.
        std::string(63, 'a') + "." + std::string(63, 'b') + "." + std::string(63, 'c') + "." +
            std::string(63, 'd')}) {
    EXPECT_FALSE(is_valid_fqdn(bad)) << bad;
  }
}

TEST(KpsaId, SplitIdentifierNeedsExactlyOneAtWithBothSidesPresent) {
  auto parts = split_identifier("AE1-Lock@in.provider.com");
  ASSERT_TRUE(parts);
  EXPECT_EQ(parts->relative, "AE1-Lock");
  EXPECT_EQ(parts->fqdn, "in.provider.com");
  EXPECT_FALSE(split_identifier("AE1-Lock"));
  EXPECT_FALSE(split_identifier("@in.provider.com"));
  EXPECT_FALSE(split_identifier("AE1@"));
  EXPECT_FALSE(split_identifier("a@b@c"));
}

TEST(KeId, TheRelativeKeIdOfTr0038A4IsAcceptedInBothEncodings) {
  EXPECT_EQ(
      canonical_identifier(KeyKind::ke, std::string(kRelativeKeIdBase64) + "@mef.example.com"),
      "/xXYTj441pdLDrPlYGyF/g==@mef.example.com");
  EXPECT_EQ(canonical_identifier(KeyKind::ke, "ff15d84e3e38d6974b0eb3e5606c85fe@mef.example.com"),
            "ff15d84e3e38d6974b0eb3e5606c85fe@mef.example.com");
  EXPECT_EQ(canonical_identifier(KeyKind::ke, "FF15D84E3E38D6974B0EB3E5606C85FE@MEF.example.com"),
            "ff15d84e3e38d6974b0eb3e5606c85fe@mef.example.com");
  EXPECT_EQ(canonical_identifier(KeyKind::e2e, "AAECAwQFBgcICQoLDA0ODw==@as.example.com"),
            "AAECAwQFBgcICQoLDA0ODw==@as.example.com");
}

TEST(KeId, EncodeWritesTheSixteenBytes) {
  EXPECT_EQ(encode_relative_key_id(kRelativeKeId, IdFormat::base64), kRelativeKeIdBase64);
  EXPECT_EQ(encode_relative_key_id(kRelativeKeId, IdFormat::hex),
            "ff15d84e3e38d6974b0eb3e5606c85fe");
  // What encode() writes, canonical_identifier() takes back unchanged.
  for (auto format : {IdFormat::base64, IdFormat::hex}) {
    const std::string id = encode_relative_key_id(kRelativeKeId, format) + "@maf.example.com";
    EXPECT_EQ(canonical_identifier(KeyKind::kc, id), id);
  }
}

TEST(KeId, RelativePartMustBeExactlySixteenBytes) {
  for (const char* bad : {
           "/xXYTj441pdLDrPlYGyF/g=@mef.example.com",            // 23 characters
           "/xXYTj441pdLDrPlYGyF/g@mef.example.com",             // unpadded
           "/xXYTj441pdLDrPlYGyF/gAA@mef.example.com",           // 18 bytes, no padding
           "/xXYTj441pdLDrPlYGyF/g=A@mef.example.com",           // data after padding
           "_xXYTj441pdLDrPlYGyF-g==@mef.example.com",           // base64url alphabet
           "ff15d84e3e38d6974b0eb3e5606c85f@mef.example.com",    // 31 hex digits
           "ff15d84e3e38d6974b0eb3e5606c85fe0@mef.example.com",  // 33 hex digits
           "gg15d84e3e38d6974b0eb3e5606c85fe@mef.example.com",   // not hex, not base64
       }) {
    EXPECT_EQ(code_of_identifier(KeyKind::ke, bad), ErrorCode::invalid_argument) << bad;
  }
}

TEST(KeyName, SigningKeysHaveNoIdentifier) {
  EXPECT_THROW(canonical_identifier(KeyKind::signing, "a@b.com"), Error);
}

TEST(KeyName, NamesUpTo255CharactersAndTheirCanonicalForms) {
  EXPECT_EQ(canonical_name(std::string(255, 'a')), std::string(255, 'a'));
  EXPECT_EQ(canonical_name("/xXYTj441pdLDrPlYGyF/g==@MEF.Example.com"),
            "/xXYTj441pdLDrPlYGyF/g==@mef.example.com");              // base64 relative part exact
  EXPECT_EQ(canonical_name("Gateway-Device-2"), "Gateway-Device-2");  // not an identifier: exact
  EXPECT_EQ(canonical_name("a@b_c"), "a@b_c");  // not a valid FQDN: kept exactly
  try {
    canonical_name("bad\x01name");
    ADD_FAILURE() << "accepted a control character";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::invalid_argument);
    EXPECT_NE(std::string(e.what()).find("bad\\x01name"), std::string::npos) << e.what();
  }
}

// TS-0003 10.3.1: a pairwiseE2EKeyID is the 16 exported bytes, no FQDN.
TEST(PairwiseE2EKeyId, MayBeTheEncodedBytesAlone) {
  EXPECT_EQ(canonical_identifier(KeyKind::e2e, "AAECAwQFBgcICQoLDA0ODw=="),
            "AAECAwQFBgcICQoLDA0ODw==");
  EXPECT_EQ(canonical_identifier(KeyKind::e2e, "FF15D84E3E38D6974B0EB3E5606C85FE"),
            "ff15d84e3e38d6974b0eb3e5606c85fe");
  EXPECT_THROW(canonical_identifier(KeyKind::e2e, "AAECAwQFBgcICQoL"), Error);
  EXPECT_THROW(canonical_identifier(KeyKind::e2e, "not-an-id"), Error);
  // Only the pairwiseE2EKeyID: KeId and KcId keep their FQDN.
  EXPECT_THROW(canonical_identifier(KeyKind::ke, "AAECAwQFBgcICQoLDA0ODw=="), Error);
  EXPECT_THROW(canonical_identifier(KeyKind::kc, "AAECAwQFBgcICQoLDA0ODw=="), Error);
}

}  // namespace
}  // namespace m2mvault::vault
