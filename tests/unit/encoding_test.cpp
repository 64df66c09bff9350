// api/encoding.h against RFC 4648's own test vectors (section 10).
#include "api/encoding.h"

#include <gtest/gtest.h>

#include <string>

namespace m2mvault::encoding {
namespace {

std::span<const std::uint8_t> bytes(const std::string& s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

TEST(Base64, Rfc4648TestVectors) {
  const std::pair<std::string, std::string> vectors[] = {
      {"", ""},
      {"f", "Zg=="},
      {"fo", "Zm8="},
      {"foo", "Zm9v"},
      {"foob", "Zm9vYg=="},
      {"fooba", "Zm9vYmE="},
      {"foobar", "Zm9vYmFy"},
  };
  for (const auto& [plain, encoded] : vectors) {
    EXPECT_EQ(base64_encode(bytes(plain)), encoded);
    auto decoded = base64_decode(encoded);
    ASSERT_TRUE(decoded) << encoded;
    EXPECT_EQ(std::string(decoded->begin(), decoded->end()), plain);
  }
}

TEST(Base64, TheSixteenBytesOfTr0038A4) {
  // FF15D84E3E38D6974B0EB3E5606C85FE, as `xxd -r -p | base64` prints it.
  auto raw = hex_decode("FF15D84E3E38D6974B0EB3E5606C85FE");
  ASSERT_TRUE(raw);
  EXPECT_EQ(base64_encode(*raw), "/xXYTj441pdLDrPlYGyF/g==");
}

TEST(Base64, RejectsNonCanonicalInput) {
  for (const char* bad :
       {"Zg", "Zg=", "Z===", "Zh==", "Zm9=", "Zm 9v", "Zm9v\n", "=Zm9", "Zg==Zm9v", "Zm-v"}) {
    EXPECT_FALSE(base64_decode(bad)) << bad;
  }
}

TEST(Hex, RoundTripAndRejects) {
  auto decoded = hex_decode("1a2B3c4D5e6f7a8b");
  ASSERT_TRUE(decoded);
  EXPECT_EQ(hex_encode(*decoded), "1a2b3c4d5e6f7a8b");
  EXPECT_FALSE(hex_decode("1a2"));
  EXPECT_FALSE(hex_decode("1a2g"));
  EXPECT_FALSE(hex_decode("0x12"));
}

}  // namespace
}  // namespace m2mvault::encoding
