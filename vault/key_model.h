// The oneM2M key model (TS-0003; DESIGN.md "The key model").
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace m2mvault::vault {

// `usage` is the usage-constrained symmetric key of TS-0003 10.3.7.
enum class KeyKind { kpsa, kpm, ke, km, kc, e2e, usage, signing };

std::string_view to_string(KeyKind kind);
// Throws Error(invalid_argument) naming the text when it is not a kind.
KeyKind parse_key_kind(std::string_view text);

// PSK kinds are wrapped at rest; Ke and signing keys are token objects.
constexpr bool is_psk_kind(KeyKind k) {
  return k == KeyKind::kpsa || k == KeyKind::kpm || k == KeyKind::km || k == KeyKind::kc ||
         k == KeyKind::e2e || k == KeyKind::usage;
}
constexpr bool is_symmetric(KeyKind k) {
  return k != KeyKind::signing;
}

enum class Storage { wrapped, token, adopted };
std::string_view to_string(Storage s);
Storage parse_storage(std::string_view text);

// One key as the catalog holds it. Nothing here is secret: `blob` is wrapped
// under the token's KEK (or by the TPM), `object_id` only names a token object.
struct KeyRecord {
  std::int64_t row = 0;  // catalog primary key
  std::string name;      // as given (defaults to the identifier)
  KeyKind kind = KeyKind::kpsa;
  std::optional<std::string> identifier;  // oneM2M identifier as given (KpsaID, KeId, ...)
  std::optional<std::string> entity;      // bound AE-ID / CSE-ID
  std::int64_t created = 0;               // Unix seconds
  std::optional<std::int64_t> expires;    // Unix seconds
  Storage storage = Storage::wrapped;
  std::vector<std::uint8_t> blob;          // Storage::wrapped; Storage::token on a TPM
  std::vector<std::uint8_t> object_id;     // Storage::token / adopted: CKA_ID
  std::string token_label;                 // Storage::adopted
  std::string object_label;                // Storage::adopted, when adopted by label
  std::vector<std::uint8_t> public_key;    // signing keys: DER SubjectPublicKeyInfo
  std::string algorithm;                   // signing keys: "ec-p256" | "rsa-2048"
  std::size_t length = 0;                  // symmetric keys: length in bytes
  std::optional<std::string> check_value;  // symmetric keys: 16 lowercase hex digits
  std::optional<std::string> parent;       // name of the key it was derived from
  std::optional<std::string> peer;         // handshake-exported keys: whom the key is shared with
  std::optional<std::string> certificate;  // signing keys: PEM chain, leaf first
  std::optional<std::int64_t> max_uses;    // usage limit (sign, psk.release, derive, handshake)
  std::int64_t uses = 0;                   // uses counted against max_uses
};

}  // namespace m2mvault::vault
