// RFC 3339 times on the CLI and the wire. Stored as Unix seconds.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace m2mvault::vault {

// Parses "2027-01-31T12:00:00Z", "...T12:00:00.5+01:00" and the like.
// Throws Error(invalid_argument) naming the text.
std::int64_t parse_rfc3339(std::string_view text);

// Formats as "YYYY-MM-DDTHH:MM:SSZ" (UTC).
std::string format_rfc3339(std::int64_t unix_seconds);

}  // namespace m2mvault::vault
