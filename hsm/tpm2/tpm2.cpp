#include "hsm/tpm2/tpm2.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <utility>

#include "hsm/tpm2/connection.h"
#include "hsm/tpm2/object_cache.h"
#include "hsm/tpm2/public_key.h"
#include "hsm/tpm2/signing_session.h"
#include "hsm/tpm2/templates.h"

namespace m2mvault::hsm::tpm2 {

// What one connection holds in the TPM; replaced as a whole after a reset.
// Members go in reverse: signing session, cached objects, session, primary,
// then the TCTI.
struct Tpm2::Link {
  explicit Link(const std::string& tcti) : connection(tcti) {}

  Connection connection;
  LoadedHandle primary;
  LoadedHandle session;
  std::unique_ptr<ObjectCache> cache;
  // Started by the first TPM2_Sign on this link, and again after a failed one.
  std::unique_ptr<SigningSession> signing_session;

  ESYS_CONTEXT* esys() const noexcept { return connection.esys(); }

  // For a connection that is gone: nothing is flushed, Esys_Finalize frees
  // the ESAPI's records.
  void abandon() noexcept {
    if (signing_session) signing_session->abandon();
    if (cache) cache->abandon_all();
    session.abandon();
    primary.abandon();
  }
};

namespace {

// SHA-256's block size: the longest HMAC key a TPM object holds as is.
constexpr std::size_t kHmacBlockSize = 64;

void check_size(std::span<const std::uint8_t> bytes, std::size_t max, const char* what) {
  if (bytes.empty() || bytes.size() > max) {
    throw Error(Failure::invalid_argument, std::string(what) + " must be 1.." +
                                               std::to_string(max) + " bytes, not " +
                                               std::to_string(bytes.size()));
  }
}

void parse(std::span<const std::uint8_t> bytes, KeyBlob& blob) {
  parse_blob(bytes, blob);
}

Hmac software_hmac(std::span<const std::uint8_t> key, std::span<const std::uint8_t> data) {
  Hmac out{};
  unsigned int size = 0;
  if (!HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), data.data(), data.size(),
            out.data(), &size) ||
      size != out.size()) {
    throw Error(Failure::internal, "HMAC-SHA-256 failed");
  }
  return out;
}

void check_nv_index(const NvIndex& index) {
  if (index.handle < kOwnerNvFirst || index.handle > kOwnerNvLast) {
    throw Error(Failure::invalid_argument,
                "NV index " + hex_handle(index.handle) + " is outside the owner range " +
                    hex_handle(kOwnerNvFirst) + ".." + hex_handle(kOwnerNvLast));
  }
  if (index.size == 0 || index.size > kMaxNvSize ||
      (index.type == NvType::counter && index.size != 8)) {
    throw Error(Failure::invalid_argument, "NV index " + hex_handle(index.handle) + ": size " +
                                               std::to_string(index.size) +
                                               " is not allowed for its type");
  }
}

// The attributes the vault defines an index with (NvIndex's comment).
TPMA_NV nv_attributes(NvType type) {
  TPMA_NV attributes = TPMA_NV_OWNERWRITE | TPMA_NV_OWNERREAD | TPMA_NV_AUTHREAD | TPMA_NV_NO_DA;
  if (type == NvType::counter) attributes |= TPM2_NT_COUNTER << TPMA_NV_TPM2_NT_SHIFT;
  return attributes;
}

// Attribute bits the TPM changes as an index is used: not its definition.
constexpr TPMA_NV kNvStatusBits = TPMA_NV_WRITTEN | TPMA_NV_WRITELOCKED | TPMA_NV_READLOCKED;

TPM2B_NV_PUBLIC nv_public_of(const NvIndex& index) {
  TPM2B_NV_PUBLIC out{};
  out.nvPublic.nvIndex = index.handle;
  out.nvPublic.nameAlg = TPM2_ALG_SHA256;
  out.nvPublic.attributes = nv_attributes(index.type);
  out.nvPublic.dataSize = index.size;
  return out;
}

// The failure of an NV command: a TPM that will not write NV now (rate
// limit, NV busy or full) or will not take the owner's empty authorization
// cannot keep the checkpoint; the caller can try again later.
Failure nv_failure(TSS2_RC rc) {
  switch (tpm_error_number(rc)) {
    case TPM2_RC_NV_RATE:
    case TPM2_RC_NV_UNAVAILABLE:
    case TPM2_RC_NV_SPACE:
    case TPM2_RC_NV_AUTHORIZATION:
    case TPM2_RC_BAD_AUTH:
    case TPM2_RC_AUTH_FAIL:
      return Failure::unavailable;
    default:
      return failure_of(rc);
  }
}

