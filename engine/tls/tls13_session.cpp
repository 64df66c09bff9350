#include "engine/tls/tls13_session.h"

#include <openssl/objects.h>

namespace m2mvault::tls {

SSL_SESSION* make_psk_session(SSL* ssl, std::span<const std::uint8_t> psk) {
  const SSL_CIPHER* cipher = SSL_CIPHER_find(ssl, kTls13Aes128GcmSha256);
  if (cipher == nullptr) return nullptr;
  SSL_SESSION* session = SSL_SESSION_new();
  if (session == nullptr) return nullptr;
  if (SSL_SESSION_set1_master_key(session, psk.data(), psk.size()) != 1 ||
      SSL_SESSION_set_cipher(session, cipher) != 1 ||
      SSL_SESSION_set_protocol_version(session, TLS1_3_VERSION) != 1) {
    SSL_SESSION_free(session);  // frees (and wipes) the copied key
    return nullptr;
  }
  return session;
}

bool psk_was_used(const SSL* ssl) {
  if (SSL_version(ssl) >= TLS1_3_VERSION) return SSL_session_reused(ssl) == 1;
  const SSL_CIPHER* cipher = SSL_get_current_cipher(ssl);
  if (cipher == nullptr) return false;
  // PSK, ECDHE-PSK, DHE-PSK suites authenticate by the PSK; RSA-PSK mixes both.
  return SSL_CIPHER_get_auth_nid(cipher) == NID_auth_psk ||
         SSL_CIPHER_get_kx_nid(cipher) == NID_kx_rsa_psk;
}

}  // namespace m2mvault::tls
