// Client side: an AE's (or CSE's) TLS client offers its Kpsa, selected by
// KpsaId, from the vault (TR-0038 7.1.2 "Operation of ADN-AE1").
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>

#include <array>
#include <cstring>
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

std::optional<ReleasedKey> fetch(SSL* ssl, std::span<std::uint8_t> psk, std::size_t& psk_len) {
  const ClientConfig* config = client_config(ssl);
  if (config == nullptr) {
    report_error(M2MVAULT_TLS_INTERNAL, "no m2mvault PSK is configured on this SSL");
    return std::nullopt;
  }
  try {
    return release_psk(config->socket_path, {{"key", config->key}}, psk, psk_len);
  } catch (const Error& e) {
    report_error(e);
  } catch (const std::bad_alloc&) {
    report_error(M2MVAULT_TLS_INTERNAL, "out of memory fetching the PSK");
  } catch (const std::exception&) {
    report_error(M2MVAULT_TLS_INTERNAL, "fetching the PSK failed");
  }
  return std::nullopt;
}

// Records the key on the SSL; returns the stored identity, or nullptr.
const PeerIdentity* remember(SSL* ssl, ReleasedKey&& key) {
  auto peer = std::make_unique<PeerIdentity>(PeerIdentity{
      std::move(key.id), std::move(key.name), std::move(key.kind), std::move(key.entity)});
  const PeerIdentity* stored = peer.get();
  if (!set_peer_identity(ssl, std::move(peer))) {
    report_error(M2MVAULT_TLS_INTERNAL, "cannot record the PSK identity on the SSL");
    return nullptr;
  }
  return stored;
}

// TLS 1.2: identity and key go into libssl's buffers.
unsigned int psk_client_callback(SSL* ssl, const char* /*hint*/, char* identity,
                                 unsigned int max_identity_len, unsigned char* psk,
                                 unsigned int max_psk_len) {
  std::size_t len = 0;
  auto key = fetch(ssl, {psk, max_psk_len}, len);
  if (!key) return 0;
  if (key->id.empty() || key->id.size() >= max_identity_len) {
    OPENSSL_cleanse(psk, max_psk_len);
    report_error(M2MVAULT_TLS_INVALID_ARGUMENT,
                 "the identifier of key '" + key->name + "' does not fit a TLS psk_identity");
    return 0;
  }
  std::memcpy(identity, key->id.c_str(), key->id.size() + 1);
  if (remember(ssl, std::move(*key)) == nullptr) {
    OPENSSL_cleanse(psk, max_psk_len);
    return 0;
  }
  return static_cast<unsigned int>(len);
}

// TLS 1.3: called with md == NULL for the ClientHello and again with the
// server's hash after a HelloRetryRequest. Our PSKs are SHA-256 ones.
int psk_use_session_callback(SSL* ssl, const EVP_MD* md, const unsigned char** id,
                             std::size_t* id_len, SSL_SESSION** session) {
  *session = nullptr;
  *id = nullptr;
  *id_len = 0;
  if (md != nullptr && EVP_MD_get_type(md) != NID_sha256) return 1;  // offer no PSK
  std::array<std::uint8_t, PSK_MAX_PSK_LEN> psk;
  std::size_t len = 0;
  auto key = fetch(ssl, psk, len);
  if (!key) return 0;
  SSL_SESSION* made = make_psk_session(ssl, std::span(psk).first(len));
  OPENSSL_cleanse(psk.data(), psk.size());
  if (made == nullptr) {
    report_error(M2MVAULT_TLS_INTERNAL, "cannot make a TLS 1.3 PSK session");
    return 0;
  }
  const PeerIdentity* stored = remember(ssl, std::move(*key));
  if (stored == nullptr) {
    SSL_SESSION_free(made);
    return 0;
  }
  // libssl copies the identity; ours lives on the SSL until it is freed anyway.
  *id = reinterpret_cast<const unsigned char*>(stored->psk_id.data());
  *id_len = stored->psk_id.size();
  *session = made;
  return 1;
}

template <typename Target>
int use_psk(Target* target, const char* key, const char* socket_path, const char* function) {
  clear_last_error();
  if (target == nullptr || key == nullptr || *key == '\0') {
    report_error(M2MVAULT_TLS_INVALID_ARGUMENT,
                 std::string(function) + ": the SSL object and the key are required");
    return 0;
  }
  try {
    auto config =
        std::make_unique<ClientConfig>(ClientConfig{key, resolve_socket_path(socket_path)});
    if (!set_client_config(target, std::move(config))) {
      report_error(M2MVAULT_TLS_INTERNAL,
                   std::string(function) + ": cannot attach the PSK setting");
      return 0;
    }
  } catch (const std::exception&) {
    report_error(M2MVAULT_TLS_INTERNAL, std::string(function) + ": cannot attach the PSK setting");
    return 0;
  }
  return 1;
}

}  // namespace
}  // namespace m2mvault::tls

extern "C" int m2mvault_tls_client_use_psk(SSL* ssl, const char* key, const char* socket_path) {
  using namespace m2mvault::tls;
  if (!use_psk(ssl, key, socket_path, "m2mvault_tls_client_use_psk")) return 0;
  SSL_set_psk_client_callback(ssl, &psk_client_callback);
  SSL_set_psk_use_session_callback(ssl, &psk_use_session_callback);
  return 1;
}

extern "C" int m2mvault_tls_ctx_client_use_psk(SSL_CTX* ctx, const char* key,
                                               const char* socket_path) {
  using namespace m2mvault::tls;
  if (!use_psk(ctx, key, socket_path, "m2mvault_tls_ctx_client_use_psk")) return 0;
  SSL_CTX_set_psk_client_callback(ctx, &psk_client_callback);
  SSL_CTX_set_psk_use_session_callback(ctx, &psk_use_session_callback);
  return 1;
}
