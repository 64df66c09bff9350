// The secure-element boundary (DESIGN.md, "The secure-element boundary").
//
// Only implementations of this interface ever see key bytes, and only in
// SecureBuffers. Two storage shapes exist:
//  - wrapped secrets (the PSK kinds Kpsa, Kpm, Km, Kc, pairwiseE2EKey): the
//    catalog keeps an opaque blob wrapped under the token's key-encryption key
//    (sealed by the TPM); using one unwraps (unseals) it.
//  - token keys (Ke and signing keys): held by the secure element so that
//    they are usable only inside it. On PKCS#11 they are persistent,
//    sensitive, non-extractable objects named by a random CKA_ID; on a TPM
//    they are TPM-wrapped blobs (only that TPM can load them) that creating
//    one returns and the catalog keeps beside the CKA_ID (TokenKeyRef::blob).
//
// All methods are thread-safe. All failures throw hsm::Error.
#pragma once

#include <openssl/types.h>

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "hsm/error.h"
#include "hsm/secure_buffer.h"

namespace m2mvault::hsm {

using Bytes = std::vector<std::uint8_t>;
using Hmac = std::array<std::uint8_t, 32>;

inline constexpr std::string_view kAuditEpochLabel = "m2mvault audit epoch";

enum class SigningAlgorithm { ec_p256, rsa_2048 };

// How a digest is signed. ECDSA signatures are DER (ECDSA-Sig-Value), as
// X.509 and TLS carry them.
enum class SignatureScheme { ecdsa, rsa_pkcs1, rsa_pss };

// A token-resident key. For the vault's own keys token_label is empty (the
// vault's token) and object_id is the random CKA_ID the vault chose. An
// adopted key (pre-provisioned by a manufacturer) names its token by label
// and its object by CKA_ID or, when object_id is empty, by CKA_LABEL.
// `blob` is what creating the key returned: empty on PKCS#11, the TPM's
// blob on a TPM (where object_id is only a name).
struct TokenKeyRef {
  std::string token_label;
  Bytes object_id;
  std::string object_label;
  Bytes blob{};
};

// The catalog's view of a wrapped secret: the blob returned by wrap_secret().
struct WrappedSecretRef {
  std::span<const std::uint8_t> blob;
};

using SecretRef = std::variant<WrappedSecretRef, TokenKeyRef>;

struct BackendInfo {
  std::string backend;      // "pkcs11" or "tpm2"
  std::string module;       // module path or TCTI
  std::string token_label;  // token label (PKCS#11) or "" (TPM)
  std::string token_model;  // e.g. "SoftHSM v2"
};

class SecureElement {
 public:
  virtual ~SecureElement() = default;

  virtual BackendInfo info() const = 0;

  // --- wrapped secrets (PSK kinds) -------------------------------------

  // Wraps `secret` (1..1024 bytes) under the KEK and returns the blob to
  // store. The plaintext passes through a session object that is destroyed.
  virtual Bytes wrap_secret(std::span<const std::uint8_t> secret) = 0;

  // Returns the plaintext of a wrapped secret, for a handshake the daemon
  // runs or an audited PSK release. The caller must not copy it elsewhere.
  virtual SecureBuffer unwrap_secret(std::span<const std::uint8_t> blob) = 0;

  // HMAC-SHA-256(parent, data) computed in the token, the result going
  // straight into a new wrapped secret whose blob is returned. The output
  // never leaves hsm/. Used for the TS-0003 10.3 derivations.
  virtual Bytes derive_wrapped_secret(const SecretRef& parent,
                                      std::span<const std::uint8_t> data) = 0;

  // As wrap_secret() and derive_wrapped_secret(), also returning
  // HMAC-SHA-256(new secret, mac_data), taken while the secret is still a
  // session object: a new key's check value costs no unwrap.
  struct WrappedWithMac {
    Bytes blob;
    Hmac mac;
  };
  virtual WrappedWithMac wrap_secret_with_mac(std::span<const std::uint8_t> secret,
                                              std::span<const std::uint8_t> mac_data) = 0;
  virtual WrappedWithMac derive_wrapped_secret_with_mac(const SecretRef& parent,
                                                        std::span<const std::uint8_t> data,
                                                        std::span<const std::uint8_t> mac_data) = 0;

  // --- token objects (Ke, signing keys) --------------------------------

  // A fresh random 16-byte CKA_ID for a new token object.
  virtual Bytes new_object_id() = 0;

  // Creates a sensitive, non-extractable secret usable only for
  // HMAC-SHA-256 (Ke), tagged as the vault's. `object_id` from new_object_id().
  // Returns the blob the catalog must keep to use it (TokenKeyRef::blob):
  // empty when the token holds the key persistently (PKCS#11).
  virtual Bytes create_token_secret(std::span<const std::uint8_t> object_id,
                                    std::span<const std::uint8_t> secret) = 0;

