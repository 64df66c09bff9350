// The TPM 2.0 core the tpm2 SecureElement backend sits on (docs/TPM2.md).
//
// Every key is a TPM object under the vault's primary storage key, kept by
// the caller as one opaque blob (key_blob.h: the object's auth value, its
// TPM2B_PUBLIC and its TPM2B_PRIVATE, which only this TPM can load). Nothing
// is stored in the TPM: the primary is re-created from the owner hierarchy's
// seed, so a daemon restart or a TPM reset loses no key.
//
// NV memory holds only what the backend needs the TPM itself to keep (the
// audit checkpoint, nv_checkpoint.h), through the nv_* operations.
//
// Three kinds of object, each usable for one thing only (the TPM enforces
// it: TPM2_Unseal of an HMAC key fails TPM_RC_ATTRIBUTES, TPM2_HMAC with
// sealed data TPM_RC_KEY):
//  - sealed data (Kpsa, Kpm, Km, Kc, pairwiseE2EKey): seal(), unseal();
//  - HMAC-SHA-256 keys (Ke): create_hmac_key(), generate_hmac_key(),
//    hmac_sha256(), and the derivations into new objects;
//  - ECC P-256 signing keys: generate_signing_key(), sign_digest().
//
// Sensitive values travel to and from the TPM only through a salted HMAC
// session with AES-128-CFB parameter encryption. TPM2_Sign, which carries
// none, is authorized by an HMAC session of its own (signing_session.h):
// the auth value never crosses the TPM interface in the clear (unless
// Config::password_auth_for_signing asks for a password). All methods are
// thread-safe: one mutex serializes every use of the TPM connection (the
// TPM itself runs one command at a time). All failures throw hsm::Error
// (TpmError, carrying the TPM return code, when the TPM or TSS refused).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>

#include "hsm/secure_buffer.h"
#include "hsm/secure_element.h"
#include "hsm/tpm2/key_blob.h"
#include "hsm/tpm2/tss.h"

namespace m2mvault::hsm::tpm2 {

inline constexpr const char* kDefaultTcti = "device:/dev/tpmrm0";
// Largest sealed secret and HMAC key a TPM takes (MAX_SYM_DATA of the
// reference implementation and of swtpm).
inline constexpr std::size_t kMaxSecretSize = 128;
// Largest input of one TPM2_HMAC (MAX_DIGEST_BUFFER).
inline constexpr std::size_t kMaxHmacInput = 1024;

struct Config {
  // "device:/dev/tpmrm0" (the kernel's resource manager), "swtpm:port=N",
  // "swtpm:host=127.0.0.1,port=N" (the vault's swtpm TCTI, one persistent
  // connection), or any other Tss2_TctiLdr configuration.
  std::string tcti = kDefaultTcti;
  // Objects kept loaded besides the primary. 0: the TPM's guaranteed
  // transient slots (TPM_PT_HR_TRANSIENT_MIN) minus the primary's.
  std::size_t max_loaded_objects = 0;
  // TPM2_Sign authorized by the key's auth value as a password (sent to the
  // TPM in the clear) instead of through the signing HMAC session. It was
  // the way to a usable signing rate while ESAPI computed the session's
  // hashes (~1 ms apiece in tpm2-tss 3.2); the signing session now costs
  // about as little, so leave it off. docs/TPM2.md has the numbers.
  bool password_auth_for_signing = false;
};

enum class DigestAlgorithm { sha256, sha384 };

// The owner hierarchy's NV index range (TCG handle registry).
inline constexpr std::uint32_t kOwnerNvFirst = 0x01800000;
inline constexpr std::uint32_t kOwnerNvLast = 0x01BFFFFF;
// Largest NV index the vault defines: read and written in one command
// (TPM_PT_NV_BUFFER_MAX is 1024 on swtpm and the reference implementation).
inline constexpr std::size_t kMaxNvSize = 512;

enum class NvType { ordinary, counter };

// An NV index as the vault defines it in the owner hierarchy: written and
// incremented with the owner's authorization (assumed empty, as for the
// primary), read with its own empty auth value (nothing the vault keeps in
// NV is secret), noDA, not orderly (every update reaches NV before the
// command returns).
struct NvIndex {
  std::uint32_t handle = 0;  // kOwnerNvFirst..kOwnerNvLast
  NvType type = NvType::ordinary;
  std::uint16_t size = 0;  // 1..kMaxNvSize; 8 for a counter
};

enum class NvState { absent, unwritten, written };

// Counters for tests and benchmarks.
struct Stats {
  std::uint64_t loads = 0;             // TPM2_Load commands
  std::uint64_t evictions = 0;         // objects flushed to make room
  std::uint64_t reconnects = 0;        // connections re-made after a reset or a drop
  std::size_t flushed_at_start = 0;    // leftovers flushed when the last connection opened
  std::size_t loaded_capacity = 0;     // objects kept loaded besides the primary
  std::uint64_t signing_sessions = 0;  // HMAC sessions started for TPM2_Sign
  std::uint64_t tcti_connections = 0;  // connections the swtpm TCTI opened (0 on others)
};

class Tpm2 {
 public:
  // Connects, starts the TPM if it was not (a bare simulator), flushes every
  // transient object and session when the TCTI is not a resource manager
  // (the vault then needs the TPM to itself), re-creates the primary and
  // starts the salted session. Throws Error(unavailable) when the TPM
  // cannot be reached.
  explicit Tpm2(Config config);
  Tpm2(const Tpm2&) = delete;
  Tpm2& operator=(const Tpm2&) = delete;
  // Flushes what it loaded (objects, session, primary).
  ~Tpm2();

