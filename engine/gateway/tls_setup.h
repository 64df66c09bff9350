// The gateway's server SSL_CTX: TLS-PSK through libm2mvault-tls and/or a
// certificate whose private key stays in the vault (OpenSSL provider
// `m2mvault`, loaded here only when a certificate is configured).
#pragma once

#include <openssl/ssl.h>

#include <memory>
#include <optional>
#include <string>

namespace m2mvault::gateway {

struct TlsOptions {
  bool psk = false;            // TLS-PSK with the vault's psk-lookup-table
  std::string key_name;        // vault signing key (certificate mode) or ""
  std::string cert_file;       // its certificate chain, PEM
  std::string client_ca_file;  // require client certificates issued by these ("" : none)
  std::string socket_path;     // m2mvaultd socket ("" : $M2MVAULT_SOCKET or the default)
  std::string provider_dir;    // where m2mvault.so is ("" : $OPENSSL_MODULES or OpenSSL's)
  std::string ciphers;         // TLS 1.2 cipher list ("" : the oneM2M suites of the modes)
  std::string ciphersuites;    // TLS 1.3 suites ("" : OpenSSL's default)
  int min_version = TLS1_2_VERSION;
  int max_version = TLS1_3_VERSION;
};

using SslCtxPtr = std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)>;

// Builds the context; throws Error naming what failed (the provider, the
// key, the certificate file) with OpenSSL's reason appended.
SslCtxPtr make_server_context(const TlsOptions& options);

// OpenSSL's error queue as one line (and emptied); "" when empty.
std::string drain_openssl_errors();

}  // namespace m2mvault::gateway