  // Generates a key pair inside the token (private half sensitive and
  // non-extractable), tagged as the vault's. Returns the public key as DER
  // SubjectPublicKeyInfo and, as create_token_secret(), the blob to keep.
  struct GeneratedKey {
    Bytes public_key;
    Bytes blob;
  };
  virtual GeneratedKey generate_signing_key(std::span<const std::uint8_t> object_id,
                                            SigningAlgorithm algorithm) = 0;

  // Checks that an existing token key pair can be used as a signing key and
  // returns its public key (DER SubjectPublicKeyInfo) and algorithm. The
  // object is not modified and will never be destroyed by the vault.
  struct AdoptedKey {
    Bytes public_key;
    SigningAlgorithm algorithm;
    Bytes object_id;  // the CKA_ID found (filled in when adopted by label)
  };
  virtual AdoptedKey adopt_signing_key(const TokenKeyRef& ref) = 0;

  // True when the vault's token holds a whole key tagged as the vault's with
  // this CKA_ID: a secret key, or a private key together with its public key
  // (a crash during key-pair generation can leave one half alone). Always
  // false where keys are blobs (TPM): a pending row has no blob yet.
  virtual bool token_object_exists(std::span<const std::uint8_t> object_id) = 0;

  // Destroys every object of the vault's token tagged as the vault's with
  // this CKA_ID (private, public, secret). Missing objects are not an error.
  virtual void destroy_token_object(std::span<const std::uint8_t> object_id) = 0;

  // CKA_IDs of all objects tagged as the vault's keys (never the KEK or the
  // audit key), for reconciliation at start. Empty where keys are blobs.
  virtual std::vector<Bytes> list_vault_objects() = 0;

  // --- operations -------------------------------------------------------

  // HMAC-SHA-256 computed with the key inside the token. Works for keys of
  // any length (short keys are held zero-padded, which HMAC treats alike).
  virtual Hmac hmac_sha256(const SecretRef& key, std::span<const std::uint8_t> data) = 0;

  // Signs a precomputed digest inside the token.
  virtual Bytes sign_digest(const TokenKeyRef& key, SignatureScheme scheme,
                            std::span<const std::uint8_t> digest) = 0;

  // The public key of a token key pair, DER SubjectPublicKeyInfo.
  virtual Bytes public_key(const TokenKeyRef& key) = 0;

  // Work that makes the next operations faster, for a caller that waits for
  // nothing (the daemon runs it after each reply is sent): on PKCS#11, the
  // next signature with each key just used is initialised (C_SignInit).
  // Never throws; by default nothing.
  virtual void prepare() noexcept {}

  // --- the audit log (policies/audit_log.h) ------------------------------

  // HMAC-SHA-256 with the vault's audit key: a persistent, sensitive,
  // non-extractable token secret created when the backend opens, so whoever
  // can rewrite the log but not use the token cannot forge its chain.
  virtual Hmac audit_mac(std::span<const std::uint8_t> data) = 0;

  // Audit epochs, so a record costs a software HMAC, not a token operation:
  // the epoch key is HMAC-SHA-256(audit key, kAuditEpochLabel || nonce),
  // computed in the token and held only in a locked buffer here. Anyone
  // who can read it could as well use the token, as the daemon does.
  // begin_audit_epoch() draws a 16-byte nonce, makes its key current and
  // returns the nonce (for the log's epoch record, MAC'd by audit_mac()).
  virtual Bytes begin_audit_epoch() = 0;
  // HMAC-SHA-256 with the current epoch key (begin_audit_epoch() first).
  virtual Hmac audit_epoch_mac(std::span<const std::uint8_t> data) = 0;
  // HMAC-SHA-256 with the epoch key of `nonce`, for verification.
  virtual Hmac audit_epoch_mac_for(std::span<const std::uint8_t> nonce,
                                   std::span<const std::uint8_t> data) = 0;

  // The audit checkpoint kept in the token, and read back; nullopt before
  // the first one. On PKCS#11 a private data object; on a TPM an NV record
  // bound to an NV counter, which load refuses (Error(unavailable)) when it
  // was rolled back or written without the audit key, and store refuses to
  // move back (Error(invalid_argument)): values compare bytewise, as the
  // vault's (big-endian sequence number first) do in sequence order.
  virtual void store_audit_checkpoint(std::span<const std::uint8_t> value) = 0;
  virtual std::optional<Bytes> load_audit_checkpoint() = 0;

  // The private key as an EVP_PKEY whose private operations run inside the
  // token, for libssl in a handshake the daemon runs and for signing a CSR.
  // Its private half is never readable.
  virtual std::shared_ptr<EVP_PKEY> private_key(const TokenKeyRef& key) = 0;
};

}  // namespace m2mvault::hsm
