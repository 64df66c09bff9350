#include "vault/time_format.h"

#include <fmt/format.h>

#include <ctime>

#include "api/error.h"
#include "vault/identifiers.h"

namespace m2mvault::vault {
namespace {

[[noreturn]] void bad_time(std::string_view text, std::string_view why) {
  throw Error(ErrorCode::invalid_argument,
              fmt::format("invalid RFC 3339 time '{}': {} (expected e.g. 2027-01-31T12:00:00Z)",
                          printable_excerpt(text), why));
}

// Reads exactly `digits` decimal digits at `pos`.
int number(std::string_view text, std::size_t& pos, int digits) {
  if (pos + digits > text.size()) bad_time(text, "too short");
  int v = 0;
  for (int i = 0; i < digits; ++i) {
    char c = text[pos++];
    if (c < '0' || c > '9') bad_time(text, "expected a digit");
    v = v * 10 + (c - '0');
  }
  return v;
}

void expect(std::string_view text, std::size_t& pos, std::string_view allowed) {
  if (pos >= text.size() || allowed.find(text[pos]) == std::string_view::npos) {
    bad_time(text, fmt::format("expected '{}'", allowed.substr(0, 1)));
  }
  ++pos;
}

bool leap(int y) {
  return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

}  // namespace

std::int64_t parse_rfc3339(std::string_view text) {
  std::size_t pos = 0;
  const int year = number(text, pos, 4);
  expect(text, pos, "-");
  const int month = number(text, pos, 2);
  expect(text, pos, "-");
  const int day = number(text, pos, 2);
  expect(text, pos, "Tt");
  const int hour = number(text, pos, 2);
  expect(text, pos, ":");
  const int minute = number(text, pos, 2);
  expect(text, pos, ":");
  const int second = number(text, pos, 2);
  if (pos < text.size() && text[pos] == '.') {
    ++pos;
    std::size_t start = pos;
    while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') ++pos;
    if (pos == start) bad_time(text, "empty fraction");
  }
  int offset = 0;
  if (pos < text.size() && (text[pos] == 'Z' || text[pos] == 'z')) {
    ++pos;
  } else if (pos < text.size() && (text[pos] == '+' || text[pos] == '-')) {
    const int sign = text[pos++] == '-' ? -1 : 1;
    const int oh = number(text, pos, 2);
    expect(text, pos, ":");
    const int om = number(text, pos, 2);
    if (oh > 23 || om > 59) bad_time(text, "offset out of range");
    offset = sign * (oh * 3600 + om * 60);
  } else {
    bad_time(text, "missing time zone (Z or +hh:mm)");
  }
  if (pos != text.size()) bad_time(text, "trailing characters");

  static constexpr int kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (year < 1970 || month < 1 || month > 12) bad_time(text, "date out of range");
  const int month_days = kDays[month - 1] + (month == 2 && leap(year) ? 1 : 0);
  if (day < 1 || day > month_days) bad_time(text, "day out of range");
  // 60 is a leap second; it is read as the next second.
  if (hour > 23 || minute > 59 || second > 60) bad_time(text, "time out of range");

  std::tm tm{};
  tm.tm_year = year - 1900;
  tm.tm_mon = month - 1;
  tm.tm_mday = day;
  tm.tm_hour = hour;
  tm.tm_min = minute;
  tm.tm_sec = second;
  const std::int64_t result = static_cast<std::int64_t>(::timegm(&tm)) - offset;
  if (result < 0) bad_time(text, "before 1970-01-01T00:00:00Z");
  return result;
}

std::string format_rfc3339(std::int64_t unix_seconds) {
  std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  // Beyond year 9999 (or before year 0) the form is not RFC 3339 any more.
  if (::gmtime_r(&t, &tm) == nullptr || tm.tm_year + 1900 > 9999 || tm.tm_year + 1900 < 0) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("time {} is outside the years 0000 to 9999", unix_seconds));
  }
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

}  // namespace m2mvault::vault
