// Wrapped secrets (the PSK kinds): the blob format and the token calls that
// wrap a secret under the KEK and unwrap it into a session object.
//
// Blob: "M2W1" | true length (2 bytes, big-endian) | CKM_AES_KEY_WRAP_PAD output.
// SoftHSM2 refuses HMAC keys shorter than 32 bytes, and HMAC zero-pads keys
// up to its 64-byte block, so HMAC(K) == HMAC(K || zeros) for |K| <= 64: short
// secrets are wrapped zero-padded to 32 bytes and the header keeps the length.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "hsm/pkcs11/ck.h"
#include "hsm/secure_buffer.h"
#include "hsm/secure_element.h"

namespace m2mvault::hsm::pkcs11 {

inline constexpr std::size_t kMaxSecretSize = 1024;
inline constexpr std::size_t kMinHmacKeySize = 32;

// `secret` zero-padded to kMinHmacKeySize. Throws Error(invalid_argument)
// unless 1 <= size <= kMaxSecretSize.
SecureBuffer hmac_equivalent_key(std::span<const std::uint8_t> secret);

// Wraps `secret` under `kek` through a session object that is destroyed.
// With `mac_out`, also HMACs `mac_data` with that object before it goes.
Bytes wrap_secret_with(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE kek,
                       std::span<const std::uint8_t> secret,
                       std::span<const std::uint8_t> mac_data = {}, Hmac* mac_out = nullptr);

struct ParsedBlob {
  std::size_t length;                     // the secret's true length
  std::span<const std::uint8_t> wrapped;  // the key-wrap output
};
// Throws Error(invalid_argument) when `blob` is not a wrapped secret.
ParsedBlob parse_blob(std::span<const std::uint8_t> blob);

// Unwraps into a session object usable for HMAC-SHA-256 and readable by
// read_secret(). Errors of a damaged blob are Error(invalid_argument).
CK_OBJECT_HANDLE unwrap_blob(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE kek,
                             const ParsedBlob& blob);

// CKA_VALUE of a session object, cut to `length` bytes.
SecureBuffer read_secret(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object,
                         std::size_t length);

// HMAC-SHA-256 with `key` in the token.
Hmac token_hmac(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE key,
                std::span<const std::uint8_t> data);

}  // namespace m2mvault::hsm::pkcs11
