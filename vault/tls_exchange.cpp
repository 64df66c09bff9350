#include "vault/tls_exchange.h"

#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <ctime>

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

// The Subject's common name counts only when the certificate has no DNS or
// URI subjectAltName (RFC 6125 6.4.4): TR-0038 Annex B's CSE certificates
// all carry CN=my.m2mprovider.org, and the CSE-ID is in the SAN.
bool certificate_name_matches(const CertificateNames& names, const std::string& wanted) {
  const std::string wanted_host = host_form(wanted);
  for (const auto& n : names.dns)
    if (host_form(n) == wanted_host) return true;
  if (std::find(names.uri.begin(), names.uri.end(), wanted) != names.uri.end()) return true;
  if (!names.dns.empty() || !names.uri.empty()) return false;
  for (const auto& n : names.common_names)
    if (host_form(n) == wanted_host) return true;
  return false;
}

std::vector<std::string> names_compared(const CertificateNames& names) {
  if (!names.dns.empty() || !names.uri.empty()) {
    std::vector<std::string> out = names.dns;
    out.insert(out.end(), names.uri.begin(), names.uri.end());
    return out;
  }
  return names.common_names;
}

// A certificate signed by its own key, with a valid signature.
bool is_validly_self_signed(X509* cert) {
  EVP_PKEY* key = X509_get0_pubkey(cert);
  const bool ok = key && X509_verify(cert, key) == 1;
  ERR_clear_error();
  return ok;
}

