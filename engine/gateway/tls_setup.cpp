#include "engine/gateway/tls_setup.h"

#include <openssl/err.h>
#include <openssl/provider.h>
#include <openssl/store.h>
#include <openssl/x509.h>

#include <cstdlib>

#include "api/error.h"
#include "engine/tls/m2mvault_tls.h"

namespace m2mvault::gateway {
namespace {

// TS-0003 10.2.2 and 10.2.3: the mandatory TLS 1.2 suites.
constexpr const char* kPskSuite = "PSK-AES128-CBC-SHA256";
constexpr const char* kCertificateSuite = "ECDHE-ECDSA-AES128-SHA256";

[[noreturn]] void fail(const std::string& what) {
  const std::string detail = drain_openssl_errors();
  throw Error(ErrorCode::invalid_argument, detail.empty() ? what : what + ": " + detail);
}

using PkeyPtr = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;

// The m2mvault provider, and the default one beside it for everything
// that is not a vault key (loading one provider explicitly stops OpenSSL
// from loading the default by itself). Loaded once, kept for the process.
void load_providers(const TlsOptions& options) {
  if (!options.socket_path.empty()) ::setenv("M2MVAULT_SOCKET", options.socket_path.c_str(), 1);
  if (!options.provider_dir.empty() &&
      OSSL_PROVIDER_set_default_search_path(nullptr, options.provider_dir.c_str()) != 1)
    fail("cannot use provider directory '" + options.provider_dir + "'");
  if (OSSL_PROVIDER_load(nullptr, "m2mvault") == nullptr)
    fail(
        "cannot load the OpenSSL provider 'm2mvault' (m2mvault.so; set OPENSSL_MODULES or "
        "--provider-dir)");
  if (OSSL_PROVIDER_load(nullptr, "default") == nullptr)
    fail("cannot load the OpenSSL provider 'default'");
}

// The vault key `m2mvault:<name>`: a handle whose private operations go to
// the daemon; the key itself never leaves the secure element.
PkeyPtr load_vault_key(const std::string& name) {
  const std::string uri = "m2mvault:" + name;
  std::unique_ptr<OSSL_STORE_CTX, decltype(&OSSL_STORE_close)> store(
      OSSL_STORE_open_ex(uri.c_str(), nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                         nullptr),
      &OSSL_STORE_close);
  if (!store) fail("cannot open '" + uri + "'");
  OSSL_STORE_expect(store.get(), OSSL_STORE_INFO_PKEY);
  while (!OSSL_STORE_eof(store.get())) {
    std::unique_ptr<OSSL_STORE_INFO, decltype(&OSSL_STORE_INFO_free)> info(
        OSSL_STORE_load(store.get()), &OSSL_STORE_INFO_free);
    if (!info) {
      if (OSSL_STORE_error(store.get())) break;
      continue;
    }
    if (OSSL_STORE_INFO_get_type(info.get()) == OSSL_STORE_INFO_PKEY)
      return PkeyPtr(OSSL_STORE_INFO_get1_PKEY(info.get()), &EVP_PKEY_free);
  }
  fail("no private key at '" + uri + "'");
}

}  // namespace

std::string drain_openssl_errors() {
  std::string out;
  const char* data = nullptr;
  int flags = 0;
  while (unsigned long e = ERR_get_error_all(nullptr, nullptr, nullptr, &data, &flags)) {
    char line[256];
    ERR_error_string_n(e, line, sizeof line);
    if (!out.empty()) out += "; ";
    out += line;
    if (data != nullptr && (flags & ERR_TXT_STRING) && *data != '\0')
      out += std::string(" (") + data + ")";
  }
  return out;
}

SslCtxPtr make_server_context(const TlsOptions& options) {
  const bool certificate = !options.key_name.empty();
  if (!options.psk && !certificate)
    throw Error(ErrorCode::invalid_argument, "choose --psk, --key/--cert, or both");
  if (certificate && options.cert_file.empty())
    throw Error(ErrorCode::invalid_argument, "--key needs --cert (the key's certificate chain)");

  if (certificate) load_providers(options);
  SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()), &SSL_CTX_free);
  if (!ctx) fail("cannot create a TLS context");
  SSL_CTX_set_min_proto_version(ctx.get(), options.min_version);
  SSL_CTX_set_max_proto_version(ctx.get(), options.max_version);
  SSL_CTX_set_mode(ctx.get(), SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);

  std::string ciphers = options.ciphers;
  if (ciphers.empty()) {
    if (options.psk) ciphers = kPskSuite;
    if (certificate) ciphers += std::string(ciphers.empty() ? "" : ":") + kCertificateSuite;
  }
  if (SSL_CTX_set_cipher_list(ctx.get(), ciphers.c_str()) != 1)
    fail("cipher list '" + ciphers + "' names no usable TLS 1.2 suite");
  if (!options.ciphersuites.empty() &&
      SSL_CTX_set_ciphersuites(ctx.get(), options.ciphersuites.c_str()) != 1)
    fail("TLS 1.3 suites '" + options.ciphersuites + "' are not usable");

  if (options.psk &&
      m2mvault_tls_server_enable(
          ctx.get(), options.socket_path.empty() ? nullptr : options.socket_path.c_str()) != 1)
    fail("cannot enable the vault PSK look-up");

  if (certificate) {
    if (SSL_CTX_use_certificate_chain_file(ctx.get(), options.cert_file.c_str()) != 1)
      fail("cannot read the certificate chain '" + options.cert_file + "'");
    PkeyPtr key = load_vault_key(options.key_name);
    if (SSL_CTX_use_PrivateKey(ctx.get(), key.get()) != 1)
      fail("cannot use vault key '" + options.key_name + "'");
    if (SSL_CTX_check_private_key(ctx.get()) != 1)
      fail("vault key '" + options.key_name + "' does not match '" + options.cert_file + "'");
  }
  if (!options.client_ca_file.empty()) {
    if (SSL_CTX_load_verify_locations(ctx.get(), options.client_ca_file.c_str(), nullptr) != 1)
      fail("cannot read client CA file '" + options.client_ca_file + "'");
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  }
  return ctx;
}

}  // namespace m2mvault::gateway
