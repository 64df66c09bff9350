// oneM2M credential identifiers and key names (SPEC-NOTES.md "Identifiers").
//
// Syntax `Relative@FQDN`. The relative part depends on the kind:
//  - kpsa, km, kpm: letters, digits, '.', '_', '-'.
//  - ke, kc, e2e: encode(16 bytes): base64 (RFC 4648, padded, 24 chars) or
//    hexBinary (32 hex digits). A pairwiseE2EKeyID may be the encoded 16
//    bytes alone, without `@FQDN`.
// Canonical form (the catalog's unique key): FQDN lowercased; relative part
// exact, except hexBinary relative parts, which are lowercased.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "vault/key_model.h"

namespace m2mvault::vault {

struct Identifier {
  std::string relative;
  std::string fqdn;
};

// Validates `text` as an identifier of `kind` (never for signing keys) and
// returns its canonical form. Throws Error(invalid_argument) with a message
// that names the identifier and what is wrong with it.
std::string canonical_identifier(KeyKind kind, std::string_view text);

// Splits without validation-by-kind; nullopt when there is no single '@' or
// either side is empty.
std::optional<Identifier> split_identifier(std::string_view text);

// True for a syntactically valid FQDN (labels of letters, digits, '-', not
// starting or ending with '-', 1..63 chars each, 253 chars at most).
bool is_valid_fqdn(std::string_view fqdn);

// How encode() in KeId = encode(RelativeKeId)@MEF-FQDN and KcId (TS-0003
// 10.3.4/10.3.5) writes the 16 bytes: base64 (RFC 4648, standard alphabet,
// padded) as the seeds specify, or hexBinary as TS-0003 V3.x does. Chosen
// per MEF/MAF FQDN in the configuration; base64 by default.
enum class IdFormat { base64, hex };
std::string encode_relative_key_id(std::span<const std::uint8_t, 16> relative, IdFormat format);

// Validates a key name (1..255 chars of letters, digits and . _ - @ + / =,
// not starting with '-') and returns its canonical form: a name that parses as
// `Relative@FQDN` has its FQDN lowercased (and a hex relative part
// lowercased); any other name is kept exactly. Throws Error(invalid_argument).
std::string canonical_name(std::string_view name);

// `text` as an error message quotes it: one line of printable ASCII (other
// bytes as \xNN), at most 255 characters, then "...".
std::string printable_excerpt(std::string_view text);

}  // namespace m2mvault::vault