// An NV index as found in the TPM: its ESAPI record (none when absent).
struct OpenedNv {
  ResourceRecord record;
  NvState state = NvState::absent;
};

OpenedNv open_nv(Connection& connection, const NvIndex& index) {
  OpenedNv out;
  if (!connection.holds(index.handle)) return out;
  out.record = connection.record_of(index.handle);
  TPM2B_NV_PUBLIC* raw_public = nullptr;
  TPM2B_NAME* raw_name = nullptr;
  const TSS2_RC rc = Esys_NV_ReadPublic(connection.esys(), out.record.get(), ESYS_TR_NONE,
                                        ESYS_TR_NONE, ESYS_TR_NONE, &raw_public, &raw_name);
  const EsysPtr<TPM2B_NV_PUBLIC> found(raw_public);
  const EsysPtr<TPM2B_NAME> name(raw_name);
  check(rc, "TPM2_NV_ReadPublic");
  const TPMS_NV_PUBLIC& area = found->nvPublic;
  const TPMA_NV wanted = nv_attributes(index.type);
  if ((area.attributes & ~kNvStatusBits) != wanted || area.dataSize != index.size ||
      area.nameAlg != TPM2_ALG_SHA256 || area.authPolicy.size != 0) {
    char detail[96];
    std::snprintf(detail, sizeof detail, "attributes 0x%08x, size %u (the vault's: 0x%08x, %u)",
                  area.attributes & ~kNvStatusBits, area.dataSize, wanted, index.size);
    throw Error(Failure::unavailable, "NV index " + hex_handle(index.handle) +
                                          " is defined by something else: " + detail);
  }
  out.state = (area.attributes & TPMA_NV_WRITTEN) != 0 ? NvState::written : NvState::unwritten;
  return out;
}

// ESAPI's TPM2_Sign with the auth value as a password: no session hashes,
// and the auth value in the clear on the TPM interface (Config).
TPMT_SIGNATURE sign_with_password(ESYS_CONTEXT* esys, ESYS_TR object, const TPM2B_DIGEST& digest,
                                  const TPMT_SIG_SCHEME& scheme,
                                  const TPMT_TK_HASHCHECK& validation) {
  TPMT_SIGNATURE* raw = nullptr;
  const TSS2_RC rc = Esys_Sign(esys, object, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &digest,
                               &scheme, &validation, &raw);
  const EsysPtr<TPMT_SIGNATURE> signature(raw);
  check(rc, "TPM2_Sign");
  return *signature;
}

std::string four_chars(std::uint32_t value) {
  std::string out;
  for (int shift = 24; shift >= 0; shift -= 8) {
    const char c = static_cast<char>((value >> shift) & 0xFF);
    if (c != '\0') out.push_back(c);
  }
  return out;
}

}  // namespace

Tpm2::Tpm2(Config config) : config_(std::move(config)) {
  std::lock_guard lock(mutex_);
  connect();
}

Tpm2::~Tpm2() {
  std::lock_guard lock(mutex_);
  link_.reset();
}

std::string Tpm2::model() const {
  std::lock_guard lock(mutex_);
  return model_;
}

Stats Tpm2::stats() const {
  std::lock_guard lock(mutex_);
  Stats out = stats_;
  out.tcti_connections =
      tcti_connections_of_dropped_links_ + (link_ ? link_->connection.swtpm_connects() : 0);
  return out;
}

// Runs `operation` on the live link. When the TPM has lost what this process
// loaded (reset, restart, dropped connection), reconnects — re-creating the
// primary and the session, with an empty object cache — and runs it once more.
template <typename Operation>
auto Tpm2::run(Operation&& operation) {
  std::lock_guard lock(mutex_);
  for (int attempt = 0;; ++attempt) {
    try {
      if (!link_) {
        connect();
        ++stats_.reconnects;
      }
      return operation(*link_);
    } catch (const TpmError& error) {
      if (attempt > 0 || !is_lost_state(error.rc())) throw;
      drop_link();
    }
  }
}

