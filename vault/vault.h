// The daemon core: the oneM2M key model over the catalog and the secure
// element. Every method is a complete, crash-safe procedure; every failure is
// an m2mvault::Error with a stable code and a message naming the key.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "hsm/secure_element.h"
#include "hsm/tls_secrets.h"
#include "vault/catalog.h"
#include "vault/key_model.h"

namespace m2mvault::vault {

// Seconds since the Unix epoch; injectable so expiry can be tested.
using Clock = std::function<std::int64_t()>;
std::int64_t system_clock_now();

// The label of the key check value (issue: key check values):
// first 8 bytes of HMAC-SHA-256(key, label), as 16 lowercase hex digits.
inline constexpr std::string_view kCheckValueLabel = "m2mvault key check value";

struct ImportSpec {
  KeyKind kind = KeyKind::kpsa;
  std::string identifier;
  std::optional<std::string> name;
  std::optional<std::string> entity;
  std::optional<std::int64_t> expires;
  std::optional<std::int64_t> max_uses;  // usage limit; none when absent
};

struct GenerateSpec {
  std::string name;
  hsm::SigningAlgorithm algorithm = hsm::SigningAlgorithm::ec_p256;
  std::optional<std::string> entity;
  std::optional<std::int64_t> expires;
  std::optional<std::int64_t> max_uses;  // usage limit; none when absent
};

struct AdoptSpec {
  std::string name;
  std::string token_label;
  std::string object;  // CKA_LABEL, or hex CKA_ID
  std::optional<std::string> entity;
};

// The TS-0003 10.3 derivations from an Enrolment Key.
enum class Derivation {
  master_credential,                  // Km, 10.3.2, from the MAF-ID
  provisioned_secure_connection_key,  // Kpsa, 10.3.3, from the Enrolee-B-ID
  usage_constrained_key,              // 10.3.7, from the SUID and Enrolment-Target-ID
};

// The labels HMAC-SHA-256(Ke, label || ...) starts with.
inline constexpr std::string_view kMasterCredentialLabel =
    "oneM2M Enrolment Key to Master Credential derivation";
inline constexpr std::string_view kProvisionedSecureConnectionKeyLabel =
    "oneM2M Enrolment Key to Provisioned Secure Connection Key derivation";
inline constexpr std::string_view kUsageConstrainedKeyLabel =
    "oneM2M Enrolment Key to Usage-Constrained Symmetric Key derivation";

struct DeriveSpec {
  Derivation derivation = Derivation::master_credential;
  std::string parent;   // the Ke, by name or KeId
  std::string subject;  // MAF-ID, Enrolee-B-ID or Enrolment-Target-ID (any Unicode; NFKC applied)
  int suid = 0;         // usage-constrained key: the SUID, 0..255, entered as one octet
  std::optional<std::string> identifier;  // KmID / KpsaID / key id; a local rule when absent
  std::optional<std::string> name;
  std::optional<std::string> entity;
  std::optional<std::int64_t> expires;  // clamped to the parent's expiry (TS-0003 10.7)
  std::optional<std::int64_t> max_uses;
};

// The message HMAC'd with the Ke for `spec` (label || encoded inputs).
// Throws Error(invalid_argument) for invalid UTF-8 or an SUID out of range.
std::vector<std::uint8_t> derivation_input(const DeriveSpec& spec);

// A key exported by a TLS handshake (vault/handshakes.h), as it is stored.
struct ExportedKeySpec {
  KeyKind kind = KeyKind::kc;  // ke, kc or e2e
  std::string identifier;      // KeId, KcId or pairwiseE2EKeyID
  std::optional<std::string> name;
  std::optional<std::string> peer;    // whom the key is shared with
  std::optional<std::string> parent;  // the PSK credential the handshake used
  std::optional<std::int64_t> expires;
};

struct ReconcileReport {
  std::size_t completed = 0;  // pending rows whose object existed
  std::size_t dropped = 0;    // pending rows whose object did not
  std::size_t destroyed = 0;  // vault-tagged objects no row names
};

class Vault {
 public:
  Vault(Catalog& catalog, hsm::SecureElement& se, Clock clock = system_clock_now);

  // Brings catalog and token into agreement after a crash (DESIGN.md): runs
  // once at start, before the socket is opened.
  ReconcileReport reconcile();

  // Imports a symmetric key. PSK kinds are wrapped under the KEK in one
  // catalog transaction; a Ke becomes a token object (two-phase create).
  KeyRecord import_key(const ImportSpec& spec, std::span<const std::uint8_t> secret);

  // A psk-table import (docs/CLI.md), all rows or none across several calls:
  // stage_imports() validates and wraps every row of one call and inserts
  // them as pending rows in one transaction, appending their rows to
  // `staged`; when any row is bad, none of the call's rows is staged and
  // each bad one is named by its index. commit_staged() activates staged
  // rows in one transaction; discard_staged() drops them. Pending rows a
  // crash leaves are dropped by reconcile(). PSK kinds only.
  std::vector<Catalog::BatchProblem> stage_imports(const std::vector<ImportSpec>& specs,
                                                   const std::vector<hsm::SecureBuffer>& values,
                                                   std::vector<std::int64_t>& staged);
  void commit_staged(const std::vector<std::int64_t>& rows);
  void discard_staged(const std::vector<std::int64_t>& rows);

