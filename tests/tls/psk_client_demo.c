/* An AE's TLS client built on libm2mvault-tls, written in C: it selects its
 * Kpsa from the vault by KpsaId (TR-0038 7.1.2 "Operation of ADN-AE1"),
 * connects, sends one line and prints what comes back.
 *
 *   m2mvault-tls-client SOCKET KPSA_ID HOST:PORT {1.2|1.3} MESSAGE
 *
 * On success prints, one per line: "protocol=…", "cipher=…", "psk_id=…",
 * "entity=…", "reply=…" and exits 0; on failure prints the library's error
 * and exits 1. */
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <string.h>

#include "engine/tls/m2mvault_tls.h"

static int fail(const char* what) {
  fprintf(stderr, "m2mvault-tls-client: %s: %s\n", what, m2mvault_tls_last_error_message());
  ERR_print_errors_fp(stderr);
  return 1;
}

int main(int argc, char** argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: %s SOCKET KPSA_ID HOST:PORT {1.2|1.3} MESSAGE\n", argv[0]);
    return 2;
  }
  const char *socket_path = argv[1], *kpsa_id = argv[2], *address = argv[3];
  const int version = strcmp(argv[4], "1.3") == 0 ? TLS1_3_VERSION : TLS1_2_VERSION;
  const char* message = argv[5];

  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == NULL) return fail("SSL_CTX_new");
  SSL_CTX_set_min_proto_version(ctx, version);
  SSL_CTX_set_max_proto_version(ctx, version);
  /* oneM2M TS-0003 10.2.2: TLS_PSK_WITH_AES_128_CBC_SHA256. */
  if (version == TLS1_2_VERSION && SSL_CTX_set_cipher_list(ctx, "PSK-AES128-CBC-SHA256") != 1)
    return fail("cipher list");
  if (m2mvault_tls_ctx_client_use_psk(ctx, kpsa_id, socket_path) != 1) return fail("use psk");

  BIO* bio = BIO_new_connect(address);
  if (bio == NULL || BIO_do_connect(bio) <= 0) return fail("connect");
  SSL* ssl = SSL_new(ctx);
  if (ssl == NULL) return fail("SSL_new");
  SSL_set_bio(ssl, bio, bio);
  if (SSL_connect(ssl) != 1) return fail("TLS handshake");

  const char* entity = m2mvault_tls_peer_entity(ssl);
  printf("protocol=%s\ncipher=%s\npsk_id=%s\nentity=%s\n", SSL_get_version(ssl),
         SSL_get_cipher_name(ssl), m2mvault_tls_peer_psk_id(ssl), entity ? entity : "-");

  char line[1024];
  snprintf(line, sizeof line, "%s\n", message);
  if (SSL_write(ssl, line, (int)strlen(line)) <= 0) return fail("write");
  char reply[1024];
  size_t used = 0;
  while (used + 1 < sizeof reply) {
    const int n = SSL_read(ssl, reply + used, (int)(sizeof reply - 1 - used));
    if (n <= 0) break;
    used += (size_t)n;
    if (memchr(reply, '\n', used) != NULL) break;
  }
  reply[used] = '\0';
  char* nl = strchr(reply, '\n');
  if (nl != NULL) *nl = '\0';
  printf("reply=%s\n", reply);
  SSL_shutdown(ssl);
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  return used > 0 ? 0 : fail("no reply");
}