void Tpm2::drop_link() noexcept {
  if (!link_) return;
  tcti_connections_of_dropped_links_ += link_->connection.swtpm_connects();
  link_->abandon();
  link_.reset();
}

void Tpm2::connect() {
  auto link = std::make_unique<Link>(config_.tcti);
  Connection& connection = link->connection;
  stats_.flushed_at_start = 0;
  if (!is_resource_manager(config_.tcti)) {
    connection.startup();
    stats_.flushed_at_start = connection.flush_everything();
  }

  std::size_t capacity = config_.max_loaded_objects;
  if (capacity == 0) {
    const std::uint32_t slots = connection.fixed_property(TPM2_PT_HR_TRANSIENT_MIN);
    capacity = slots > 2 ? slots - 1 : 1;
  }
  link->cache = std::make_unique<ObjectCache>(capacity);
  stats_.loaded_capacity = capacity;

  if (model_.empty()) {
    model_ = four_chars(connection.fixed_property(TPM2_PT_MANUFACTURER));
    std::string vendor;
    for (TPM2_PT pt = TPM2_PT_VENDOR_STRING_1; pt <= TPM2_PT_VENDOR_STRING_4; ++pt) {
      vendor += four_chars(connection.fixed_property(pt));
    }
    if (!vendor.empty()) model_ += " " + vendor;
  }

  // The primary: the same key every time from the owner seed and the template.
  const TPM2B_SENSITIVE_CREATE no_sensitive{};
  const TPM2B_PUBLIC primary_public = primary_template();
  const TPM2B_DATA outside_info{};
  const TPML_PCR_SELECTION no_pcrs{};
  ESYS_TR primary = ESYS_TR_NONE;
  TPM2B_PUBLIC* out_public = nullptr;
  TPM2B_CREATION_DATA* creation_data = nullptr;
  TPM2B_DIGEST* creation_hash = nullptr;
  TPMT_TK_CREATION* creation_ticket = nullptr;
  TSS2_RC rc =
      Esys_CreatePrimary(link->esys(), ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                         ESYS_TR_NONE, &no_sensitive, &primary_public, &outside_info, &no_pcrs,
                         &primary, &out_public, &creation_data, &creation_hash, &creation_ticket);
  Esys_Free(out_public);
  Esys_Free(creation_data);
  Esys_Free(creation_hash);
  Esys_Free(creation_ticket);
  check(rc, "TPM2_CreatePrimary (owner hierarchy)",
        tpm_error_number(rc) == TPM2_RC_OBJECT_MEMORY ? Failure::unavailable : failure_of(rc));
  link->primary = LoadedHandle(link->esys(), primary);

  // The salted session: its salt is encrypted to the primary, so only this
  // TPM and this process know the session key that encrypts parameters.
  const TPMT_SYM_DEF aes_cfb{
      .algorithm = TPM2_ALG_AES, .keyBits = {.aes = 128}, .mode = {.aes = TPM2_ALG_CFB}};
  ESYS_TR session = ESYS_TR_NONE;
  rc = Esys_StartAuthSession(link->esys(), primary, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                             ESYS_TR_NONE, nullptr, TPM2_SE_HMAC, &aes_cfb, TPM2_ALG_SHA256,
                             &session);
  check(rc, "TPM2_StartAuthSession (salted)");
  link->session = LoadedHandle(link->esys(), session);
  check(Esys_TRSess_SetAttributes(link->esys(), session, TPMA_SESSION_CONTINUESESSION, 0xFF),
        "Esys_TRSess_SetAttributes");
  link_ = std::move(link);
}

void Tpm2::use_session(Link& link, bool encrypt_command, bool encrypt_response) {
  TPMA_SESSION attributes = TPMA_SESSION_CONTINUESESSION;
  if (encrypt_command) attributes |= TPMA_SESSION_DECRYPT;
  if (encrypt_response) attributes |= TPMA_SESSION_ENCRYPT;
  check(Esys_TRSess_SetAttributes(link.esys(), link.session.get(), attributes, 0xFF),
        "Esys_TRSess_SetAttributes");
}

void Tpm2::make_room(Link& link) {
  while (link.cache->full() && link.cache->evict_one()) ++stats_.evictions;
}

