#include "vault/vault.h"

#include <fmt/format.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <set>
#include <string_view>

#include "api/encoding.h"
#include "api/error.h"
#include "vault/identifiers.h"
#include "vault/in_token.h"
#include "vault/normalize.h"

namespace m2mvault::vault {
namespace {

constexpr std::size_t kMaxSecretBytes = 1024;

std::span<const std::uint8_t> as_bytes(std::string_view s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

hsm::TokenKeyRef token_ref(const KeyRecord& r) {
  return {r.token_label, r.object_id, r.object_label, r.blob};
}

hsm::SecretRef secret_ref(const KeyRecord& r) {
  if (r.storage == Storage::wrapped) return hsm::WrappedSecretRef{r.blob};
  return token_ref(r);
}

std::string algorithm_name(hsm::SigningAlgorithm a) {
  return a == hsm::SigningAlgorithm::ec_p256 ? "ec-p256" : "rsa-2048";
}

// A new key may not be born expired.
void reject_past_expiry(const std::optional<std::int64_t>& expires, std::int64_t now,
                        std::string_view what) {
  if (expires && *expires <= now) {
    throw Error(ErrorCode::invalid_argument, fmt::format("expiry of {} is in the past", what));
  }
}

void check_max_uses(const std::optional<std::int64_t>& max_uses) {
  if (max_uses && *max_uses < 1) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("a usage limit must be at least 1, got {}", *max_uses));
  }
}

// The check value is the first 8 bytes of the MAC, as hex.
std::string check_value_text(const hsm::Hmac& mac) {
  return encoding::hex_encode(std::span<const std::uint8_t>(mac.data(), 8));
}

std::string pem_of(std::span<const std::uint8_t> spki) {
  std::string b64 = encoding::base64_encode(spki);
  std::string pem = "-----BEGIN PUBLIC KEY-----\n";
  for (std::size_t i = 0; i < b64.size(); i += 64) {
    pem += b64.substr(i, 64);
    pem += '\n';
  }
  pem += "-----END PUBLIC KEY-----\n";
  return pem;
}

}  // namespace

std::int64_t system_clock_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Vault::Vault(Catalog& catalog, hsm::SecureElement& se, Clock clock)
    : catalog_(catalog), se_(se), clock_(std::move(clock)) {}

std::string Vault::check_value_of(const hsm::SecretRef& ref) {
  return check_value_text(
      in_token([&] { return se_.hmac_sha256(ref, as_bytes(kCheckValueLabel)); }));
}

// True when a pending token key proves whole and usable: a Ke recomputes the
// check value recorded before it was created; a signing key makes a signature
// its public key verifies. A process killed while the token was still writing
// the object can leave one that exists but does not work.
bool Vault::pending_key_works(const KeyRecord& row, std::vector<std::uint8_t>& spki) {
  try {
    if (!se_.token_object_exists(row.object_id)) return false;
    if (row.kind == KeyKind::ke)
      return row.check_value && check_value_of(token_ref(row)) == *row.check_value;
    if (row.kind != KeyKind::signing) return false;
    spki = se_.public_key(token_ref(row));
    const std::uint8_t digest[32] = {0x6d, 0x32, 0x6d, 0x76};  // any fixed digest
    const bool ec = row.algorithm == "ec-p256";
    auto signature = se_.sign_digest(
        token_ref(row), ec ? hsm::SignatureScheme::ecdsa : hsm::SignatureScheme::rsa_pkcs1, digest);
    const unsigned char* p = spki.data();
    std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
        d2i_PUBKEY(nullptr, &p, static_cast<long>(spki.size())), &EVP_PKEY_free);
    if (!key) return false;
    std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> ctx(
        EVP_PKEY_CTX_new(key.get(), nullptr), &EVP_PKEY_CTX_free);
    if (!ctx || EVP_PKEY_verify_init(ctx.get()) <= 0) return false;
    if (!ec && (EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PADDING) <= 0 ||
                EVP_PKEY_CTX_set_signature_md(ctx.get(), EVP_sha256()) <= 0)) {
      return false;
    }
    return EVP_PKEY_verify(ctx.get(), signature.data(), signature.size(), digest, sizeof digest) ==
           1;
  } catch (const std::exception& e) {
    spdlog::warn("pending key '{}' is not usable: {}", row.name, e.what());
    return false;
  }
}

