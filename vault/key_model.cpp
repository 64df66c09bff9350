#include "vault/key_model.h"

#include <fmt/format.h>

#include <array>

#include "api/error.h"
#include "vault/identifiers.h"

namespace m2mvault::vault {
namespace {

constexpr std::array<std::pair<KeyKind, std::string_view>, 8> kKinds{{
    {KeyKind::kpsa, "kpsa"},
    {KeyKind::kpm, "kpm"},
    {KeyKind::ke, "ke"},
    {KeyKind::km, "km"},
    {KeyKind::kc, "kc"},
    {KeyKind::e2e, "e2e"},
    {KeyKind::usage, "usage"},
    {KeyKind::signing, "signing"},
}};

}  // namespace

std::string_view to_string(KeyKind kind) {
  for (const auto& [k, name] : kKinds) {
    if (k == kind) return name;
  }
  return "unknown";
}

KeyKind parse_key_kind(std::string_view text) {
  for (const auto& [k, name] : kKinds) {
    if (name == text) return k;
  }
  throw Error(
      ErrorCode::invalid_argument,
      fmt::format("unknown key kind '{}' (expected kpsa, kpm, ke, km, kc, e2e, usage or signing)",
                  printable_excerpt(text)));
}

std::string_view to_string(Storage s) {
  switch (s) {
    case Storage::wrapped:
      return "wrapped";
    case Storage::token:
      return "token";
    case Storage::adopted:
      return "adopted";
  }
  return "unknown";
}

Storage parse_storage(std::string_view text) {
  if (text == "wrapped") return Storage::wrapped;
  if (text == "token") return Storage::token;
  if (text == "adopted") return Storage::adopted;
  throw Error(ErrorCode::invalid_argument,
              fmt::format("unknown key storage '{}' (expected wrapped, token or adopted)",
                          printable_excerpt(text)));
}

}  // namespace m2mvault::vault