ESYS_TR Tpm2::load(Link& link, const KeyBlob& blob) {
  if (const ESYS_TR loaded = link.cache->find(blob.digest); loaded != ESYS_TR_NONE) return loaded;
  make_room(link);
  for (;;) {
    // The primary's auth is empty and the private area is already encrypted:
    // a password session carries nothing secret and costs no session hashes.
    ESYS_TR object = ESYS_TR_NONE;
    const TSS2_RC rc = Esys_Load(link.esys(), link.primary.get(), ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                 ESYS_TR_NONE, &blob.private_area, &blob.public_area, &object);
    if (rc == TSS2_RC_SUCCESS) {
      ++stats_.loads;
      LoadedHandle handle(link.esys(), object);
      check(Esys_TR_SetAuth(link.esys(), object, blob.auth.ptr()), "Esys_TR_SetAuth");
      return link.cache->insert(blob.digest, std::move(handle));
    }
    // Someone else's object holds a slot we counted on: give up one of ours.
    if (tpm_error_number(rc) == TPM2_RC_OBJECT_MEMORY && link.cache->evict_one()) {
      ++stats_.evictions;
      continue;
    }
    if (tpm_error_number(rc) == TPM2_RC_INTEGRITY) {
      fail(rc, "TPM2_Load: the blob was not made by this TPM under the vault's primary key",
           Failure::not_found);
    }
    fail(rc, "TPM2_Load", failure_of(rc));
  }
}

Bytes Tpm2::create(Link& link, const TPM2B_PUBLIC& object_template,
                   std::span<const std::uint8_t> secret) {
  Wiped<TPM2B_SENSITIVE_CREATE> sensitive;
  sensitive->sensitive.userAuth.size = kAuthSize;
  if (RAND_bytes(sensitive->sensitive.userAuth.buffer, kAuthSize) != 1) {
    throw Error(Failure::internal, "RAND_bytes failed");
  }
  sensitive->sensitive.data.size = static_cast<UINT16>(secret.size());
  std::copy(secret.begin(), secret.end(), sensitive->sensitive.data.buffer);

  const TPM2B_DATA outside_info{};
  const TPML_PCR_SELECTION no_pcrs{};
  make_room(link);  // TPM2_Create holds the new object in a slot while it works
  use_session(link, true, false);
  for (;;) {
    TPM2B_PRIVATE* out_private = nullptr;
    TPM2B_PUBLIC* out_public = nullptr;
    TPM2B_CREATION_DATA* creation_data = nullptr;
    TPM2B_DIGEST* creation_hash = nullptr;
    TPMT_TK_CREATION* creation_ticket = nullptr;
    const TSS2_RC rc =
        Esys_Create(link.esys(), link.primary.get(), link.session.get(), ESYS_TR_NONE, ESYS_TR_NONE,
                    sensitive.ptr(), &object_template, &outside_info, &no_pcrs, &out_private,
                    &out_public, &creation_data, &creation_hash, &creation_ticket);
    const EsysPtr<TPM2B_PRIVATE> private_area(out_private);
    const EsysPtr<TPM2B_PUBLIC> public_area(out_public);
    Esys_Free(creation_data);
    Esys_Free(creation_hash);
    Esys_Free(creation_ticket);
    if (rc == TSS2_RC_SUCCESS) {
      return serialize_blob(sensitive->sensitive.userAuth, *public_area, *private_area);
    }
    if (tpm_error_number(rc) == TPM2_RC_OBJECT_MEMORY && link.cache->evict_one()) {
      ++stats_.evictions;
      continue;
    }
    fail(rc, "TPM2_Create", failure_of(rc));
  }
}

SecureBuffer Tpm2::tpm_hmac(Link& link, const KeyBlob& key, std::span<const std::uint8_t> data) {
  if (data.size() > kMaxHmacInput) {
    throw Error(Failure::invalid_argument, "HMAC input is " + std::to_string(data.size()) +
                                               " bytes, more than " +
                                               std::to_string(kMaxHmacInput));
  }
  const ESYS_TR object = load(link, key);
  TPM2B_MAX_BUFFER input{};
  input.size = static_cast<UINT16>(data.size());
  std::copy(data.begin(), data.end(), input.buffer);
  // The result may be a derived key: it comes back encrypted.
  use_session(link, false, true);
  TPM2B_DIGEST* raw = nullptr;
  const TSS2_RC rc = Esys_HMAC(link.esys(), object, link.session.get(), ESYS_TR_NONE, ESYS_TR_NONE,
                               &input, TPM2_ALG_SHA256, &raw);
  const EsysSecretPtr<TPM2B_DIGEST> out(raw);
  check(rc, "TPM2_HMAC");
  if (out->size != sizeof(Hmac)) throw Error(Failure::internal, "TPM2_HMAC returned a short MAC");
  return SecureBuffer::copy_of(std::span(out->buffer, out->size));
}

