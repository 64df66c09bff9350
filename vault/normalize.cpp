#include "vault/normalize.h"

#include <fmt/format.h>
#include <utf8proc.h>

#include <cstdlib>
#include <memory>

#include "api/error.h"

namespace m2mvault::vault {

std::string nfkc(std::string_view text, std::string_view what) {
  if (text.empty()) return {};
  // Validate first: utf8proc_map would report an error too, but not where.
  auto* p = reinterpret_cast<const utf8proc_uint8_t*>(text.data());
  utf8proc_ssize_t offset = 0;
  const auto size = static_cast<utf8proc_ssize_t>(text.size());
  while (offset < size) {
    utf8proc_int32_t cp = 0;
    utf8proc_ssize_t n = utf8proc_iterate(p + offset, size - offset, &cp);
    if (n < 0 || cp < 0) {
      throw Error(ErrorCode::invalid_argument,
                  fmt::format("{} is not valid UTF-8 (byte {})", what, offset));
    }
    if (cp == 0) {
      throw Error(ErrorCode::invalid_argument, fmt::format("{} contains a NUL character", what));
    }
    offset += n;
  }
  utf8proc_uint8_t* out = nullptr;
  utf8proc_ssize_t n = utf8proc_map(
      p, size, &out,
      static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT));
  std::unique_ptr<utf8proc_uint8_t, decltype(&std::free)> owned(out, &std::free);
  if (n < 0) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("{} cannot be normalized: {}", what, utf8proc_errmsg(n)));
  }
  return std::string(reinterpret_cast<const char*>(out), static_cast<std::size_t>(n));
}

}  // namespace m2mvault::vault
