// The authenticated peer of a session, for the application to associate
// with it (TR-0038 7.1.2: "the client identity is associated with the
// established TLS session").
#include "engine/tls/m2mvault_tls.h"
#include "engine/tls/ssl_data.h"

extern "C" const char* m2mvault_tls_peer_entity(const SSL* ssl) {
  const auto* peer = m2mvault::tls::peer_identity(ssl);
  return peer != nullptr && peer->entity ? peer->entity->c_str() : nullptr;
}

extern "C" const char* m2mvault_tls_peer_psk_id(const SSL* ssl) {
  const auto* peer = m2mvault::tls::peer_identity(ssl);
  return peer != nullptr ? peer->psk_id.c_str() : nullptr;
}

extern "C" const char* m2mvault_tls_peer_key_name(const SSL* ssl) {
  const auto* peer = m2mvault::tls::peer_identity(ssl);
  return peer != nullptr ? peer->key_name.c_str() : nullptr;
}

extern "C" const char* m2mvault_tls_peer_key_kind(const SSL* ssl) {
  const auto* peer = m2mvault::tls::peer_identity(ssl);
  return peer != nullptr ? peer->kind.c_str() : nullptr;
}
