// Key bytes of the TLS handshakes the daemon runs (DESIGN.md, "The
// secure-element boundary"): the PSK handed to libssl and the RFC 5705
// keying material it exports. Both exist only in SecureBuffers here and in
// libssl for the length of the handshake.
#pragma once

#include <openssl/types.h>

#include <array>
#include <cstdint>
#include <span>
#include <string_view>

#include "hsm/secure_element.h"

namespace m2mvault::hsm {

// Copies the PSK `ref` names into libssl's buffer `out` (a PSK callback's
// `psk`), wiping every copy of its own. Returns the PSK's length, or throws
// Error(invalid_argument) when it does not fit. Only wrapped secrets are
// PSKs: a token secret (Ke) never leaves the token.
std::size_t copy_psk_for_tls(SecureElement& se, const SecretRef& ref, std::span<std::uint8_t> out);

// The 48 bytes TS-0003 10.3.1 exports from a finished TLS handshake: the
// first 16 are the relative key id (public), the last 32 the key.
class ExportedKey {
 public:
  static constexpr std::size_t kLength = 48;
  static constexpr std::size_t kIdLength = 16;
  static constexpr std::size_t kKeyLength = 32;

  // RFC 5705 export with `label`, no context. Throws Error(internal) when
  // libssl refuses (handshake not finished).
  static ExportedKey from_handshake(SSL* ssl, std::string_view label);

  std::array<std::uint8_t, kIdLength> relative_id() const;

  // HMAC-SHA-256(key, data), computed here: a new key's check value before
  // the key exists anywhere else.
  Hmac mac(std::span<const std::uint8_t> data) const;

  // The key wrapped under the KEK (a PSK kind: Kc, pairwiseE2EKey).
  SecureElement::WrappedWithMac wrap_with_mac(SecureElement& se,
                                              std::span<const std::uint8_t> mac_data) const;

  // The key as a non-extractable token secret (Ke); returns the blob to keep
  // (SecureElement::create_token_secret()).
  Bytes create_token_secret(SecureElement& se, std::span<const std::uint8_t> object_id) const;

 private:
  explicit ExportedKey(SecureBuffer material) : material_(std::move(material)) {}
  std::span<const std::uint8_t> key() const { return material_.span().subspan(kIdLength); }

  SecureBuffer material_;
};

}  // namespace m2mvault::hsm