  const std::string& tcti() const noexcept { return config_.tcti; }
  // Manufacturer and vendor strings, e.g. "IBM SW   TPM".
  std::string model() const;
  Stats stats() const;

  // --- sealed data (PSK kinds) --------------------------------------------

  // Seals `secret` (1..kMaxSecretSize bytes) into a new object.
  Bytes seal(std::span<const std::uint8_t> secret);

  // As seal(), also returning HMAC-SHA-256(secret, mac_data), computed in
  // software from the caller's copy before it is sealed: a new key's check
  // value costs no unseal.
  struct SealedWithMac {
    Bytes blob;
    Hmac mac;
  };
  SealedWithMac seal_with_mac(std::span<const std::uint8_t> secret,
                              std::span<const std::uint8_t> mac_data);

  // TPM2_Unseal: the sealed bytes, for a handshake or an audited release.
  SecureBuffer unseal(std::span<const std::uint8_t> blob);

  // --- HMAC keys (Ke) -----------------------------------------------------

  // A new HMAC-SHA-256 key holding `key` (1..kMaxSecretSize bytes). As in
  // HMAC itself, a key shorter than 64 bytes is zero-padded and a longer one
  // is replaced by its SHA-256 (done here: the TPM takes at most 64 bytes).
  Bytes create_hmac_key(std::span<const std::uint8_t> key);
  // A new HMAC-SHA-256 key of 32 bytes drawn by the TPM.
  Bytes generate_hmac_key();

  // TPM2_HMAC with an HMAC key over `data` (at most kMaxHmacInput bytes).
  Hmac hmac_sha256(std::span<const std::uint8_t> key, std::span<const std::uint8_t> data);

  // --- derivations (TS-0003 10.3) -------------------------------------------
  // HMAC-SHA-256(parent, data) computed by the TPM, returned through the
  // encrypting session into a locked buffer, sealed into a new object
  // through the decrypting session in the same call, then wiped. The value
  // never crosses this API; it exists in plaintext only inside this process
  // (in a SecureBuffer and the TSS's command buffers) for that moment.

  Bytes derive_sealed(std::span<const std::uint8_t> parent, std::span<const std::uint8_t> data);
  // As derive_sealed(), also returning HMAC-SHA-256(derived, mac_data),
  // computed in software from the derived value before it is wiped.
  SealedWithMac derive_sealed_with_mac(std::span<const std::uint8_t> parent,
                                       std::span<const std::uint8_t> data,
                                       std::span<const std::uint8_t> mac_data);
  Bytes derive_hmac_key(std::span<const std::uint8_t> parent, std::span<const std::uint8_t> data);

