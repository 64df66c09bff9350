// What the library attaches to SSL and SSL_CTX objects (OpenSSL ex_data):
// the configuration its callbacks read and the authenticated peer they
// record. Each is a C++ object owned by its SSL/SSL_CTX and freed with it.
#pragma once

#include <openssl/ssl.h>

#include <memory>
#include <optional>
#include <string>

namespace m2mvault::tls {

// m2mvault_tls_server_enable(): where to look identities up.
struct ServerConfig {
  std::string socket_path;
};

// m2mvault_tls_client_use_psk(): which key to offer, from where.
struct ClientConfig {
  std::string key;  // name or identifier, as the caller gave it
  std::string socket_path;
};

// The key a handshake used and the entity it is bound to (TR-0038 7.1.2).
struct PeerIdentity {
  std::string psk_id;
  std::string key_name;
  std::string kind;
  std::optional<std::string> entity;
};

// Each setter replaces (and frees) what was there. Return false when
// OpenSSL could not store the pointer (then nothing is owned by the object).
bool set_server_config(SSL_CTX* ctx, std::unique_ptr<ServerConfig> config);
const ServerConfig* server_config(const SSL_CTX* ctx);

bool set_client_config(SSL_CTX* ctx, std::unique_ptr<ClientConfig> config);
bool set_client_config(SSL* ssl, std::unique_ptr<ClientConfig> config);
// The SSL's own setting, else its SSL_CTX's; nullptr when neither.
const ClientConfig* client_config(const SSL* ssl);

bool set_peer_identity(SSL* ssl, std::unique_ptr<PeerIdentity> peer);
// nullptr until the handshake has completed.
const PeerIdentity* peer_identity(const SSL* ssl);

}  // namespace m2mvault::tls