ReconcileReport Vault::reconcile() {
  ReconcileReport report;
  for (const auto& row : catalog_.pending()) {
    std::vector<std::uint8_t> spki;
    if (row.storage == Storage::token && pending_key_works(row, spki)) {
      catalog_.activate(row.row, spki);
      ++report.completed;
    } else {
      // Whatever half-made object remains has no row now and goes below.
      catalog_.remove(row.row);
      ++report.dropped;
    }
  }
  std::set<std::vector<std::uint8_t>> named;
  for (const auto& row : catalog_.list()) {
    if (row.storage == Storage::token) named.insert(row.object_id);
  }
  for (const auto& object : in_token([&] { return se_.list_vault_objects(); })) {
    if (!named.contains(object)) {
      try {
        in_token([&] { se_.destroy_token_object(object); });
        ++report.destroyed;
      } catch (const Error& e) {
        // It names no key; failing to remove it must not keep the vault down.
        spdlog::warn("cannot destroy orphan token object {}: {}", encoding::hex_encode(object),
                     e.what());
      }
    }
  }
  return report;
}

KeyRecord Vault::imported_record(const ImportSpec& spec, std::span<const std::uint8_t> secret) {
  if (spec.kind == KeyKind::signing) {
    throw Error(ErrorCode::unsupported,
                "importing signing keys is not supported: generate one with 'key generate' or "
                "reference a token key with 'key adopt'");
  }
  if (secret.empty() || secret.size() > kMaxSecretBytes) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("key value for '{}' must be 1 to {} bytes, got {}", spec.identifier,
                            kMaxSecretBytes, secret.size()));
  }
  const std::int64_t now = clock_();
  reject_past_expiry(spec.expires, now, fmt::format("'{}'", spec.identifier));
  check_max_uses(spec.max_uses);
  KeyRecord record;
  record.max_uses = spec.max_uses;
  record.kind = spec.kind;
  record.identifier = spec.identifier;
  // Validate before touching the token: a bad identifier costs no HSM work.
  canonical_identifier(spec.kind, spec.identifier);
  record.name = spec.name.value_or(spec.identifier);
  canonical_name(record.name);
  record.entity = spec.entity;
  record.created = now;
  record.expires = spec.expires;
  record.length = secret.size();
  // PSK kinds are wrapped; a Ke's check value is taken from a transient
  // wrapped copy so its pending row is complete.
  auto wrapped =
      in_token([&] { return se_.wrap_secret_with_mac(secret, as_bytes(kCheckValueLabel)); });
  record.check_value = check_value_text(wrapped.mac);
  if (is_psk_kind(spec.kind)) {
    record.storage = Storage::wrapped;
    record.blob = std::move(wrapped.blob);
  } else {
    record.storage = Storage::token;
  }
  return record;
}

KeyRecord Vault::import_key(const ImportSpec& spec, std::span<const std::uint8_t> secret) {
  KeyRecord record = imported_record(spec, secret);
  if (record.storage == Storage::wrapped) return catalog_.insert(std::move(record));
  // Ke: a non-extractable token key.
  return insert_token_secret(std::move(record), [&](std::span<const std::uint8_t> object_id) {
    return se_.create_token_secret(object_id, secret);
  });
}

