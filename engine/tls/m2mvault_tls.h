/* libm2mvault-tls: TLS-PSK from the m2mvault vault for OpenSSL 3 TLS stacks.
 *
 * The psk-lookup-table of TR-0038 clause 7.1.2, kept in the vault: a TLS
 * server resolves the psk_identity a client sends (a KpsaId, or a KcId) to
 * the PSK and to the AE-ID/CSE-ID the key is bound to; a TLS client selects
 * its Kpsa by KpsaId. Both for TLS 1.2 (TLS_PSK_WITH_AES_128_CBC_SHA256,
 * OpenSSL name PSK-AES128-CBC-SHA256) and for TLS 1.3 external PSKs (with
 * the SHA-256 suite TLS_AES_128_GCM_SHA256).
 *
 * Every PSK is fetched from m2mvaultd at each handshake with the audited
 * operation `psk.release` (the caller needs the psk.release grant), written
 * into libssl's buffer and wiped at once: the library keeps no key values.
 *
 * Thread-safe: any number of threads may run handshakes at once (each call
 * takes a daemon connection from a small pool); after fork() the child opens
 * its own connections. All functions return 1 on success and 0 on failure;
 * on failure an error is pushed on OpenSSL's error queue (library
 * "m2mvault-tls") and m2mvault_tls_last_error() describes it. Messages name
 * the key or the daemon, never a key byte.
 */
#ifndef M2MVAULT_TLS_H
#define M2MVAULT_TLS_H

#include <openssl/ssl.h>

#if defined(__GNUC__)
#define M2MVAULT_TLS_API __attribute__((visibility("default")))
#else
#define M2MVAULT_TLS_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* The stable error codes of the m2mvault protocol (api/PROTOCOL.md). */
typedef enum m2mvault_tls_error {
  M2MVAULT_TLS_OK = 0,
  M2MVAULT_TLS_INVALID_ARGUMENT = 1,
  M2MVAULT_TLS_NOT_FOUND = 2, /* no key with that identifier: unknown psk_identity */
  M2MVAULT_TLS_DENIED = 3,    /* the caller lacks the psk.release grant */
  M2MVAULT_TLS_CONFLICT = 4,
  M2MVAULT_TLS_EXPIRED = 5,             /* the key's lifetime has ended */
  M2MVAULT_TLS_UNSUPPORTED = 6,         /* not a PSK kind the vault releases (kpsa, kc) */
  M2MVAULT_TLS_BACKEND_UNAVAILABLE = 7, /* m2mvaultd cannot be reached */
  M2MVAULT_TLS_INTERNAL = 8
} m2mvault_tls_error;

/* Server side. Installs on `ctx` the PSK look-up for TLS 1.2
 * (SSL_CTX_set_psk_server_callback) and TLS 1.3
 * (SSL_CTX_set_psk_find_session_callback). `socket_path` is m2mvaultd's
 * socket; NULL means $M2MVAULT_SOCKET, else /run/m2mvault/m2mvault.sock
 * (resolved now, so a process that later clears its environment keeps it).
 *
 * The caller chooses the cipher list; PSK-AES128-CBC-SHA256 must be in it
 * for TLS 1.2. Session resumption is turned off on `ctx` (no tickets, no
 * session cache) so that every session is authenticated against the vault,
 * audited, and a deleted or expired key stops working at the next handshake.
 *
 * During a handshake: an identity the vault does not know fails a TLS 1.2
 * handshake (alert unknown_psk_identity); in TLS 1.3 it is ignored as RFC
 * 8446 asks, so the handshake fails unless the server also has a
 * certificate. A denied, expired or unreachable look-up fails the handshake.
 * The daemon audits every look-up. */
M2MVAULT_TLS_API int m2mvault_tls_server_enable(SSL_CTX* ctx, const char* socket_path);

/* Client side. Makes `ssl` (or every SSL later made from `ctx`) offer the
 * PSK `key` — a KpsaId, a KcId, or a key name — in TLS 1.2 (through
 * SSL_set_psk_client_callback; the caller's cipher list must allow
 * PSK-AES128-CBC-SHA256) and in TLS 1.3 (SSL_set_psk_use_session_callback).
 * The psk_identity sent is the key's identifier as the vault stores it.
 * `socket_path` as for m2mvault_tls_server_enable(). Settings on an SSL win
 * over those of its SSL_CTX. The key is looked up at handshake time: an
 * unknown key fails the handshake, not this call. */
M2MVAULT_TLS_API int m2mvault_tls_client_use_psk(SSL* ssl, const char* key,
                                                 const char* socket_path);
M2MVAULT_TLS_API int m2mvault_tls_ctx_client_use_psk(SSL_CTX* ctx, const char* key,
                                                     const char* socket_path);

/* The authenticated peer of a completed handshake that used a vault PSK
 * (TR-0038 7.1.2: "the client identity is associated with the established
 * TLS session"): the AE-ID/CSE-ID bound to the key (its `entity`), the
 * key's identifier (the psk_identity: KpsaId or KcId), its name and its kind
 * ("kpsa" or "kc"). On a server the entity is the client's AE-ID/CSE-ID; on
 * a client, whatever the vault binds the key to (the server's CSE-ID).
 * NULL before the handshake has completed, when no vault PSK was used, or
 * (entity only) when the key is bound to no entity. The strings live as
 * long as `ssl`. */
M2MVAULT_TLS_API const char* m2mvault_tls_peer_entity(const SSL* ssl);
M2MVAULT_TLS_API const char* m2mvault_tls_peer_psk_id(const SSL* ssl);
M2MVAULT_TLS_API const char* m2mvault_tls_peer_key_name(const SSL* ssl);
M2MVAULT_TLS_API const char* m2mvault_tls_peer_key_kind(const SSL* ssl);

/* The last failure of this library on the calling thread — of a call above,
 * or of a look-up inside a handshake the thread ran. The message, one line
 * "code: text" (e.g. "not_found: no key with identifier 'x@y'"), stays valid
 * until the thread's next call into the library; "" when there was none.
 * m2mvault_tls_clear_error() forgets it. */
M2MVAULT_TLS_API m2mvault_tls_error m2mvault_tls_last_error(void);
M2MVAULT_TLS_API const char* m2mvault_tls_last_error_message(void);
M2MVAULT_TLS_API void m2mvault_tls_clear_error(void);

/* The wire name of an error code ("not_found", ...). */
M2MVAULT_TLS_API const char* m2mvault_tls_error_name(m2mvault_tls_error code);

#ifdef __cplusplus
}
#endif

#endif /* M2MVAULT_TLS_H */
