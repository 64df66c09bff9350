#include "vault/time_format.h"

#include <gtest/gtest.h>

#include <limits>

#include "api/error.h"

namespace m2mvault::vault {
namespace {

TEST(Rfc3339, ParsesUtcOffsetsAndFractions) {
  // Values checked with `date -u -d '...' +%s`.
  EXPECT_EQ(parse_rfc3339("2027-01-31T12:00:00Z"), 1801396800);
  EXPECT_EQ(parse_rfc3339("2027-01-31T13:00:00+01:00"), 1801396800);
  EXPECT_EQ(parse_rfc3339("2027-01-31T07:30:00-04:30"), 1801396800);
  EXPECT_EQ(parse_rfc3339("2027-01-31t12:00:00.999z"), 1801396800);
  EXPECT_EQ(parse_rfc3339("2028-02-29T00:00:00Z"), 1835395200);
  EXPECT_EQ(parse_rfc3339("1970-01-01T01:00:00+01:00"), 0);
  EXPECT_EQ(parse_rfc3339("2000-02-29T23:59:59.999999-00:30"), 951870599);
  EXPECT_EQ(parse_rfc3339("9999-12-31T23:59:59Z"), 253402300799);
}

TEST(Rfc3339, FractionsAreTruncated) {
  EXPECT_EQ(parse_rfc3339("2027-01-31T12:00:00.000000001Z"), 1801396800);
  EXPECT_EQ(parse_rfc3339("2027-01-31T12:00:00.9999999999Z"), 1801396800);
  EXPECT_EQ(parse_rfc3339("2027-01-31T12:00:00.5+00:00"), 1801396800);
}

TEST(Rfc3339, ALeapSecondIsReadAsTheNextSecond) {
  EXPECT_EQ(parse_rfc3339("1972-06-30T23:59:60Z"), 78796800);
}

TEST(Rfc3339, RejectsMalformedTimes) {
  for (const char* bad : {"",
                          "2027-01-31",
                          "2027-01-31 12:00:00Z",
                          "2027-01-31T12:00:00",
                          "2027-13-01T00:00:00Z",
                          "2027-02-29T00:00:00Z",
                          "2027-01-31T24:00:00Z",
                          "2027-01-31T12:00:00Zjunk",
                          "2027-01-31T12:00:00+0100",
                          "2027-01-31T12:00:00.Z",
                          "1969-12-31T23:59:59Z",
                          "2027-00-10T00:00:00Z",
                          "2027-04-31T00:00:00Z",
                          "2027-01-00T00:00:00Z",
                          "2027-01-31T12:60:00Z",
                          "2027-01-31T12:00:61Z",
                          "2027-01-31T12:00:00+24:00",
                          "2027-01-31T12:00:00+01:60",
                          "2027-01-31T12:00:00+01",
                          "27-01-31T12:00:00Z",
                          "2027-1-31T12:00:00Z",
                          "2027-01-31T12:00:00Z ",
                          " 2027-01-31T12:00:00Z",
                          "2027-01-31T12:00:00.5",
                          "2027-01-31T12:00Z",
                          "+2027-01-31T12:00:00Z",
                          "2100-02-29T00:00:00Z",
                          "1970-01-01T00:30:00+01:00",
                          "2027-01-31T12:00:00,5Z"}) {
    EXPECT_THROW(parse_rfc3339(bad), Error) << bad;
  }
}

TEST(Rfc3339, ErrorsAreInvalidArgumentNamingTheText) {
  try {
    parse_rfc3339("2027-13-01T00:00:00Z");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::invalid_argument);
    EXPECT_NE(std::string(e.what()).find("'2027-13-01T00:00:00Z'"), std::string::npos);
  }
  try {
    parse_rfc3339("2027-01-31T12:00:00Z\n");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
  }
}

TEST(Rfc3339, FormatsInUtc) {
  EXPECT_EQ(format_rfc3339(1801396800), "2027-01-31T12:00:00Z");
  EXPECT_EQ(format_rfc3339(0), "1970-01-01T00:00:00Z");
  EXPECT_EQ(format_rfc3339(951870599), "2000-03-01T00:29:59Z");
  EXPECT_EQ(format_rfc3339(253402300799), "9999-12-31T23:59:59Z");
  EXPECT_THROW(format_rfc3339(253402300800), Error);
  EXPECT_THROW(format_rfc3339(std::numeric_limits<std::int64_t>::max()), Error);
}

TEST(Rfc3339, FormatThenParseIsTheIdentity) {
  for (std::int64_t t : {0LL, 1LL, 951782400LL, 1801396800LL, 4102444799LL, 253402300799LL}) {
    EXPECT_EQ(parse_rfc3339(format_rfc3339(t)), t) << t;
  }
}

}  // namespace
}  // namespace m2mvault::vault
