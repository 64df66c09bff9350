#include "vault/tls_exchange.h"

#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <algorithm>

#include "api/encoding.h"
#include "api/error.h"
#include "vault/identifiers.h"
#include "vault/x509_util.h"

namespace m2mvault::vault {
namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

// A host name, or a CSE-ID in its DNS form (`my.m2mprovider.org/in-cse`):
// the domain part compares case-insensitively, the rest exactly.
std::string host_form(std::string_view name) {
  const auto slash = name.find('/');
  if (slash == std::string_view::npos) return lower(name);
  return lower(name.substr(0, slash)) + std::string(name.substr(slash));
}

bool certificate_name_matches(const CertificateNames& names, const std::string& wanted) {
  const std::string wanted_host = host_form(wanted);
  for (const auto& n : names.dns)
    if (host_form(n) == wanted_host) return true;
  for (const auto& n : names.common_names)
    if (host_form(n) == wanted_host) return true;
  return std::find(names.uri.begin(), names.uri.end(), wanted) != names.uri.end();
}

std::string joined(const std::vector<std::string>& names) {
  if (names.empty()) return "none";
  std::string out;
  for (const auto& n : names) {
    if (!out.empty()) out += ", ";
    out += "'" + printable_excerpt(n) + "'";
  }
  return out;
}

}  // namespace

struct TlsExchange::State {
  hsm::SecureElement& se;
  TlsExchangeSettings settings;
  std::vector<X509Ptr> extra_anchors;
  SslCtxPtr ctx;
  SslPtr ssl;
  BIO* network_in = nullptr;   // owned by ssl
  BIO* network_out = nullptr;  // owned by ssl
  std::string failure;         // why a callback refused, for the error message
  std::vector<std::string> peer_names;
  bool done = false;
  bool failed = false;

  State(hsm::SecureElement& s, TlsExchangeSettings t) : se(s), settings(std::move(t)) {}

  static unsigned int psk_client(SSL* ssl, const char* /*hint*/, char* identity,
                                 unsigned int max_identity_len, unsigned char* psk,
                                 unsigned int max_psk_len) {
    auto* st = static_cast<State*>(SSL_get_app_data(ssl));
    const PskCredential& cred = *st->settings.psk;
    if (cred.identity.size() + 1 > max_identity_len) {
      st->failure = "the psk_identity is too long for TLS";
      return 0;
    }
    std::copy(cred.identity.begin(), cred.identity.end(), identity);
    identity[cred.identity.size()] = '\0';
    try {
      return static_cast<unsigned int>(hsm::copy_psk_for_tls(
          st->se, hsm::WrappedSecretRef{cred.blob}, std::span<std::uint8_t>(psk, max_psk_len)));
    } catch (const std::exception& e) {
      st->failure = fmt::format("the PSK cannot be used: {}", e.what());
      return 0;
    }
  }