std::vector<Catalog::BatchProblem> Vault::stage_imports(
    const std::vector<ImportSpec>& specs, const std::vector<hsm::SecureBuffer>& values,
    std::vector<std::int64_t>& staged) {
  std::vector<Catalog::BatchProblem> problems;
  std::vector<KeyRecord> records;
  std::vector<std::size_t> index_of;  // records[i] is specs[index_of[i]]
  for (std::size_t i = 0; i < specs.size(); ++i) {
    try {
      if (!is_psk_kind(specs[i].kind)) {
        throw Error(ErrorCode::unsupported,
                    fmt::format("a {} key cannot be imported in a batch; only wrapped (PSK) kinds",
                                to_string(specs[i].kind)));
      }
      records.push_back(imported_record(specs[i], values.at(i).span()));
      index_of.push_back(i);
    } catch (const Error& e) {
      problems.push_back({i, e.what()});
    }
  }
  for (auto& p : catalog_.insert_pending_batch(records)) {
    problems.push_back({index_of[p.index], std::move(p.message)});
  }
  std::sort(problems.begin(), problems.end(),
            [](const auto& a, const auto& b) { return a.index < b.index; });
  if (problems.empty()) {
    for (const auto& r : records) staged.push_back(r.row);
  } else if (!records.empty() && records.front().row != 0) {
    // Only invalid rows failed, so the valid ones went in: take them out.
    std::vector<std::int64_t> rows;
    for (const auto& r : records) rows.push_back(r.row);
    catalog_.remove_batch(rows);
  }
  return problems;
}

void Vault::commit_staged(const std::vector<std::int64_t>& rows) {
  catalog_.activate_batch(rows);
}

void Vault::discard_staged(const std::vector<std::int64_t>& rows) {
  catalog_.remove_batch(rows);
}

KeyRecord Vault::insert_token_secret(KeyRecord record, const CreateTokenSecret& create) {
  record.storage = Storage::token;
  record.object_id = in_token([&] { return se_.new_object_id(); });
  KeyRecord pending = catalog_.insert_pending(std::move(record));
  try {
    pending.blob = in_token([&] { return create(pending.object_id); });
  } catch (...) {
    catalog_.remove(pending.row);
    throw;
  }
  catalog_.activate(pending.row, {}, pending.blob);
  return pending;
}

std::vector<std::uint8_t> derivation_input(const DeriveSpec& spec) {
  std::string_view label;
  std::string_view what;
  switch (spec.derivation) {
    case Derivation::master_credential:
      label = kMasterCredentialLabel;
      what = "MAF-ID";
      break;
    case Derivation::provisioned_secure_connection_key:
      label = kProvisionedSecureConnectionKeyLabel;
      what = "Enrolee-B-ID";
      break;
    case Derivation::usage_constrained_key:
      label = kUsageConstrainedKeyLabel;
      what = "Enrolment-Target-ID";
      break;
  }
  const std::string subject = nfkc(spec.subject, what);
  std::vector<std::uint8_t> data(label.begin(), label.end());
  if (spec.derivation == Derivation::usage_constrained_key) {
    // TS-0003 does not pin how the SUID is encoded; m2mvault uses one octet
    // (the SUID values of TS-0004 are 10..45), so SUID and target cannot run
    // into each other as decimal digits would ("2"||"1x.org" == "21"||"x.org").
    if (spec.suid < 0 || spec.suid > 255) {
      throw Error(ErrorCode::invalid_argument,
                  fmt::format("SUID {} is out of range (0..255)", spec.suid));
    }
    data.push_back(static_cast<std::uint8_t>(spec.suid));
  }
  data.insert(data.end(), subject.begin(), subject.end());
  return data;
}