// --- sealed data ------------------------------------------------------------

Bytes Tpm2::seal(std::span<const std::uint8_t> secret) {
  check_size(secret, kMaxSecretSize, "a sealed secret");
  return run([&](Link& link) { return create(link, sealed_data_template(), secret); });
}

Tpm2::SealedWithMac Tpm2::seal_with_mac(std::span<const std::uint8_t> secret,
                                        std::span<const std::uint8_t> mac_data) {
  check_size(secret, kMaxSecretSize, "a sealed secret");
  SealedWithMac out{};
  out.mac = software_hmac(secret, mac_data);
  out.blob = seal(secret);
  return out;
}

SecureBuffer Tpm2::unseal(std::span<const std::uint8_t> blob) {
  KeyBlob parsed;
  parse(blob, parsed);
  return run([&](Link& link) {
    const ESYS_TR object = load(link, parsed);
    use_session(link, false, true);
    TPM2B_SENSITIVE_DATA* raw = nullptr;
    const TSS2_RC rc =
        Esys_Unseal(link.esys(), object, link.session.get(), ESYS_TR_NONE, ESYS_TR_NONE, &raw);
    const EsysSecretPtr<TPM2B_SENSITIVE_DATA> out(raw);
    check(rc, "TPM2_Unseal");
    return SecureBuffer::copy_of(std::span(out->buffer, out->size));
  });
}

// --- HMAC keys ----------------------------------------------------------------

Bytes Tpm2::create_hmac_key(std::span<const std::uint8_t> key) {
  check_size(key, kMaxSecretSize, "an HMAC key");
  if (key.size() <= kHmacBlockSize) {
    return run([&](Link& link) { return create(link, hmac_key_template(false), key); });
  }
  // The TPM takes keys up to the hash's block size (TPM_RC_SIZE above);
  // HMAC itself replaces a longer key by its hash (RFC 2104), so store that.
  SecureBuffer hashed(32);
  unsigned int size = 0;
  if (EVP_Digest(key.data(), key.size(), hashed.data(), &size, EVP_sha256(), nullptr) != 1) {
    throw Error(Failure::internal, "SHA-256 failed");
  }
  return run([&](Link& link) { return create(link, hmac_key_template(false), hashed.span()); });
}

Bytes Tpm2::generate_hmac_key() {
  return run([&](Link& link) {
    return create(link, hmac_key_template(true), std::span<const std::uint8_t>());
  });
}

Hmac Tpm2::hmac_sha256(std::span<const std::uint8_t> key, std::span<const std::uint8_t> data) {
  KeyBlob parsed;
  parse(key, parsed);
  const SecureBuffer mac = run([&](Link& link) { return tpm_hmac(link, parsed, data); });
  Hmac out{};
  std::copy(mac.data(), mac.data() + mac.size(), out.begin());
  return out;
}

// --- derivations ----------------------------------------------------------------

Bytes Tpm2::derive_sealed(std::span<const std::uint8_t> parent,
                          std::span<const std::uint8_t> data) {
  KeyBlob parsed;
  parse(parent, parsed);
  return run([&](Link& link) {
    const SecureBuffer derived = tpm_hmac(link, parsed, data);
    return create(link, sealed_data_template(), derived.span());
  });
}

Tpm2::SealedWithMac Tpm2::derive_sealed_with_mac(std::span<const std::uint8_t> parent,
                                                 std::span<const std::uint8_t> data,
                                                 std::span<const std::uint8_t> mac_data) {
  KeyBlob parsed;
  parse(parent, parsed);
  return run([&](Link& link) {
    const SecureBuffer derived = tpm_hmac(link, parsed, data);
    SealedWithMac out{};
    out.mac = software_hmac(derived.span(), mac_data);
    out.blob = create(link, sealed_data_template(), derived.span());
    return out;
  });
}

