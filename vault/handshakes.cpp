#include "vault/handshakes.h"

#include <fmt/format.h>
#include <openssl/rand.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <ctime>

#include "api/encoding.h"
#include "api/error.h"
#include "vault/identifiers.h"
#include "vault/in_token.h"
#include "vault/x509_util.h"

namespace m2mvault::vault {

std::string_view to_string(HandshakeProcedure p) {
  switch (p) {
    case HandshakeProcedure::enrolment:
      return "enrolment";
    case HandshakeProcedure::maf:
      return "maf";
    case HandshakeProcedure::escertke_initiate:
      return "escertke-initiate";
    case HandshakeProcedure::escertke_respond:
      return "escertke-respond";
  }
  return "unknown";
}

namespace {

bool is_escertke(HandshakeProcedure p) {
  return p == HandshakeProcedure::escertke_initiate || p == HandshakeProcedure::escertke_respond;
}

std::string new_session_id() {
  std::array<std::uint8_t, 16> id{};
  if (RAND_bytes(id.data(), static_cast<int>(id.size())) != 1)
    throw Error(ErrorCode::internal, "no randomness for a session id");
  return encoding::hex_encode(id);
}

Error session_not_found(const std::string& id) {
  return Error(ErrorCode::not_found,
               fmt::format("no handshake session '{}' (sessions belong to the uid that started "
                           "them, and end when they complete, fail or expire)",
                           printable_excerpt(id)));
}

// The first certificate's notAfter, as Unix seconds.
std::optional<std::int64_t> leaf_not_after(const std::string& pem) {
  auto chain = read_certificates(pem, "the key's certificate");
  struct tm tm {};
  if (ASN1_TIME_to_tm(X509_get0_notAfter(chain.front().get()), &tm) != 1) return std::nullopt;
  return static_cast<std::int64_t>(timegm(&tm));
}

}  // namespace

struct Handshakes::Session {
  std::string id;
  uid_t owner = 0;
  std::chrono::steady_clock::time_point deadline;
  HandshakeSpec spec;
  std::optional<std::string> parent;              // the PSK credential's name
  std::optional<std::int64_t> credential_expiry;  // the credential's expiry
  std::mutex mutex;                               // one step at a time
  bool ended = false;                             // under `mutex`: aborted, failed or done
  std::unique_ptr<TlsExchange> exchange;
};

Handshakes::Handshakes(Vault& vault, hsm::SecureElement& se, const Config& config, Clock clock)
    : vault_(vault), se_(se), config_(config), clock_(std::move(clock)) {}

Handshakes::~Handshakes() = default;

void Handshakes::sweep(std::chrono::steady_clock::time_point now) {
  std::erase_if(sessions_, [now](const auto& entry) { return entry.second->deadline <= now; });
}

std::size_t Handshakes::active() {
  std::lock_guard lock(mutex_);
  sweep(std::chrono::steady_clock::now());
  return sessions_.size();
}

Handshakes::Progress Handshakes::start(uid_t owner, const HandshakeSpec& spec,
                                       std::span<const std::uint8_t> input) {
  const bool escertke = is_escertke(spec.procedure);
  if (!escertke && !is_valid_fqdn(spec.fqdn)) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("'{}' is not a valid {}-FQDN", printable_excerpt(spec.fqdn),
                            spec.procedure == HandshakeProcedure::enrolment ? "MEF" : "MAF"));
  }
  if (spec.psk_key.has_value() == spec.signing_key.has_value()) {
    throw Error(ErrorCode::invalid_argument,
                "a handshake authenticates with either a PSK key or a signing key, not both");
  }
  if (escertke && spec.psk_key) {
    throw Error(ErrorCode::invalid_argument, "ESCertKE is certificate-based: give a signing key");
  }
  if (spec.expires && *spec.expires <= clock_()) {
    throw Error(ErrorCode::invalid_argument, "the requested expiry is in the past");
  }

  auto session = std::make_shared<Session>();
  session->spec = spec;
  TlsExchangeSettings settings;
  settings.server = spec.procedure == HandshakeProcedure::escertke_respond;
  settings.server_name = escertke ? spec.peer.value_or(spec.peer_name) : spec.fqdn;
  settings.cipher_suites = !spec.cipher_suites.empty() ? spec.cipher_suites
                           : spec.psk_key              ? config_.handshake.psk_ciphers
                                                       : config_.handshake.certificate_ciphers;
  settings.require_extended_master_secret = config_.handshake.require_extended_master_secret;

  if (spec.psk_key) {
    const KeyRecord key = vault_.usable(*spec.psk_key);
    const KeyKind wanted =
        spec.procedure == HandshakeProcedure::enrolment ? KeyKind::kpm : KeyKind::km;
    if (key.kind != wanted) {
      throw Error(
          ErrorCode::invalid_argument,
          fmt::format("'{}' is a {} key; the {} handshake authenticates with a {}", key.name,
                      to_string(key.kind), to_string(spec.procedure), to_string(wanted)));
    }
    if (!key.identifier) {
      throw Error(ErrorCode::invalid_argument,
                  fmt::format("'{}' has no identifier to send as psk_identity", key.name));
    }
    vault_.count_use(key);
    settings.psk = PskCredential{*key.identifier, key.blob};
    session->parent = key.name;
    session->credential_expiry = key.expires;
  } else {
    const KeyRecord key = vault_.usable(*spec.signing_key);
    if (key.kind != KeyKind::signing) {
      throw Error(ErrorCode::invalid_argument, fmt::format("'{}' is a {} key, not a signing key",
                                                           key.name, to_string(key.kind)));
    }
    if (!key.certificate) {
      throw Error(ErrorCode::invalid_argument,
                  fmt::format("signing key '{}' has no certificate: attach one with 'm2mvault "
                              "cert import --key {} FILE'",
                              key.name, key.name));
    }
    if (spec.peer_name.empty() || !spec.root_of_trust) {
      throw Error(ErrorCode::invalid_argument,
                  "a certificate-based handshake needs the peer's Certificate Name and Root of "
                  "Trust (TS-0003 8.1.1.2.2)");
    }
    vault_.count_use(key);
    CertificateCredential cred;
    cred.key = in_token([&] {
      return se_.private_key({key.token_label, key.object_id, key.object_label, key.blob});
    });
    cred.chain_pem = *key.certificate;
    cred.peer.certificate_name = spec.peer_name;
    cred.peer.root_of_trust = *spec.root_of_trust;
    if (!spec.anchors_pem.empty()) cred.peer.anchor_candidates_pem.push_back(spec.anchors_pem);
    settings.certificate = std::move(cred);
    // Nor does it outlive the certificate it was authenticated with.
    session->credential_expiry = key.expires;
    if (auto not_after = leaf_not_after(*key.certificate)) {
      session->credential_expiry =
          std::min(session->credential_expiry.value_or(*not_after), *not_after);
    }
  }
  session->exchange = std::make_unique<TlsExchange>(se_, std::move(settings));

  {
    std::lock_guard lock(mutex_);
    const auto now = std::chrono::steady_clock::now();
    sweep(now);
    const auto held = std::count_if(sessions_.begin(), sessions_.end(),
                                    [owner](const auto& e) { return e.second->owner == owner; });
    if (static_cast<std::size_t>(held) >= config_.handshake.per_principal) {
      throw Error(ErrorCode::backend_unavailable,
                  fmt::format("uid {} already has {} unfinished handshakes (the limit); finish or "
                              "abort one, or wait {} s for them to expire",
                              owner, held, config_.handshake.timeout.count()));
    }
    session->id = new_session_id();
    session->owner = owner;
    session->deadline = now + config_.handshake.timeout;
    sessions_.emplace(session->id, session);
  }
  return advance(session, input);
}

