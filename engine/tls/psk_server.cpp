// Server side: psk_identity -> (Kpsa, AE-ID/CSE-ID) from the vault, the
// psk-lookup-table of TR-0038 7.1.2 ("Operation of MN-CSE").
#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include <array>
#include <memory>
#include <new>
#include <string>

#include "api/error.h"
#include "engine/tls/m2mvault_tls.h"
#include "engine/tls/psk_release.h"
#include "engine/tls/ssl_data.h"
#include "engine/tls/tls13_session.h"
#include "engine/tls/tls_errors.h"

namespace m2mvault::tls {
namespace {

std::unique_ptr<PeerIdentity> to_peer(ReleasedKey&& key) {
  return std::make_unique<PeerIdentity>(PeerIdentity{std::move(key.id), std::move(key.name),
                                                     std::move(key.kind), std::move(key.entity)});
}

// Looks `identity` up; fills `psk`. Reports and returns nullopt on failure,
// with `not_found` telling an unknown identity from other failures.
std::optional<ReleasedKey> look_up(SSL* ssl, std::string_view identity, std::span<std::uint8_t> psk,
                                   std::size_t& psk_len, bool& not_found) {
  not_found = false;
  const ServerConfig* config = server_config(SSL_get_SSL_CTX(ssl));
  if (config == nullptr) {
    report_error(M2MVAULT_TLS_INTERNAL, "the SSL_CTX has no m2mvault PSK configuration");
    return std::nullopt;
  }
  if (!plausible_identity(identity)) {
    not_found = true;
    report_error(M2MVAULT_TLS_NOT_FOUND,
                 "the client sent a psk_identity that is not a key identifier");
    return std::nullopt;
  }
  try {
    return release_psk(config->socket_path, {{"id", std::string(identity)}}, psk, psk_len);
  } catch (const Error& e) {
    not_found = e.code() == ErrorCode::not_found;
    report_error(e);
  } catch (const std::bad_alloc&) {
    report_error(M2MVAULT_TLS_INTERNAL, "out of memory looking up a psk_identity");
  } catch (const std::exception&) {
    report_error(M2MVAULT_TLS_INTERNAL, "psk_identity look-up failed");
  }
  return std::nullopt;
}

// TLS 1.2: libssl hands us its PSK buffer; the key is decoded straight into it.
unsigned int psk_server_callback(SSL* ssl, const char* identity, unsigned char* psk,
                                 unsigned int max_psk_len) {
  if (identity == nullptr) return 0;
  // In TLS 1.3 libssl calls this after psk_find_session_callback found
  // nothing: that answer stands (one look-up, one audit record).
  if (SSL_version(ssl) >= TLS1_3_VERSION) return 0;
  std::size_t len = 0;
  bool not_found = false;
  auto key = look_up(ssl, identity, {psk, max_psk_len}, len, not_found);
  if (!key) return 0;  // libssl answers unknown_psk_identity
  if (!set_peer_identity(ssl, to_peer(std::move(*key)))) {
    OPENSSL_cleanse(psk, max_psk_len);
    report_error(M2MVAULT_TLS_INTERNAL, "cannot record the peer identity on the SSL");
    return 0;
  }
  return static_cast<unsigned int>(len);
}

// TLS 1.3: the key goes into a session object (libssl copies it); our
// buffer is wiped before returning. Called for each identity the client
// offers, tickets included.
int psk_find_session_callback(SSL* ssl, const unsigned char* identity, std::size_t identity_len,
                              SSL_SESSION** session) {
  *session = nullptr;
  std::array<std::uint8_t, PSK_MAX_PSK_LEN> psk;
  std::size_t len = 0;
  bool not_found = false;
  auto key = look_up(ssl, std::string_view(reinterpret_cast<const char*>(identity), identity_len),
                     psk, len, not_found);
  if (!key) return not_found ? 1 : 0;  // unknown: ignored (RFC 8446 4.2.11); else abort
  SSL_SESSION* made = make_psk_session(ssl, std::span(psk).first(len));
  OPENSSL_cleanse(psk.data(), psk.size());
  if (made == nullptr) {
    report_error(M2MVAULT_TLS_INTERNAL, "cannot make a TLS 1.3 PSK session");
    return 0;
  }
  if (!set_peer_identity(ssl, to_peer(std::move(*key)))) {
    SSL_SESSION_free(made);
    report_error(M2MVAULT_TLS_INTERNAL, "cannot record the peer identity on the SSL");
    return 0;
  }
  *session = made;  // owned by libssl from here
  return 1;
}

}  // namespace
}  // namespace m2mvault::tls

extern "C" int m2mvault_tls_server_enable(SSL_CTX* ctx, const char* socket_path) {
  using namespace m2mvault::tls;
  clear_last_error();
  if (ctx == nullptr) {
    report_error(M2MVAULT_TLS_INVALID_ARGUMENT, "m2mvault_tls_server_enable: ctx is NULL");
    return 0;
  }
  try {
    auto config = std::make_unique<ServerConfig>(ServerConfig{resolve_socket_path(socket_path)});
    if (!set_server_config(ctx, std::move(config))) {
      report_error(M2MVAULT_TLS_INTERNAL, "cannot attach the PSK configuration to the SSL_CTX");
      return 0;
    }
  } catch (const std::exception&) {
    report_error(M2MVAULT_TLS_INTERNAL, "cannot attach the PSK configuration to the SSL_CTX");
    return 0;
  }
  SSL_CTX_set_psk_server_callback(ctx, &psk_server_callback);
  SSL_CTX_set_psk_find_session_callback(ctx, &psk_find_session_callback);
  // Every session authenticated (and audited) by the vault: no resumption.
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_num_tickets(ctx, 0);
  return 1;
}
