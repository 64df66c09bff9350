#include "engine/tls/ssl_data.h"

#include <openssl/crypto.h>

#include "engine/tls/tls13_session.h"

namespace m2mvault::tls {
namespace {

template <typename T>
void free_data(void* /*parent*/, void* ptr, CRYPTO_EX_DATA* /*ad*/, int /*idx*/, long /*argl*/,
               void* /*argp*/) {
  std::unique_ptr<T> owned(static_cast<T*>(ptr));
}

// SSL_dup() copies ex_data pointers; give the copy its own object.
template <typename T>
int dup_data(CRYPTO_EX_DATA* /*to*/, const CRYPTO_EX_DATA* /*from*/, void** from_d, int /*idx*/,
             long /*argl*/, void* /*argp*/) {
  auto** slot = reinterpret_cast<T**>(from_d);
  if (*slot != nullptr) *slot = std::make_unique<T>(**slot).release();
  return 1;
}

struct Indices {
  int ctx_server = -1;
  int ctx_client = -1;
  int ssl_client = -1;
  int ssl_peer = -1;
};

const Indices& indices() {
  static const Indices idx = [] {
    Indices i;
    i.ctx_server = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, &free_data<ServerConfig>);
    i.ctx_client = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, &free_data<ClientConfig>);
    i.ssl_client = SSL_get_ex_new_index(0, nullptr, nullptr, &dup_data<ClientConfig>,
                                        &free_data<ClientConfig>);
    i.ssl_peer = SSL_get_ex_new_index(0, nullptr, nullptr, &dup_data<PeerIdentity>,
                                      &free_data<PeerIdentity>);
    return i;
  }();
  return idx;
}

template <typename T>
bool replace_ctx(SSL_CTX* ctx, int index, std::unique_ptr<T> value) {
  if (index < 0) return false;
  std::unique_ptr<T> old(static_cast<T*>(SSL_CTX_get_ex_data(ctx, index)));
  if (SSL_CTX_set_ex_data(ctx, index, value.get()) != 1) {
    old.release();  // still stored
    return false;
  }
  value.release();
  return true;
}

template <typename T>
bool replace_ssl(SSL* ssl, int index, std::unique_ptr<T> value) {
  if (index < 0) return false;
  std::unique_ptr<T> old(static_cast<T*>(SSL_get_ex_data(ssl, index)));
  if (SSL_set_ex_data(ssl, index, value.get()) != 1) {
    old.release();
    return false;
  }
  value.release();
  return true;
}

}  // namespace

bool set_server_config(SSL_CTX* ctx, std::unique_ptr<ServerConfig> config) {
  return replace_ctx(ctx, indices().ctx_server, std::move(config));
}

const ServerConfig* server_config(const SSL_CTX* ctx) {
  if (ctx == nullptr || indices().ctx_server < 0) return nullptr;
  return static_cast<const ServerConfig*>(SSL_CTX_get_ex_data(ctx, indices().ctx_server));
}

bool set_client_config(SSL_CTX* ctx, std::unique_ptr<ClientConfig> config) {
  return replace_ctx(ctx, indices().ctx_client, std::move(config));
}

bool set_client_config(SSL* ssl, std::unique_ptr<ClientConfig> config) {
  return replace_ssl(ssl, indices().ssl_client, std::move(config));
}

const ClientConfig* client_config(const SSL* ssl) {
  if (ssl == nullptr || indices().ssl_client < 0) return nullptr;
  if (auto* own = static_cast<const ClientConfig*>(SSL_get_ex_data(ssl, indices().ssl_client)))
    return own;
  const SSL_CTX* ctx = SSL_get_SSL_CTX(ssl);
  if (ctx == nullptr) return nullptr;
  return static_cast<const ClientConfig*>(SSL_CTX_get_ex_data(ctx, indices().ctx_client));
}

bool set_peer_identity(SSL* ssl, std::unique_ptr<PeerIdentity> peer) {
  return replace_ssl(ssl, indices().ssl_peer, std::move(peer));
}

const PeerIdentity* peer_identity(const SSL* ssl) {
  if (ssl == nullptr || indices().ssl_peer < 0 || !SSL_is_init_finished(ssl)) return nullptr;
  // A TLS 1.3 server may look a PSK up and then not use it (another hash,
  // a certificate handshake): only a PSK-authenticated session has a peer.
  if (!psk_was_used(ssl)) return nullptr;
  return static_cast<const PeerIdentity*>(SSL_get_ex_data(ssl, indices().ssl_peer));
}

}  // namespace m2mvault::tls
