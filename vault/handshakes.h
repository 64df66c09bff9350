// The TS-0003 procedures that end in a TLS key export, run by the daemon
// (docs/HANDSHAKES.md):
//  - Enrolment, Enrolee side (8.3.2): `EXPORTER-oneM2M-Bootstrap` → Ke, KeId;
//  - MAF handshake, Entity A side (8.2.2.3): `EXPORTER-oneM2M-Connection` → Kc, KcId;
//  - ESCertKE (8.7.2.2), Initiating or Terminating End-Point:
//    `EXPORTER-oneM2M-ESCertKE` → pairwiseE2EKey and its ID.
// Each is a session of messages: start() gives the first bytes to send,
// step() takes the peer's bytes and gives the next ones, until the handshake
// completes and the exported key is stored. A session belongs to the uid
// that started it, expires, and each uid holds a bounded number.
#pragma once

#include <sys/types.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "vault/config.h"
#include "vault/tls_exchange.h"
#include "vault/vault.h"

namespace m2mvault::vault {

enum class HandshakeProcedure { enrolment, maf, escertke_initiate, escertke_respond };

inline constexpr std::string_view kBootstrapExportLabel = "EXPORTER-oneM2M-Bootstrap";
inline constexpr std::string_view kConnectionExportLabel = "EXPORTER-oneM2M-Connection";
inline constexpr std::string_view kEsCertKeExportLabel = "EXPORTER-oneM2M-ESCertKE";

struct HandshakeSpec {
  HandshakeProcedure procedure = HandshakeProcedure::enrolment;
  // PSK variant (enrolment: a Kpm; MAF: a Km), by name or identifier ...
  std::optional<std::string> psk_key;
  // ... or certificate variant: a signing key with a certificate attached,
  // and who the peer must be (TS-0003 8.1.1.2.2).
  std::optional<std::string> signing_key;
  std::string peer_name;
  std::optional<std::array<std::uint8_t, 32>> root_of_trust;
  std::string anchors_pem;  // extra certificates that may carry the Root of Trust
  // MEF-FQDN (enrolment) or MAF-FQDN (MAF): the identifier's domain and the SNI.
  std::string fqdn;
  std::optional<IdFormat> id_format;
  std::optional<std::int64_t> expires;
  std::optional<std::string> target;  // MAF: the AE-ID/CSE-ID the Kc is for
  std::optional<std::string> peer;    // ESCertKE: the other End-Point's identity
  std::optional<std::string> name;    // the stored key's name (default: its identifier)
  std::string cipher_suites;          // default: TS-0003 10.2.2 / 10.2.3
};

class Handshakes {
 public:
  Handshakes(Vault& vault, hsm::SecureElement& se, const Config& config,
             Clock clock = system_clock_now);
  ~Handshakes();

  struct Progress {
    std::string session;
    std::vector<std::uint8_t> output;  // bytes for the peer
    bool done = false;
    std::optional<KeyRecord> key;  // the stored key, once done
    std::string cipher;            // once done
  };

  // Resolves the credential, starts the handshake and feeds it `input` (the
  // peer's first message, for a Terminating End-Point). Errors: not_found /
  // expired for the credential, invalid_argument for the spec,
  // backend_unavailable when `owner` holds too many sessions.
  Progress start(uid_t owner, const HandshakeSpec& spec, std::span<const std::uint8_t> input);

  // Continues `session` with the peer's bytes. A session of another uid, or
  // one that expired or ended, is not_found. A failed handshake ends the
  // session with handshake_failed and stores nothing.
  Progress step(uid_t owner, const std::string& session, std::span<const std::uint8_t> input);

  void abort(uid_t owner, const std::string& session);

  // Unfinished sessions (all owners), after dropping expired ones.
  std::size_t active();

 private:
  struct Session;
  Progress advance(const std::shared_ptr<Session>& session, std::span<const std::uint8_t> input);
  std::shared_ptr<Session> take(uid_t owner, const std::string& id);
  void sweep(std::chrono::steady_clock::time_point now);

  Vault& vault_;
  hsm::SecureElement& se_;
  const Config& config_;
  Clock clock_;
  std::mutex mutex_;
  std::map<std::string, std::shared_ptr<Session>> sessions_;
};

std::string_view to_string(HandshakeProcedure p);

}  // namespace m2mvault::vault