  // Replaces libssl's chain verification with TS-0003 8.1.1.2.2's.
  static int verify_peer(X509_STORE_CTX* store_ctx, void* arg) {
    auto* st = static_cast<State*>(arg);
    try {
      return st->check_peer(store_ctx) ? 1 : 0;
    } catch (const std::exception& e) {
      st->failure = e.what();
      X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_UNSPECIFIED);
      return 0;
    }
  }

  bool check_peer(X509_STORE_CTX* store_ctx) {
    const PeerCheck& check = settings.certificate->peer;
    X509* leaf = X509_STORE_CTX_get0_cert(store_ctx);
    STACK_OF(X509)* sent = X509_STORE_CTX_get0_untrusted(store_ctx);
    if (!leaf) {
      failure = "the peer sent no certificate";
      X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_UNSPECIFIED);
      return false;
    }
    const CertificateNames names = names_of(leaf);
    if (!certificate_name_matches(names, check.certificate_name)) {
      failure = fmt::format(
          "the peer's certificate names ({}) do not include the configured Certificate Name '{}'",
          joined(names.all()), printable_excerpt(check.certificate_name));
      X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_HOSTNAME_MISMATCH);
      return false;
    }

    // The Root of Trust names a key: find the certificate that carries it.
    X509* anchor = nullptr;
    auto consider = [&](X509* c) {
      if (!anchor && key_hash(spki_of(c)) == check.root_of_trust) anchor = c;
    };
    consider(leaf);
    for (int i = 0; sent && i < sk_X509_num(sent); ++i) consider(sk_X509_value(sent, i));
    for (const auto& c : extra_anchors) consider(c.get());
    if (!anchor) {
      failure = fmt::format(
          "no certificate in the peer's chain or the vault's own chain has the Root of Trust key "
          "hash {}",
          encoding::hex_encode(check.root_of_trust));
      X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);
      return false;
    }

    X509StorePtr store(X509_STORE_new());
    X509StoreCtxPtr verify(X509_STORE_CTX_new());
    if (!store || !verify || X509_STORE_add_cert(store.get(), anchor) != 1 ||
        X509_STORE_CTX_init(verify.get(), store.get(), leaf, sent) != 1) {
      throw Error(ErrorCode::internal, "cannot set up certificate verification");
    }
    // The anchor is trusted because its key is the Root of Trust, whether or
    // not it is self-signed. Extended key usage is not enforced: a CSE is a
    // TLS client to some peers and a server to others with one certificate.
    X509_STORE_CTX_set_flags(verify.get(), X509_V_FLAG_PARTIAL_CHAIN);
    if (X509_verify_cert(verify.get()) != 1) {
      const int err = X509_STORE_CTX_get_error(verify.get());
      failure = fmt::format("the peer's certificate chain does not verify to the Root of Trust: {}",
                            X509_verify_cert_error_string(err));
      X509_STORE_CTX_set_error(store_ctx, err);
      return false;
    }
    peer_names = names.all();
    return true;
  }
};

TlsExchange::TlsExchange(hsm::SecureElement& se, TlsExchangeSettings settings)
    : state_(std::make_unique<State>(se, std::move(settings))) {
  State& st = *state_;
  const auto& s = st.settings;
  if (s.psk.has_value() == s.certificate.has_value())
    throw Error(ErrorCode::invalid_argument, "a handshake needs either a PSK or a certificate");
  if (s.psk && s.server)
    throw Error(ErrorCode::unsupported, "the vault runs PSK handshakes as the client only");

  st.ctx.reset(SSL_CTX_new(TLS_method()));
  if (!st.ctx) throw Error(ErrorCode::internal, openssl_errors("cannot create a TLS context"));
  SSL_CTX* ctx = st.ctx.get();
  // oneM2M's suites are TLS 1.2 suites (TS-0003 10.2); key export is defined on it.
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  const std::string suites = !s.cipher_suites.empty()
                                 ? s.cipher_suites
                                 : (s.psk ? kPskCipherSuites : kCertificateCipherSuites);
  if (SSL_CTX_set_cipher_list(ctx, suites.c_str()) != 1) {
    ERR_clear_error();
    throw Error(ErrorCode::invalid_argument,
                fmt::format("no usable TLS 1.2 cipher suite in '{}'", printable_excerpt(suites)));
  }

  if (s.certificate) {
    const auto& cred = *s.certificate;
    auto chain = read_certificates(cred.chain_pem, "the key's certificate chain");
    if (SSL_CTX_use_certificate(ctx, chain.front().get()) != 1)
      throw Error(ErrorCode::invalid_argument,
                  openssl_errors("the key's certificate cannot be used for TLS"));
    for (std::size_t i = 1; i < chain.size(); ++i) {
      if (SSL_CTX_add1_chain_cert(ctx, chain[i].get()) != 1)
        throw Error(ErrorCode::internal, openssl_errors("cannot add a chain certificate"));
    }
    if (SSL_CTX_use_PrivateKey(ctx, cred.key.get()) != 1) {
      throw Error(ErrorCode::invalid_argument,
                  "the key's certificate does not match its private key: " +
                      openssl_errors("key mismatch"));
    }
    // The vault's own chain may end in the root the peer's chain omits.
    st.extra_anchors = std::move(chain);
    for (const auto& pem : cred.peer.anchor_candidates_pem) {
      for (auto& c : read_certificates(pem, "a trust anchor"))
        st.extra_anchors.push_back(std::move(c));
    }
    SSL_CTX_set_verify(
        ctx, s.server ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_PEER,
        nullptr);
    SSL_CTX_set_cert_verify_callback(ctx, &State::verify_peer, &st);
  } else {
    SSL_CTX_set_psk_client_callback(ctx, &State::psk_client);
  }

  st.ssl.reset(SSL_new(ctx));
  if (!st.ssl) throw Error(ErrorCode::internal, openssl_errors("cannot create a TLS connection"));
  SSL_set_app_data(st.ssl.get(), &st);
  st.network_in = BIO_new(BIO_s_mem());
  st.network_out = BIO_new(BIO_s_mem());
  if (!st.network_in || !st.network_out) {
    BIO_free(st.network_in);
    BIO_free(st.network_out);
    throw Error(ErrorCode::internal, "out of memory");
  }
  SSL_set_bio(st.ssl.get(), st.network_in, st.network_out);
  if (s.server) {
    SSL_set_accept_state(st.ssl.get());
  } else {
    SSL_set_connect_state(st.ssl.get());
    // SNI is mandatory in oneM2M (TS-0003 10.2) where the peer has a host name.
    if (!s.server_name.empty() && is_valid_fqdn(s.server_name)) {
      SSL_set_tlsext_host_name(st.ssl.get(), s.server_name.c_str());
    }
  }
}