  // --- signing keys ---------------------------------------------------------

  struct SigningKey {
    Bytes blob;
    Bytes public_key;  // DER SubjectPublicKeyInfo
  };
  // An ECC P-256 key pair generated inside the TPM.
  SigningKey generate_signing_key();

  // One TPM2_Sign of a digest computed in software (32 bytes for SHA-256,
  // 48 for SHA-384), authorized by the signing session (an HMAC with the
  // key's auth value; the response's HMAC is verified) or, if Config says
  // so, by the auth value as a password. Returns the DER
  // ECDSA-Sig-Value. A wrong auth value is TpmError(invalid_argument,
  // TPM_RC_BAD_AUTH); a response HMAC that does not verify is
  // Error(internal).
  Bytes sign_digest(std::span<const std::uint8_t> key, DigestAlgorithm algorithm,
                    std::span<const std::uint8_t> digest);

  // --- NV indices -------------------------------------------------------------
  // Each runs as one retried operation (a lost connection reconnects and
  // runs it again; an increment may then count twice, which callers allow).
  // NV_RATE, NV_UNAVAILABLE, NV_SPACE and an owner authorization the TPM
  // refuses are Error(unavailable).

  // Whether `index` is defined, and written. Throws Error(unavailable) when
  // its handle holds an index the vault did not define like this (another
  // type, size or attributes): something else uses that handle.
  NvState nv_state(const NvIndex& index);
  // TPM2_NV_DefineSpace, unless it is defined already.
  void nv_define(const NvIndex& index);
  // TPM2_NV_Read of the whole index. Error(not_found) unless it is written.
  Bytes nv_read(const NvIndex& index);
  // TPM2_NV_Write of `data` (1..index.size bytes) at offset 0 of an
  // ordinary index. Error(not_found) unless it is defined.
  void nv_write(const NvIndex& index, std::span<const std::uint8_t> data);
  // TPM2_NV_Increment of a counter. Its first increment sets it one above
  // the highest count any counter this TPM deleted had reached, so
  // undefining and defining it again never sets it back.
  void nv_increment(const NvIndex& index);
  // The count of a written counter (big-endian in NV).
  std::uint64_t nv_count(const NvIndex& index);

 private:
  struct Link;

  template <typename Operation>
  auto run(Operation&& operation);
  void connect();
  void drop_link() noexcept;

  ESYS_TR load(Link& link, const KeyBlob& blob);
  void make_room(Link& link);
  void use_session(Link& link, bool encrypt_command, bool encrypt_response);
  Bytes create(Link& link, const TPM2B_PUBLIC& object_template,
               std::span<const std::uint8_t> secret);
  SecureBuffer tpm_hmac(Link& link, const KeyBlob& key, std::span<const std::uint8_t> data);
  TPMT_SIGNATURE sign_in_session(Link& link, ESYS_TR object, const KeyBlob& key,
                                 const TPM2B_DIGEST& digest, const TPMT_SIG_SCHEME& scheme,
                                 const TPMT_TK_HASHCHECK& validation);

  Config config_;
  mutable std::mutex mutex_;
  std::unique_ptr<Link> link_;  // null between a drop and the next reconnect
  std::string model_;
  Stats stats_;
  std::uint64_t tcti_connections_of_dropped_links_ = 0;
};

// --- blobs, without the TPM ---------------------------------------------------

// The kind of object a blob holds. Throws Error(invalid_argument) for a
// malformed blob.
ObjectKind blob_kind(std::span<const std::uint8_t> blob);

// The TPM name of a blob's object (nameAlg || SHA-256 of its public area):
// a stable, non-secret identifier for logs and the catalog.
Bytes blob_name(std::span<const std::uint8_t> blob);

// The DER SubjectPublicKeyInfo of a signing key blob.
Bytes signing_public_key(std::span<const std::uint8_t> blob);

}  // namespace m2mvault::hsm::tpm2
