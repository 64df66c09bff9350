#include "vault/time_format.h"

#include <gtest/gtest.h>

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
}

TEST(Rfc3339, RejectsMalformedTimes) {
  for (const char* bad :
       {"", "2027-01-31", "2027-01-31 12:00:00Z", "2027-01-31T12:00:00", "2027-13-01T00:00:00Z",
        "2027-02-29T00:00:00Z", "2027-01-31T24:00:00Z", "2027-01-31T12:00:00Zjunk",
        "2027-01-31T12:00:00+0100", "2027-01-31T12:00:00.Z", "1969-12-31T23:59:59Z"}) {
    EXPECT_THROW(parse_rfc3339(bad), Error) << bad;
  }
}

TEST(Rfc3339, FormatsInUtc) {
  EXPECT_EQ(format_rfc3339(1801396800), "2027-01-31T12:00:00Z");
  EXPECT_EQ(format_rfc3339(0), "1970-01-01T00:00:00Z");
}

}  // namespace
}  // namespace m2mvault::vault