// Every suite in the list authenticates as the credential requires: a PSK
// suite for a PSK, a certificate suite otherwise. A mixed list would let a
// peer that knows no PSK pick an unauthenticated (to us) certificate suite,
// and an anonymous suite would skip the peer check.
void check_suites_authenticate(SSL_CTX* ctx, bool psk, const std::string& suites) {
  const STACK_OF(SSL_CIPHER)* list = SSL_CTX_get_ciphers(ctx);
  for (int i = 0; list && i < sk_SSL_CIPHER_num(list); ++i) {
    const SSL_CIPHER* c = sk_SSL_CIPHER_value(list, i);
    const int auth = SSL_CIPHER_get_auth_nid(c);
    const bool fits = psk ? auth == NID_auth_psk : (auth == NID_auth_ecdsa || auth == NID_auth_rsa);
    if (!fits) {
      throw Error(ErrorCode::invalid_argument,
                  fmt::format("cipher suite {} in '{}' does not authenticate with {}",
                              SSL_CIPHER_get_name(c), printable_excerpt(suites),
                              psk ? "the PSK" : "certificates"));
    }
  }
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
  std::optional<std::int64_t> peer_not_after;
  bool peer_verified = false;  // check_peer() accepted the peer's certificate
  bool done = false;
  bool failed = false;

  State(hsm::SecureElement& s, TlsExchangeSettings t) : se(s), settings(std::move(t)) {}

  // libssl callbacks: nothing may be thrown through C.
  static unsigned int psk_client(SSL* ssl, const char* /*hint*/, char* identity,
                                 unsigned int max_identity_len, unsigned char* psk,
                                 unsigned int max_psk_len) noexcept {
    auto* st = static_cast<State*>(SSL_get_app_data(ssl));
    try {
      const PskCredential& cred = *st->settings.psk;
      if (cred.identity.size() + 1 > max_identity_len) {
        st->failure = "the psk_identity is too long for TLS";
        return 0;
      }
      std::copy(cred.identity.begin(), cred.identity.end(), identity);
      identity[cred.identity.size()] = '\0';
      return static_cast<unsigned int>(hsm::copy_psk_for_tls(
          st->se, hsm::WrappedSecretRef{cred.blob}, std::span<std::uint8_t>(psk, max_psk_len)));
    } catch (const std::exception& e) {
      st->record_failure("the PSK cannot be used: ", e.what());
      return 0;
    } catch (...) {
      return 0;
    }
  }

  // Replaces libssl's chain verification with TS-0003 8.1.1.2.2's.
  static int verify_peer(X509_STORE_CTX* store_ctx, void* arg) noexcept {
    auto* st = static_cast<State*>(arg);
    try {
      const bool ok = st->check_peer(store_ctx);
      st->peer_verified = ok;
      return ok ? 1 : 0;
    } catch (const std::exception& e) {
      st->record_failure("", e.what());
    } catch (...) {
    }
    X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_UNSPECIFIED);
    return 0;
  }

  // Why a completed handshake may not be trusted, or nullptr. Belt and
  // braces over the suite list: the suite must authenticate as the
  // credential does, a certificate peer must have passed check_peer(), and
  // the extended master secret (RFC 7627 5.4) must back the key export.
  const char* unauthenticated() const {
    const SSL_CIPHER* c = SSL_get_current_cipher(ssl.get());
    const int auth = c ? SSL_CIPHER_get_auth_nid(c) : NID_undef;
    if (settings.psk && auth != NID_auth_psk) return "the negotiated suite is not a PSK suite";
    if (settings.certificate && !peer_verified) return "the peer's certificate was not verified";
    if (settings.require_extended_master_secret && SSL_get_extms_support(ssl.get()) != 1) {
      return "the peer did not negotiate the extended master secret (RFC 7627), which key "
             "export needs";
    }
    return nullptr;
  }

  void record_failure(const char* prefix, const char* what) noexcept {
    try {
      failure = std::string(prefix) + what;
    } catch (...) {
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
          joined(names_compared(names)), printable_excerpt(check.certificate_name));
      X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_HOSTNAME_MISMATCH);
      return false;
    }

    // The Root of Trust names a key: find the certificate that carries it.
    // Certificates the operator gave (the vault's own chain, --ca) come
    // first and are taken as they are. One the peer sent is taken only when
    // its fields are the key holder's word: the leaf itself (the handshake
    // proves possession of its key) or a certificate validly self-signed by
    // that key. Otherwise a peer could pair the root's key with dates and
    // constraints of its own making.
    X509* anchor = nullptr;
    auto matches = [&](X509* c) { return key_hash(spki_of(c)) == check.root_of_trust; };
    for (const auto& c : extra_anchors)
      if (!anchor && matches(c.get())) anchor = c.get();
    if (!anchor && matches(leaf)) anchor = leaf;
    for (int i = 0; !anchor && sent && i < sk_X509_num(sent); ++i) {
      X509* c = sk_X509_value(sent, i);
      if (matches(c) && is_validly_self_signed(c)) anchor = c;
    }
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
    // libssl's verification settings (security level, depth) apply. The
    // anchor is trusted because its key is the Root of Trust, whether or not
    // it is self-signed. Extended key usage is not enforced: a CSE is a TLS
    // client to some peers and a server to others with one certificate.
    X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(verify.get());
    if (X509_VERIFY_PARAM_set1(param, X509_STORE_CTX_get0_param(store_ctx)) != 1)
      throw Error(ErrorCode::internal, "cannot copy the TLS verification settings");
    X509_VERIFY_PARAM_set_purpose(param, X509_PURPOSE_ANY);
    X509_VERIFY_PARAM_set_trust(param, X509_TRUST_DEFAULT);
    X509_VERIFY_PARAM_set_flags(param, X509_V_FLAG_PARTIAL_CHAIN);
    if (X509_verify_cert(verify.get()) != 1) {
      const int err = X509_STORE_CTX_get_error(verify.get());
      failure = fmt::format("the peer's certificate chain does not verify to the Root of Trust: {}",
                            X509_verify_cert_error_string(err));
      X509_STORE_CTX_set_error(store_ctx, err);
      return false;
    }
    struct tm tm {};
    if (ASN1_TIME_to_tm(X509_get0_notAfter(leaf), &tm) == 1) peer_not_after = timegm(&tm);
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
  const std::string& suites = s.cipher_suites;
  // No TLS 1.3 suites in the list (TLS 1.3 is off), so every entry is checked.
  if (SSL_CTX_set_ciphersuites(ctx, "") != 1 || SSL_CTX_set_cipher_list(ctx, suites.c_str()) != 1) {
    ERR_clear_error();
    throw Error(ErrorCode::invalid_argument,
                fmt::format("no usable TLS 1.2 cipher suite in '{}'", printable_excerpt(suites)));
  }
  check_suites_authenticate(ctx, s.psk.has_value(), suites);

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
    if (const char* why = st.unauthenticated()) {
      st.failed = true;
      throw Error(ErrorCode::handshake_failed, fmt::format("TLS handshake failed: {}", why));
    }
    st.done = true;
  } else {
    const int err = SSL_get_error(st.ssl.get(), rc);
    if (err != SSL_ERROR_WANT_READ) {
      st.failed = true;
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

std::optional<std::int64_t> TlsExchange::peer_not_after() const {
  return state_->peer_not_after;
}

}  // namespace m2mvault::vault
