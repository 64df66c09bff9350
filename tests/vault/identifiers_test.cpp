// Identifier syntax and canonical forms (SPEC-NOTES.md "Identifiers").
#include "vault/identifiers.h"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace m2mvault::vault