TlsExchange::~TlsExchange() = default;

namespace {

std::vector<std::uint8_t> drain(BIO* bio) {
  std::vector<std::uint8_t> out;
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio, &data);
  if (len > 0) out.assign(data, data + len);
  (void)BIO_reset(bio);
  return out;
}

}  // namespace

TlsExchange::Step TlsExchange::process(std::span<const std::uint8_t> input) {
  State& st = *state_;
  if (st.failed) throw Error(ErrorCode::handshake_failed, "the handshake has already failed");
  if (st.done) throw Error(ErrorCode::invalid_argument, "the handshake is already complete");
  if (!input.empty()) {
    if (BIO_write(st.network_in, input.data(), static_cast<int>(input.size())) !=
        static_cast<int>(input.size()))
      throw Error(ErrorCode::internal, "cannot buffer the peer's message");
  }
  ERR_clear_error();
  const int rc = SSL_do_handshake(st.ssl.get());
  if (rc == 1) {
    st.done = true;
  } else {
    const int err = SSL_get_error(st.ssl.get(), rc);
    if (err != SSL_ERROR_WANT_READ) {
      st.failed = true;
      failure_output_ = drain(st.network_out);
      std::string why = !st.failure.empty() ? st.failure : openssl_errors("");
      if (why.empty()) why = "the peer closed the connection";
      ERR_clear_error();
      throw Error(ErrorCode::handshake_failed, fmt::format("TLS handshake failed: {}", why));
    }
  }
  return {drain(st.network_out), st.done};
}

hsm::ExportedKey TlsExchange::export_key(std::string_view label) {
  if (!state_->done) throw Error(ErrorCode::internal, "key export before the handshake completed");
  try {
    return hsm::ExportedKey::from_handshake(state_->ssl.get(), label);
  } catch (const hsm::Error& e) {
    throw Error(ErrorCode::internal, e.what());
  }
}

std::string TlsExchange::cipher() const {
  const char* name = SSL_get_cipher_name(state_->ssl.get());
  return name ? name : "";
}

std::vector<std::string> TlsExchange::peer_names() const {
  return state_->peer_names;
}

std::array<std::uint8_t, 32> certificate_key_hash(const std::string& pem) {
  auto certs = read_certificates(pem, "the certificate");
  return key_hash(spki_of(certs.front().get()));
}

}  // namespace m2mvault::vault
