// Hex and base64 (RFC 4648, standard alphabet, padded) for the wire protocol,
// which carries binary values as base64, and for the CLI. Strict decoders:
// anything but canonical input is rejected, never silently repaired.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace m2mvault::encoding {

inline std::string hex_encode(std::span<const std::uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (auto b : bytes) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 0x0f]);
  }
  return out;
}

inline int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Decodes hex (either case) into `out`, which must hold text.size()/2 bytes.
// Returns false (and leaves `out` partly written) on odd length or a non-hex
// character.
inline bool hex_decode_into(std::string_view text, std::span<std::uint8_t> out) {
  if (text.size() % 2 != 0 || out.size() < text.size() / 2) return false;
  for (std::size_t i = 0; i < text.size() / 2; ++i) {
    int hi = hex_value(text[2 * i]);
    int lo = hex_value(text[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<std::uint8_t>((hi << 4) | lo);
  }
  return true;
}

inline std::optional<std::vector<std::uint8_t>> hex_decode(std::string_view text) {
  std::vector<std::uint8_t> out(text.size() / 2);
  if (!hex_decode_into(text, out)) return std::nullopt;
  return out;
}

inline std::string base64_encode(std::span<const std::uint8_t> bytes) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    std::uint32_t v = (bytes[i] << 16) | (bytes[i + 1] << 8) | bytes[i + 2];
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(kAlphabet[(v >> 6) & 63]);
    out.push_back(kAlphabet[v & 63]);
  }
  if (std::size_t rest = bytes.size() - i; rest > 0) {
    std::uint32_t v = bytes[i] << 16;
    if (rest == 2) v |= bytes[i + 1] << 8;
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(rest == 2 ? kAlphabet[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

inline int base64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

// Exact number of bytes `text` decodes to, or nullopt if it is not canonical
// padded base64 (length a multiple of 4, padding only at the end).
inline std::optional<std::size_t> base64_decoded_size(std::string_view text) {
  if (text.size() % 4 != 0) return std::nullopt;
  std::size_t pad = 0;
  if (!text.empty() && text.back() == '=')
    pad = (text.size() >= 2 && text[text.size() - 2] == '=') ? 2 : 1;
  return text.size() / 4 * 3 - pad;
}

// Decodes canonical padded base64 into `out` (exactly base64_decoded_size()
// bytes). Rejects bad characters, misplaced padding and non-zero pad bits.
inline bool base64_decode_into(std::string_view text, std::span<std::uint8_t> out) {
  auto size = base64_decoded_size(text);
  if (!size || out.size() != *size) return false;
  std::size_t o = 0;
  for (std::size_t i = 0; i < text.size(); i += 4) {
    const bool last = i + 4 == text.size();
    int v[4];
    int pads = 0;
    for (int j = 0; j < 4; ++j) {
      char c = text[i + j];
      if (c == '=' && last && j >= 2) {
        v[j] = 0;
        ++pads;
        continue;
      }
      if (pads > 0) return false;  // data after padding
      v[j] = base64_value(c);
      if (v[j] < 0) return false;
    }
    std::uint32_t word = (v[0] << 18) | (v[1] << 12) | (v[2] << 6) | v[3];
    if (pads == 2 && (word & 0xffff) != 0) return false;
    if (pads == 1 && (word & 0xff) != 0) return false;
    out[o++] = static_cast<std::uint8_t>(word >> 16);
    if (pads < 2) out[o++] = static_cast<std::uint8_t>(word >> 8);
    if (pads < 1) out[o++] = static_cast<std::uint8_t>(word);
  }
  return true;
}

inline std::optional<std::vector<std::uint8_t>> base64_decode(std::string_view text) {
  auto size = base64_decoded_size(text);
  if (!size) return std::nullopt;
  std::vector<std::uint8_t> out(*size);
  if (!base64_decode_into(text, out)) return std::nullopt;
  return out;
}

}  // namespace m2mvault::encoding