Bytes Tpm2::derive_hmac_key(std::span<const std::uint8_t> parent,
                            std::span<const std::uint8_t> data) {
  KeyBlob parsed;
  parse(parent, parsed);
  return run([&](Link& link) {
    const SecureBuffer derived = tpm_hmac(link, parsed, data);
    return create(link, hmac_key_template(false), derived.span());
  });
}

// --- signing keys ---------------------------------------------------------------

Tpm2::SigningKey Tpm2::generate_signing_key() {
  SigningKey out{};
  out.blob = run([&](Link& link) {
    return create(link, ecc_signing_template(), std::span<const std::uint8_t>());
  });
  out.public_key = signing_public_key(out.blob);
  return out;
}

Bytes Tpm2::sign_digest(std::span<const std::uint8_t> key, DigestAlgorithm algorithm,
                        std::span<const std::uint8_t> digest) {
  const bool sha384 = algorithm == DigestAlgorithm::sha384;
  const std::size_t expected = sha384 ? 48 : 32;
  if (digest.size() != expected) {
    throw Error(Failure::invalid_argument, std::string("a ") + (sha384 ? "SHA-384" : "SHA-256") +
                                               " digest is " + std::to_string(expected) +
                                               " bytes, not " + std::to_string(digest.size()));
  }
  KeyBlob parsed;
  parse(key, parsed);
  TPM2B_DIGEST input{};
  input.size = static_cast<UINT16>(digest.size());
  std::copy(digest.begin(), digest.end(), input.buffer);
  TPMT_SIG_SCHEME scheme{};
  scheme.scheme = TPM2_ALG_ECDSA;
  scheme.details.ecdsa.hashAlg = sha384 ? TPM2_ALG_SHA384 : TPM2_ALG_SHA256;
  // A NULL ticket: the key is not restricted, so the TPM signs any digest.
  TPMT_TK_HASHCHECK validation{};
  validation.tag = TPM2_ST_HASHCHECK;
  validation.hierarchy = TPM2_RH_NULL;

  return run([&](Link& link) {
    const ESYS_TR object = load(link, parsed);
    const TPMT_SIGNATURE signature =
        config_.password_auth_for_signing
            ? sign_with_password(link.esys(), object, input, scheme, validation)
            : sign_in_session(link, object, parsed, input, scheme, validation);
    if (signature.sigAlg != TPM2_ALG_ECDSA) {
      throw Error(Failure::internal, "TPM2_Sign returned a non-ECDSA signature");
    }
    return ecdsa_der(signature.signature.ecdsa);
  });
}

TPMT_SIGNATURE Tpm2::sign_in_session(Link& link, ESYS_TR object, const KeyBlob& key,
                                     const TPM2B_DIGEST& digest, const TPMT_SIG_SCHEME& scheme,
                                     const TPMT_TK_HASHCHECK& validation) {
  TPM2_HANDLE handle = 0;
  check(Esys_TR_GetTpmHandle(link.esys(), object, &handle), "Esys_TR_GetTpmHandle");
  // The object's name, as the TPM puts it in its own cpHash, from the public
  // area we loaded. (Esys_TR_GetName would hash it again with ESAPI's ~1 ms
  // crypto on every call.)
  const Bytes name_bytes = object_name(key.public_area.publicArea);
  TPM2B_NAME name{};
  name.size = static_cast<UINT16>(name_bytes.size());
  std::copy(name_bytes.begin(), name_bytes.end(), name.name);
  if (!link.signing_session) {
    link.signing_session = std::make_unique<SigningSession>(link.esys());
    ++stats_.signing_sessions;
  }
  try {
    return link.signing_session->sign(handle, name, key.auth.get(), digest, scheme, validation);
  } catch (const TpmError& error) {
    // Whatever the TPM did with the session's nonce, start the next sign
    // with a new session; a lost TPM takes the session with it (run()
    // reconnects), otherwise it is flushed.
    if (is_lost_state(error.rc())) link.signing_session->abandon();
    link.signing_session.reset();
    throw;
  } catch (...) {
    link.signing_session.reset();
    throw;
  }
}

// --- NV indices -------------------------------------------------------------------

NvState Tpm2::nv_state(const NvIndex& index) {
  check_nv_index(index);
  return run([&](Link& link) { return open_nv(link.connection, index).state; });
}

