#include "vault/identifiers.h"

#include <fmt/format.h>

#include <algorithm>

#include "api/encoding.h"
#include "api/error.h"

namespace m2mvault::vault {
namespace {

constexpr std::size_t kMaxIdentifier = 255;
constexpr std::size_t kMaxName = 255;

// ASCII only: identifiers are ASCII whatever the process locale is.
bool is_alnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

bool is_hex16(std::string_view s) {
  return s.size() == 32 &&
         std::all_of(s.begin(), s.end(), [](char c) { return encoding::hex_value(c) >= 0; });
}

bool is_base64_16(std::string_view s) {
  if (s.size() != 24) return false;
  std::uint8_t out[16];
  return encoding::base64_decode_into(s, out);
}

std::string_view id_term(KeyKind kind) {
  switch (kind) {
    case KeyKind::kpsa:
      return "KpsaID";
    case KeyKind::kpm:
      return "KpmID";
    case KeyKind::ke:
      return "KeId";
    case KeyKind::km:
      return "KmID";
    case KeyKind::kc:
      return "KcId";
    case KeyKind::e2e:
      return "pairwiseE2EKeyID";
    case KeyKind::usage:
      return "usage-constrained key identifier";
    case KeyKind::signing:
      return "identifier";
  }
  return "identifier";
}

[[noreturn]] void invalid(KeyKind kind, std::string_view text, std::string_view why) {
  throw Error(ErrorCode::invalid_argument,
              fmt::format("invalid {} '{}': {}", id_term(kind), printable_excerpt(text), why));
}

// Relative parts of identifiers the vault takes from outside (KpsaID, KmID,
// KpmID): letters, digits, '.', '_', '-' (TS-0003 10.5, 10.6).
bool is_plain_relative(std::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return is_alnum(c) || c == '.' || c == '_' || c == '-'; });
}

}  // namespace

std::optional<Identifier> split_identifier(std::string_view text) {
  auto at = text.find('@');
  if (at == std::string_view::npos || text.find('@', at + 1) != std::string_view::npos)
    return std::nullopt;
  if (at == 0 || at + 1 == text.size()) return std::nullopt;
  return Identifier{std::string(text.substr(0, at)), std::string(text.substr(at + 1))};
}

bool is_valid_fqdn(std::string_view fqdn) {
  if (fqdn.empty() || fqdn.size() > 253) return false;
  std::size_t start = 0;
  while (true) {
    auto dot = fqdn.find('.', start);
    std::string_view label =
        fqdn.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (label.empty() || label.size() > 63) return false;
    if (label.front() == '-' || label.back() == '-') return false;
    if (!std::all_of(label.begin(), label.end(), [](char c) { return is_alnum(c) || c == '-'; }))
      return false;
    if (dot == std::string_view::npos) return true;
    start = dot + 1;
  }
}

std::string canonical_identifier(KeyKind kind, std::string_view text) {
  if (kind == KeyKind::signing) {
    throw Error(ErrorCode::invalid_argument, "signing keys have names, not oneM2M identifiers");
  }
  if (text.empty()) invalid(kind, text, "empty");
  if (text.size() > kMaxIdentifier) invalid(kind, text, "longer than 255 characters");
  auto at = text.find('@');
  if (at == std::string_view::npos && kind == KeyKind::e2e) {
    // pairwiseE2EKeyID (TS-0003 10.3.1) is the 16 bytes alone: no FQDN.
    if (is_hex16(text)) return lower(text);
    if (is_base64_16(text)) return std::string(text);
    invalid(kind, text,
            "expected encode(16 bytes) as base64 (24 characters, padded) or 32 hex digits, "
            "optionally followed by @FQDN");
  }
  if (at == std::string_view::npos) invalid(kind, text, "expected Relative@FQDN");
  if (text.find('@', at + 1) != std::string_view::npos) invalid(kind, text, "more than one '@'");
  std::string_view relative = text.substr(0, at);
  std::string_view fqdn = text.substr(at + 1);
  if (relative.empty()) invalid(kind, text, "missing relative part before '@'");
  if (fqdn.empty()) invalid(kind, text, "missing FQDN after '@'");
  if (!is_valid_fqdn(fqdn)) {
    invalid(kind, text,
            fmt::format("'{}' is not a valid FQDN (labels of letters, digits and '-', 1 to 63 "
                        "characters each, not starting or ending with '-')",
                        printable_excerpt(fqdn)));
  }

  std::string canonical_relative;
  switch (kind) {
    case KeyKind::kpsa:
    case KeyKind::kpm:
    case KeyKind::km:
    case KeyKind::usage:
      if (!is_plain_relative(relative)) {
        invalid(kind, text, "the relative part may hold only letters, digits, '.', '_' and '-'");
      }
      // A relative part of 32 hex digits is taken as hex-encoded: compared
      // case-insensitively, as canonical_name() does.
      canonical_relative = is_hex16(relative) ? lower(relative) : std::string(relative);
      break;
    case KeyKind::ke:
    case KeyKind::kc:
    case KeyKind::e2e:
      if (is_hex16(relative)) {
        canonical_relative = lower(relative);  // hexBinary: case-insensitive
      } else if (is_base64_16(relative)) {
        canonical_relative = relative;  // base64: case matters
      } else {
        invalid(kind, text,
                "the relative part must encode 16 bytes as base64 (24 characters, padded) or as 32 "
                "hex digits");
      }
      break;
    case KeyKind::signing:
      break;
  }
  return canonical_relative + "@" + lower(fqdn);
}

std::string encode_relative_key_id(std::span<const std::uint8_t, 16> relative, IdFormat format) {
  return format == IdFormat::hex ? encoding::hex_encode(relative)
                                 : encoding::base64_encode(relative);
}

std::string printable_excerpt(std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i < text.size() && i < kMaxIdentifier; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f) {
      out.push_back(static_cast<char>(c));
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
  }
  if (text.size() > kMaxIdentifier) out += "...";
  return out;
}

std::string canonical_name(std::string_view name) {
  if (name.empty()) throw Error(ErrorCode::invalid_argument, "key name is empty");
  if (name.size() > kMaxName) {
    throw Error(
        ErrorCode::invalid_argument,
        fmt::format("key name '{}' is longer than 255 characters", printable_excerpt(name)));
  }
  if (name.front() == '-') {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("key name '{}' must not start with '-'", printable_excerpt(name)));
  }
  for (char c : name) {
    if (!(is_alnum(c) || c == '.' || c == '_' || c == '-' || c == '@' || c == '+' || c == '/' ||
          c == '=')) {
      throw Error(ErrorCode::invalid_argument,
                  fmt::format("key name '{}' may hold only letters, digits and . _ - @ + / =",
                              printable_excerpt(name)));
    }
  }
  auto parts = split_identifier(name);
  if (!parts || !is_valid_fqdn(parts->fqdn)) return std::string(name);
  std::string relative = is_hex16(parts->relative) ? lower(parts->relative) : parts->relative;
  return relative + "@" + lower(parts->fqdn);
}

}  // namespace m2mvault::vault