KeyRecord Vault::derive(const DeriveSpec& spec) {
  KeyRecord parent = usable_or_throw(spec.parent);
  if (parent.kind != KeyKind::ke) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("key '{}' is a {} key; derivations take an Enrolment Key (ke)",
                            parent.name, to_string(parent.kind)));
  }
  const std::vector<std::uint8_t> input = derivation_input(spec);
  const std::int64_t now = clock_();
  reject_past_expiry(spec.expires, now, "the derived key");
  check_max_uses(spec.max_uses);
  KeyRecord record;
  switch (spec.derivation) {
    case Derivation::master_credential:
      record.kind = KeyKind::km;
      break;
    case Derivation::provisioned_secure_connection_key:
      record.kind = KeyKind::kpsa;
      break;
    case Derivation::usage_constrained_key:
      record.kind = KeyKind::usage;
      break;
  }
  if (spec.identifier)
    canonical_identifier(record.kind, *spec.identifier);  // fail before token work
  if (spec.name) canonical_name(*spec.name);
  record.created = now;
  record.expires = spec.expires;
  if (parent.expires && (!record.expires || *record.expires > *parent.expires)) {
    record.expires = parent.expires;  // TS-0003 10.7: never outlive the Ke
  }
  record.parent = parent.name;
  record.storage = Storage::wrapped;
  record.length = 32;
  record.max_uses = spec.max_uses;
  count_use(parent);
  auto derived = in_token([&] {
    return se_.derive_wrapped_secret_with_mac(secret_ref(parent), input,
                                              as_bytes(kCheckValueLabel));
  });
  record.blob = std::move(derived.blob);
  record.check_value = check_value_text(derived.mac);
  record.entity = spec.entity;
  if (!record.entity && spec.derivation == Derivation::provisioned_secure_connection_key) {
    record.entity = nfkc(spec.subject, "Enrolee-B-ID");  // the Kpsa authenticates Enrolee B
  }
  if (spec.identifier) {
    record.identifier = *spec.identifier;
  } else {
    // Local identifier rules (docs/DERIVATIONS.md): the relative part names
    // the key by its check value, which both ends of a derivation can compute.
    std::string fqdn;
    std::string prefix;
    switch (spec.derivation) {
      case Derivation::master_credential:
        fqdn = nfkc(spec.subject, "MAF-ID");
        prefix = "km-";
        if (!is_valid_fqdn(fqdn)) {
          throw Error(
              ErrorCode::invalid_argument,
              fmt::format("MAF-ID '{}' is not an FQDN, so no KmID can be formed from it: give one "
                          "(--km-id)",
                          spec.subject));
        }
        break;
      case Derivation::provisioned_secure_connection_key:
        fqdn = parent.identifier ? split_identifier(*parent.identifier).value_or(Identifier{}).fqdn
                                 : "";
        prefix = "kpsa-";
        break;
      case Derivation::usage_constrained_key:
        fqdn = nfkc(spec.subject, "Enrolment-Target-ID");
        prefix = fmt::format("usage-{}-", spec.suid);
        if (!is_valid_fqdn(fqdn)) {
          throw Error(
              ErrorCode::invalid_argument,
              fmt::format("Enrolment-Target-ID '{}' is not an FQDN: give an identifier (--id)",
                          spec.subject));
        }
        break;
    }
    if (fqdn.empty()) {
      throw Error(
          ErrorCode::invalid_argument,
          fmt::format("Enrolment Key '{}' has no KeId to take an FQDN from: give an identifier",
                      parent.name));
    }
    record.identifier = prefix + *record.check_value + "@" + fqdn;
  }
  record.name = spec.name.value_or(*record.identifier);
  return catalog_.insert(std::move(record));
}

KeyRecord Vault::store_exported_key(const ExportedKeySpec& spec, const hsm::ExportedKey& key) {
  KeyRecord record;
  record.kind = spec.kind;
  record.identifier = spec.identifier;
  canonical_identifier(spec.kind, spec.identifier);
  record.name = spec.name.value_or(spec.identifier);
  canonical_name(record.name);
  record.created = clock_();
  record.expires = spec.expires;
  record.peer = spec.peer;
  record.parent = spec.parent;
  record.length = hsm::ExportedKey::kKeyLength;
  if (is_psk_kind(spec.kind)) {
    record.storage = Storage::wrapped;
    auto wrapped = in_token([&] { return key.wrap_with_mac(se_, as_bytes(kCheckValueLabel)); });
    record.blob = std::move(wrapped.blob);
    record.check_value = check_value_text(wrapped.mac);
    return catalog_.insert(std::move(record));
  }
  if (spec.kind != KeyKind::ke) {
    throw Error(ErrorCode::internal, "only Ke, Kc and pairwiseE2EKey come from a handshake");
  }
  record.storage = Storage::token;
  record.check_value =
      check_value_text(in_token([&] { return key.mac(as_bytes(kCheckValueLabel)); }));
  return insert_token_secret(std::move(record), [&](std::span<const std::uint8_t> object_id) {
    return key.create_token_secret(se_, object_id);
  });
}