void Tpm2::nv_define(const NvIndex& index) {
  check_nv_index(index);
  run([&](Link& link) {
    // Defined already, or by the first try of this retried operation.
    if (open_nv(link.connection, index).state != NvState::absent) return;
    const TPM2B_AUTH empty_auth{};
    const TPM2B_NV_PUBLIC public_info = nv_public_of(index);
    ESYS_TR defined = ESYS_TR_NONE;
    const TSS2_RC rc =
        Esys_NV_DefineSpace(link.esys(), ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                            ESYS_TR_NONE, &empty_auth, &public_info, &defined);
    const ResourceRecord record(link.esys(), defined);
    check(rc, ("TPM2_NV_DefineSpace(" + hex_handle(index.handle) + ")").c_str(), nv_failure(rc));
  });
}

Bytes Tpm2::nv_read(const NvIndex& index) {
  check_nv_index(index);
  return run([&](Link& link) {
    const OpenedNv nv = open_nv(link.connection, index);
    if (nv.state != NvState::written) {
      throw Error(Failure::not_found,
                  "NV index " + hex_handle(index.handle) +
                      (nv.state == NvState::absent ? " is not defined" : " was never written"));
    }
    TPM2B_MAX_NV_BUFFER* raw = nullptr;
    const TSS2_RC rc = Esys_NV_Read(link.esys(), nv.record.get(), nv.record.get(), ESYS_TR_PASSWORD,
                                    ESYS_TR_NONE, ESYS_TR_NONE, index.size, 0, &raw);
    const EsysPtr<TPM2B_MAX_NV_BUFFER> data(raw);
    check(rc, "TPM2_NV_Read", nv_failure(rc));
    return Bytes(data->buffer, data->buffer + data->size);
  });
}

void Tpm2::nv_write(const NvIndex& index, std::span<const std::uint8_t> data) {
  check_nv_index(index);
  check_size(data, index.size, "NV data");
  TPM2B_MAX_NV_BUFFER buffer{};
  buffer.size = static_cast<UINT16>(data.size());
  std::copy(data.begin(), data.end(), buffer.buffer);
  run([&](Link& link) {
    const OpenedNv nv = open_nv(link.connection, index);
    if (nv.state == NvState::absent) {
      throw Error(Failure::not_found, "NV index " + hex_handle(index.handle) + " is not defined");
    }
    const TSS2_RC rc = Esys_NV_Write(link.esys(), ESYS_TR_RH_OWNER, nv.record.get(),
                                     ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &buffer, 0);
    check(rc, "TPM2_NV_Write", nv_failure(rc));
  });
}

void Tpm2::nv_increment(const NvIndex& index) {
  check_nv_index(index);
  run([&](Link& link) {
    const OpenedNv nv = open_nv(link.connection, index);
    if (nv.state == NvState::absent) {
      throw Error(Failure::not_found, "NV index " + hex_handle(index.handle) + " is not defined");
    }
    const TSS2_RC rc = Esys_NV_Increment(link.esys(), ESYS_TR_RH_OWNER, nv.record.get(),
                                         ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE);
    check(rc, "TPM2_NV_Increment", nv_failure(rc));
  });
}

std::uint64_t Tpm2::nv_count(const NvIndex& index) {
  if (index.type != NvType::counter) {
    throw Error(Failure::invalid_argument,
                "NV index " + hex_handle(index.handle) + " is not a counter");
  }
  const Bytes data = nv_read(index);
  if (data.size() != 8) throw Error(Failure::internal, "TPM2_NV_Read of a counter: not 8 bytes");
  std::uint64_t count = 0;
  for (const std::uint8_t byte : data) count = (count << 8) | byte;
  return count;
}

// --- blobs ------------------------------------------------------------------------

ObjectKind blob_kind(std::span<const std::uint8_t> blob) {
  KeyBlob parsed;
  parse_blob(blob, parsed);
  return parsed.kind;
}

Bytes blob_name(std::span<const std::uint8_t> blob) {
  KeyBlob parsed;
  parse_blob(blob, parsed);
  return object_name(parsed.public_area.publicArea);
}

Bytes signing_public_key(std::span<const std::uint8_t> blob) {
  KeyBlob parsed;
  parse_blob(blob, parsed);
  if (parsed.kind != ObjectKind::signing_key) {
    throw Error(Failure::invalid_argument,
                std::string("the blob holds ") + to_string(parsed.kind) + ", not a signing key");
  }
  return ecc_spki(parsed.public_area.publicArea);
}

}  // namespace m2mvault::hsm::tpm2