  // Generates a signing key pair inside the token (two-phase create).
  KeyRecord generate_signing_key(const GenerateSpec& spec);

  // References a key pair that already lives in a token, in place.
  KeyRecord adopt_signing_key(const AdoptSpec& spec);

  // Derives a Km, Kpsa or usage-constrained key from a Ke inside the token;
  // the result is wrapped under the KEK and never crosses the API. The new
  // key records its parent and never outlives it.
  KeyRecord derive(const DeriveSpec& spec);

  // Stores the key a handshake exported: a Ke as a token object (two-phase
  // create), a Kc or pairwiseE2EKey wrapped under the KEK.
  KeyRecord store_exported_key(const ExportedKeySpec& spec, const hsm::ExportedKey& key);

  // A PKCS#10 request for a signing key, signed inside the token.
  // `subject` is `/C=DE/O=Org/CN=name` or `CN=name,O=Org`; `sans` are
  // subjectAltName entries as OpenSSL writes them (`DNS:...`, `URI:...`).
  // Returns PEM.
  std::string certificate_request(std::string_view key, const std::string& subject,
                                  const std::vector<std::string>& sans);

  // Attaches a certificate chain (PEM, leaf first) to a signing key: the
  // leaf must certify the key's public key and each certificate must be
  // issued by the next.
  KeyRecord attach_certificate(std::string_view key, const std::string& pem);

  // The key, when it exists and has not expired (not_found / expired).
  KeyRecord usable(std::string_view key) { return usable_or_throw(key); }

  // Counts one use of a key that has a usage limit (sign, psk.release,
  // derive, handshake), durably and before the use; a key whose limit is
  // reached is refused with Error(expired). Keys without a limit: no-op.
  void count_use(const KeyRecord& record);

  // A TLS PSK for a stack that must hold it (TR-0038 7.1.2's psk look-up):
  // the Kpsa or Kc with its bound entity. `identifier_only` finds the key by
  // its identifier alone (what a TLS server receives as psk_identity), never
  // by a name. Other kinds are Error(unsupported). Counts a use.
  struct ReleasedPsk {
    KeyRecord record;
    hsm::SecureBuffer value;
  };
  ReleasedPsk release_psk(std::string_view key, bool identifier_only);

  // Replaces a key's oneM2M identifier (e.g. the KmID a MAF assigned).
  KeyRecord set_identifier(std::string_view key, const std::string& identifier);

  std::vector<KeyRecord> list(std::optional<KeyKind> kind);
  std::vector<KeyRecord> list_page(std::optional<KeyKind> kind, const std::string& after,
                                   std::size_t limit);
  KeyRecord show(std::string_view key);
  // The key, or nullopt; never throws for an unknown or malformed name.
  std::optional<KeyRecord> find(std::string_view key) { return catalog_.find(key); }

  // PEM SubjectPublicKeyInfo of a signing key.
  std::string public_key_pem(std::string_view key);

  // Recomputes the key check value inside the token; `matches` compares it
  // with the catalog's.
  struct Check {
    KeyRecord record;
    std::string check_value;
    bool matches;
  };
  Check check(std::string_view key);

  // Signs a digest with a signing key inside the token.
  std::vector<std::uint8_t> sign(std::string_view key, hsm::SignatureScheme scheme,
                                 std::span<const std::uint8_t> digest);

  // Deletes a key: the catalog row first, then the token object (an orphan
  // left by a crash in between is destroyed by reconcile()). Adopted keys are
  // forgotten, never destroyed.
  KeyRecord remove(std::string_view key);

  std::size_t count();
  hsm::BackendInfo backend() const { return se_.info(); }
  // Readies the secure element for the next operations (SecureElement::
  // prepare); for when no request waits. Never throws.
  void prepare() noexcept { se_.prepare(); }

 private:
  bool pending_key_works(const KeyRecord& row, std::vector<std::uint8_t>& spki);
  // Two-phase create of a Ke (DESIGN.md): pending row with a fresh CKA_ID,
  // `create` makes the token key and returns its blob (empty on PKCS#11),
  // the row is activated with that blob.
  using CreateTokenSecret =
      std::function<std::vector<std::uint8_t>(std::span<const std::uint8_t> object_id)>;
  KeyRecord insert_token_secret(KeyRecord record, const CreateTokenSecret& create);
  // A validated record for an import, wrapped (PSK kinds) or ready for its
  // token object (Ke); touches neither catalog nor token objects.
  KeyRecord imported_record(const ImportSpec& spec, std::span<const std::uint8_t> secret);
  KeyRecord find_or_throw(std::string_view key);
  KeyRecord usable_or_throw(std::string_view key);
  std::string check_value_of(const hsm::SecretRef& ref);

  Catalog& catalog_;
  hsm::SecureElement& se_;
  Clock clock_;
};

}  // namespace m2mvault::vault