KeyRecord Vault::set_identifier(std::string_view key, const std::string& identifier) {
  KeyRecord record = find_or_throw(key);
  if (record.kind == KeyKind::signing) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("key '{}' is a signing key and has no oneM2M identifier", record.name));
  }
  catalog_.set_identifier(record.row, record.kind, identifier);
  return find_or_throw(record.name);
}

KeyRecord Vault::generate_signing_key(const GenerateSpec& spec) {
  const std::int64_t now = clock_();
  reject_past_expiry(spec.expires, now, fmt::format("'{}'", spec.name));
  check_max_uses(spec.max_uses);
  KeyRecord record;
  record.max_uses = spec.max_uses;
  record.kind = KeyKind::signing;
  record.name = spec.name;
  canonical_name(record.name);
  record.entity = spec.entity;
  record.created = now;
  record.expires = spec.expires;
  record.storage = Storage::token;
  record.algorithm = algorithm_name(spec.algorithm);
  record.object_id = in_token([&] { return se_.new_object_id(); });
  KeyRecord pending = catalog_.insert_pending(std::move(record));
  try {
    auto generated =
        in_token([&] { return se_.generate_signing_key(pending.object_id, spec.algorithm); });
    pending.public_key = std::move(generated.public_key);
    pending.blob = std::move(generated.blob);
  } catch (...) {
    catalog_.remove(pending.row);
    throw;
  }
  catalog_.activate(pending.row, pending.public_key, pending.blob);
  return pending;
}

KeyRecord Vault::adopt_signing_key(const AdoptSpec& spec) {
  if (spec.token_label.empty() || spec.object.empty()) {
    throw Error(ErrorCode::invalid_argument, "adopting a key needs a token label and an object");
  }
  canonical_name(spec.name);
  hsm::TokenKeyRef ref{spec.token_label, {}, {}};
  // An object given as an even number of hex digits is tried as a CKA_ID,
  // anything else as a CKA_LABEL.
  if (auto id = encoding::hex_decode(spec.object); id && !id->empty()) {
    ref.object_id = *id;
  } else {
    ref.object_label = spec.object;
  }
  auto adopted = in_token([&] { return se_.adopt_signing_key(ref); });
  KeyRecord record;
  record.kind = KeyKind::signing;
  record.name = spec.name;
  record.entity = spec.entity;
  record.created = clock_();
  record.storage = Storage::adopted;
  record.token_label = spec.token_label;
  record.object_id = adopted.object_id;
  record.object_label = ref.object_label;
  record.public_key = adopted.public_key;
  record.algorithm = algorithm_name(adopted.algorithm);
  return catalog_.insert(std::move(record));
}

std::vector<KeyRecord> Vault::list(std::optional<KeyKind> kind) {
  return catalog_.list(kind);
}

std::vector<KeyRecord> Vault::list_page(std::optional<KeyKind> kind, const std::string& after,
                                        std::size_t limit) {
  return catalog_.list_page(kind, after, limit);
}

KeyRecord Vault::find_or_throw(std::string_view key) {
  if (key.empty()) throw Error(ErrorCode::invalid_argument, "no key name or identifier given");
  auto record = catalog_.find(key);
  if (!record) throw Error(ErrorCode::not_found, fmt::format("no key named '{}'", key));
  return std::move(*record);
}

KeyRecord Vault::usable_or_throw(std::string_view key) {
  KeyRecord record = find_or_throw(key);
  if (record.expires && *record.expires <= clock_()) {
    throw Error(ErrorCode::expired, fmt::format("key '{}' has expired", record.name));
  }
  return record;
}

