// The SSL_SESSION that carries a TLS 1.3 external PSK into libssl.
#pragma once

#include <openssl/ssl.h>

#include <cstdint>
#include <span>

namespace m2mvault::tls {

// TLS_AES_128_GCM_SHA256: an external PSK is bound to one hash, and the
// SHA-256 one is what OpenSSL's s_client/s_server use for `-psk`.
inline constexpr unsigned char kTls13Aes128GcmSha256[] = {0x13, 0x01};

// A new session holding `psk` for TLS 1.3 with TLS_AES_128_GCM_SHA256, or
// nullptr on failure (libssl copies the key; the caller wipes its buffer).
SSL_SESSION* make_psk_session(SSL* ssl, std::span<const std::uint8_t> psk);

// True when the completed handshake on `ssl` was authenticated by a PSK
// (TLS 1.2: a PSK cipher suite; TLS 1.3: the offered PSK was accepted).
bool psk_was_used(const SSL* ssl);

}  // namespace m2mvault::tls
