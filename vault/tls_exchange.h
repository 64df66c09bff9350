// One TLS 1.2 handshake run by the daemon over memory buffers (TS-0003
// 10.3.1 key export; ESCertKE 8.7.2.2). The bytes on the wire go in and out
// as messages, so whoever carries them — a oneM2M primitive, the CLI's TCP
// relay — never sees a secret: the PSK comes from the secure element straight
// into libssl, a certificate key signs inside the token, and the exported key
// goes straight back into the secure element (hsm::ExportedKey).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "hsm/secure_element.h"
#include "hsm/tls_secrets.h"

namespace m2mvault::vault {

// Who the peer must be (TS-0003 8.1.1.2.2): the configured Certificate Name
// must equal a name in the peer's certificate (a subjectAltName DNS or URI
// entry, or a Subject common name), and the chain must verify up to a
// certificate whose public key hashes (SHA-256 over its DER
// SubjectPublicKeyInfo, RFC 6920) to the Root of Trust.
struct PeerCheck {
  std::string certificate_name;
  std::array<std::uint8_t, 32> root_of_trust{};
  // Certificates that may hold the Root of Trust when the peer does not send
  // it (the vault's own chain, which usually ends in the same root).
  std::vector<std::string> anchor_candidates_pem;
};

struct PskCredential {
  std::string identity;            // KpmId / KmId, sent as psk_identity
  std::vector<std::uint8_t> blob;  // the PSK, wrapped under the KEK
};

struct CertificateCredential {
  std::shared_ptr<EVP_PKEY> key;  // token-resident private key
  std::string chain_pem;          // leaf first
  PeerCheck peer;
};

struct TlsExchangeSettings {
  bool server = false;        // ESCertKE Terminating End-Point; otherwise the client
  std::string server_name;    // SNI (clients), when it is a valid FQDN
  std::string cipher_suites;  // OpenSSL cipher list; [handshake] in the config has the defaults
  std::optional<PskCredential> psk;                  // exactly one of psk ...
  std::optional<CertificateCredential> certificate;  // ... and certificate
  // RFC 7627 5.4: key export without the extended master secret is unsafe.
  bool require_extended_master_secret = true;
};

class TlsExchange {
 public:
  // Throws Error(invalid_argument) for unusable settings (bad chain, key not
  // matching its certificate, unknown cipher suites).
  TlsExchange(hsm::SecureElement& se, TlsExchangeSettings settings);
  ~TlsExchange();
  TlsExchange(const TlsExchange&) = delete;
  TlsExchange& operator=(const TlsExchange&) = delete;

  struct Step {
    std::vector<std::uint8_t> output;  // TLS records to send to the peer (may be empty)
    bool done = false;                 // the handshake has completed
  };

  // Feeds the peer's bytes (empty to start a client) and runs the handshake
  // as far as they allow. Throws Error(handshake_failed) with the reason —
  // the peer's alert, a failed Certificate Name or Root of Trust check, an
  // invalid chain — after which the exchange is unusable.
  Step process(std::span<const std::uint8_t> input);

  // After done: the 48 bytes of RFC 5705 keying material for `label`.
  hsm::ExportedKey export_key(std::string_view label);

  // After done: the negotiated suite.
  std::string cipher() const;
  // The peer certificate's notAfter (certificate variant).
  std::optional<std::int64_t> peer_not_after() const;

  struct State;

 private:
  std::unique_ptr<State> state_;
};

}  // namespace m2mvault::vault