std::shared_ptr<Handshakes::Session> Handshakes::take(uid_t owner, const std::string& id) {
  std::lock_guard lock(mutex_);
  sweep(std::chrono::steady_clock::now());
  auto it = sessions_.find(id);
  if (it == sessions_.end() || it->second->owner != owner) throw session_not_found(id);
  return it->second;
}

Handshakes::Progress Handshakes::step(uid_t owner, const std::string& session,
                                      std::span<const std::uint8_t> input) {
  return advance(take(owner, session), input);
}

void Handshakes::abort(uid_t owner, const std::string& session) {
  auto s = take(owner, session);
  // Waits for a step in progress: after abort() returns, nothing is stored.
  std::lock_guard step_lock(s->mutex);
  if (s->ended) throw session_not_found(session);
  s->ended = true;
  std::lock_guard lock(mutex_);
  sessions_.erase(s->id);
}

Handshakes::Progress Handshakes::advance(const std::shared_ptr<Session>& session,
                                         std::span<const std::uint8_t> input) {
  std::lock_guard step_lock(session->mutex);
  if (session->ended) throw session_not_found(session->id);
  auto finish = [&] {
    session->ended = true;
    std::lock_guard lock(mutex_);
    sessions_.erase(session->id);
  };
  Progress progress;
  progress.session = session->id;
  TlsExchange::Step step;
  try {
    step = session->exchange->process(input);
  } catch (...) {
    finish();
    throw;
  }
  progress.output = std::move(step.output);
  if (!step.done) return progress;

  try {
    const HandshakeSpec& spec = session->spec;
    ExportedKeySpec out;
    std::string_view label;
    std::chrono::seconds lifetime{};
    switch (spec.procedure) {
      case HandshakeProcedure::enrolment:
        out.kind = KeyKind::ke;
        label = kBootstrapExportLabel;
        lifetime = config_.handshake.ke_lifetime;
        out.peer = spec.fqdn;  // the MEF
        break;
      case HandshakeProcedure::maf:
        out.kind = KeyKind::kc;
        label = kConnectionExportLabel;
        lifetime = config_.handshake.kc_lifetime;
        out.peer = spec.target.value_or(spec.fqdn);
        break;
      case HandshakeProcedure::escertke_initiate:
      case HandshakeProcedure::escertke_respond:
        out.kind = KeyKind::e2e;
        label = kEsCertKeExportLabel;
        lifetime = config_.handshake.e2e_lifetime;
        out.peer = spec.peer.value_or(spec.peer_name);
        break;
    }
    const hsm::ExportedKey exported = session->exchange->export_key(label);
    const auto relative = exported.relative_id();
    const IdFormat format = spec.id_format.value_or(
        spec.fqdn.empty() ? IdFormat::base64 : config_.id_format_for(spec.fqdn));
    out.identifier = encode_relative_key_id(relative, format);
    if (out.kind != KeyKind::e2e) out.identifier += "@" + spec.fqdn;
    out.name = spec.name;
    out.parent = session->parent;
    // TS-0003 10.7: a key never outlives the credential it came from.
    std::int64_t expires = spec.expires.value_or(clock_() + lifetime.count());
    if (session->credential_expiry) expires = std::min(expires, *session->credential_expiry);
    if (auto peer_not_after = session->exchange->peer_not_after())
      expires = std::min(expires, *peer_not_after);
    out.expires = expires;
    progress.key = vault_.store_exported_key(out, exported);
    progress.cipher = session->exchange->cipher();
    progress.done = true;
    spdlog::info("handshake {} ({}) stored {} key '{}' shared with '{}' ({})", session->id,
                 to_string(spec.procedure), to_string(out.kind), progress.key->name,
                 printable_excerpt(*out.peer), progress.cipher);
  } catch (...) {
    finish();
    throw;
  }
  finish();
  return progress;
}

}  // namespace m2mvault::vault