void Vault::count_use(const KeyRecord& record) {
  if (!record.max_uses) return;
  if (!catalog_.consume_use(record.row)) {
    throw Error(ErrorCode::expired, fmt::format("key '{}' has reached its usage limit of {} uses",
                                                record.name, *record.max_uses));
  }
}

Vault::ReleasedPsk Vault::release_psk(std::string_view key, bool identifier_only) {
  KeyRecord record = find_or_throw(key);
  if (identifier_only) {
    // Names and identifiers share a namespace, so `key` found this record
    // either way; a psk_identity must be its identifier.
    bool by_identifier = false;
    if (record.identifier) {
      try {
        by_identifier = canonical_identifier(record.kind, *record.identifier) ==
                        canonical_identifier(record.kind, key);
      } catch (const Error&) {
        by_identifier = false;
      }
    }
    if (!by_identifier) {
      throw Error(ErrorCode::not_found, fmt::format("no key with identifier '{}'", key));
    }
  }
  if (record.kind != KeyKind::kpsa && record.kind != KeyKind::kc) {
    throw Error(ErrorCode::unsupported,
                fmt::format("key '{}' is a {} key; only TLS PSKs (kpsa, kc) are released",
                            record.name, to_string(record.kind)));
  }
  if (record.expires && *record.expires <= clock_()) {
    throw Error(ErrorCode::expired, fmt::format("key '{}' has expired", record.name));
  }
  count_use(record);
  hsm::SecureBuffer value = in_token([&] { return se_.unwrap_secret(record.blob); });
  return {std::move(record), std::move(value)};
}

KeyRecord Vault::show(std::string_view key) {
  return find_or_throw(key);
}

std::string Vault::public_key_pem(std::string_view key) {
  KeyRecord record = find_or_throw(key);
  if (record.kind != KeyKind::signing || record.public_key.empty()) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("key '{}' is a {} key and has no public key", record.name,
                            to_string(record.kind)));
  }
  return pem_of(record.public_key);
}

Vault::Check Vault::check(std::string_view key) {
  KeyRecord record = usable_or_throw(key);
  if (!is_symmetric(record.kind)) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("key '{}' is a signing key and has no check value", record.name));
  }
  std::string value = check_value_of(secret_ref(record));
  bool matches = record.check_value && *record.check_value == value;
  return {std::move(record), std::move(value), matches};
}

std::vector<std::uint8_t> Vault::sign(std::string_view key, hsm::SignatureScheme scheme,
                                      std::span<const std::uint8_t> digest) {
  KeyRecord record = usable_or_throw(key);
  if (record.kind != KeyKind::signing) {
    throw Error(ErrorCode::invalid_argument, fmt::format("key '{}' is a {} key, not a signing key",
                                                         record.name, to_string(record.kind)));
  }
  const bool is_ec = record.algorithm == "ec-p256";
  if (is_ec != (scheme == hsm::SignatureScheme::ecdsa)) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("key '{}' ({}) cannot make that kind of signature", record.name,
                            record.algorithm));
  }
  if (digest.size() != 32 && digest.size() != 48 && digest.size() != 64) {
    throw Error(
        ErrorCode::invalid_argument,
        fmt::format("digest must be 32, 48 or 64 bytes (SHA-256/384/512), got {}", digest.size()));
  }
  count_use(record);
  return in_token([&] { return se_.sign_digest(token_ref(record), scheme, digest); });
}

KeyRecord Vault::remove(std::string_view key) {
  KeyRecord record = find_or_throw(key);
  catalog_.remove(record.row);
  if (record.storage == Storage::token) {
    try {
      in_token([&] { se_.destroy_token_object(record.object_id); });
    } catch (const Error& e) {
      // The row is gone; the orphan object is destroyed at the next start.
      spdlog::warn(
          "key '{}' deleted from the catalog; its token object will be removed at the "
          "next start ({})",
          record.name, e.what());
    }
  }
  return record;
}

std::size_t Vault::count() {
  return catalog_.count();
}

}  // namespace m2mvault::vault
