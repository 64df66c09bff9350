// The SecureElement on the TPM core (tpm2.h): an adapter. What the TPM does
// not do itself (HMAC with a sealed PSK, audit epochs) is done here in
// software from bytes the TPM released into locked buffers.
#include "hsm/tpm2/tpm2_backend.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <mutex>
#include <variant>

#include "hsm/audit_epochs.h"
#include "hsm/tpm2/evp_key.h"

namespace m2mvault::hsm::tpm2 {
namespace {

namespace fs = std::filesystem;

Hmac software_hmac(std::span<const std::uint8_t> key, std::span<const std::uint8_t> data) {
  Hmac out{};
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), data.data(), data.size(),
            out.data(), &len) ||
      len != out.size()) {
    throw Error(Failure::internal, "HMAC-SHA-256 failed");
  }
  return out;
}

std::string errno_text() {
  return std::strerror(errno);
}

// Makes a rename or an unlink of `path` durable.
void sync_directory(const fs::path& path) {
  const int dir = ::open(path.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
}

// Replaces `path` with `content` so that a crash leaves the old or the new
// file, never a torn one: a temporary file (mode 0600) written and synced,
// renamed over it, the directory synced.
void write_file_atomically(const fs::path& path, std::span<const std::uint8_t> content) {
  const fs::path temporary = path.string() + ".new";
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0)
    throw Error(Failure::unavailable, "cannot create " + temporary.string() + ": " + errno_text());
  bool ok = ::fchmod(fd, 0600) == 0;
  ok = ok && ::write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size());
  ok = ok && ::fsync(fd) == 0;
  ok = (::close(fd) == 0) && ok;
  if (!ok || ::rename(temporary.c_str(), path.c_str()) != 0) {
    const std::string reason = errno_text();
    ::unlink(temporary.c_str());
    throw Error(Failure::unavailable, "cannot write " + path.string() + ": " + reason);
  }
  sync_directory(path);
}

std::optional<Bytes> read_file(const fs::path& path) {
  std::error_code absent;
  if (!fs::exists(path, absent) && !absent) return std::nullopt;
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(Failure::unavailable, "cannot read " + path.string() + ": " + errno_text());
  Bytes content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw Error(Failure::unavailable, "cannot read " + path.string());
  return content;
}

class Tpm2Backend final : public SecureElement {
 public:
  explicit Tpm2Backend(const BackendConfig& config)
      : tpm_(std::make_shared<Tpm2>(config.tpm)),
        audit_key_path_(config.state_dir / kAuditKeyFile),
        legacy_checkpoint_path_(config.state_dir / kLegacyAuditCheckpointFile),
        checkpoint_(tpm_, config.audit_nv_index,
                    [this](std::span<const std::uint8_t> data) { return audit_mac(data); }) {
    if (config.state_dir.empty())
      throw Error(Failure::unavailable, "the TPM backend needs a state directory");
    audit_key_ = load_or_create_audit_key();
  }

  BackendInfo info() const override { return BackendInfo{"tpm2", tpm_->tcti(), "", tpm_->model()}; }

  // --- wrapped secrets: sealed data objects -------------------------------

  Bytes wrap_secret(std::span<const std::uint8_t> secret) override { return tpm_->seal(secret); }

  SecureBuffer unwrap_secret(std::span<const std::uint8_t> blob) override {
    return tpm_->unseal(blob);
  }

  Bytes derive_wrapped_secret(const SecretRef& parent,
                              std::span<const std::uint8_t> data) override {
    if (const auto* key = std::get_if<TokenKeyRef>(&parent)) {
      return tpm_->derive_sealed(token_blob(*key), data);
    }
    return seal_software_hmac(std::get<WrappedSecretRef>(parent).blob, data);
  }

  WrappedWithMac wrap_secret_with_mac(std::span<const std::uint8_t> secret,
                                      std::span<const std::uint8_t> mac_data) override {
    auto sealed = tpm_->seal_with_mac(secret, mac_data);
    return {std::move(sealed.blob), sealed.mac};
  }

  WrappedWithMac derive_wrapped_secret_with_mac(const SecretRef& parent,
                                                std::span<const std::uint8_t> data,
                                                std::span<const std::uint8_t> mac_data) override {
    if (const auto* key = std::get_if<TokenKeyRef>(&parent)) {
      auto sealed = tpm_->derive_sealed_with_mac(token_blob(*key), data, mac_data);
      return {std::move(sealed.blob), sealed.mac};
    }
    Bytes blob = seal_software_hmac(std::get<WrappedSecretRef>(parent).blob, data);
    return {blob, hmac_sha256(WrappedSecretRef{blob}, mac_data)};
  }

  // --- token keys: blobs the catalog keeps -------------------------------

  Bytes new_object_id() override {
    Bytes id(16);
    if (RAND_bytes(id.data(), static_cast<int>(id.size())) != 1)
      throw Error(Failure::internal, "RAND_bytes failed");
    return id;
  }

  Bytes create_token_secret(std::span<const std::uint8_t> /*object_id*/,
                            std::span<const std::uint8_t> secret) override {
    return tpm_->create_hmac_key(secret);
  }

  GeneratedKey generate_signing_key(std::span<const std::uint8_t> /*object_id*/,
                                    SigningAlgorithm algorithm) override {
    if (algorithm != SigningAlgorithm::ec_p256)
      throw Error(Failure::unsupported, "the TPM backend makes EC P-256 signing keys only");
    auto key = tpm_->generate_signing_key();
    return {std::move(key.public_key), std::move(key.blob)};
  }

  AdoptedKey adopt_signing_key(const TokenKeyRef& /*ref*/) override {
    throw Error(Failure::unsupported,
                "adopting a key that lives in a token is a PKCS#11 feature; the TPM backend "
                "has no pre-provisioned keys to reference");
  }

  // Nothing persists in the TPM: see the header.
  bool token_object_exists(std::span<const std::uint8_t> /*object_id*/) override { return false; }
  void destroy_token_object(std::span<const std::uint8_t> /*object_id*/) override {}
  std::vector<Bytes> list_vault_objects() override { return {}; }

  // --- operations ---------------------------------------------------------

  // A Ke is HMAC'd by the TPM; a PSK (sealed, so it cannot HMAC) is unsealed
  // and HMAC'd here, as its check value needs.
  Hmac hmac_sha256(const SecretRef& key, std::span<const std::uint8_t> data) override {
    if (const auto* token = std::get_if<TokenKeyRef>(&key)) {
      return tpm_->hmac_sha256(token_blob(*token), data);
    }
    const SecureBuffer secret = tpm_->unseal(std::get<WrappedSecretRef>(key).blob);
    return software_hmac(secret.span(), data);
  }

  Bytes sign_digest(const TokenKeyRef& key, SignatureScheme scheme,
                    std::span<const std::uint8_t> digest) override {
    if (scheme != SignatureScheme::ecdsa)
      throw Error(Failure::unsupported, "the TPM backend signs with ECDSA only");
    if (digest.size() == 48)
      return tpm_->sign_digest(token_blob(key), DigestAlgorithm::sha384, digest);
    return tpm_->sign_digest(token_blob(key), DigestAlgorithm::sha256, p256_digest(digest));
  }

  Bytes public_key(const TokenKeyRef& key) override { return signing_public_key(token_blob(key)); }

  std::shared_ptr<EVP_PKEY> private_key(const TokenKeyRef& key) override {
    return make_private_key(tpm_, token_blob(key));
  }

  // --- the audit log ------------------------------------------------------

  Hmac audit_mac(std::span<const std::uint8_t> data) override {
    return tpm_->hmac_sha256(audit_key_, data);
  }

  Bytes begin_audit_epoch() override { return epochs_.begin(); }
  Hmac audit_epoch_mac(std::span<const std::uint8_t> data) override { return epochs_.mac(data); }
  Hmac audit_epoch_mac_for(std::span<const std::uint8_t> nonce,
                           std::span<const std::uint8_t> data) override {
    return epochs_.mac_for(nonce, data);
  }

  // In NV (nv_checkpoint.h). The file of a state directory from before is
  // read until the first store puts a checkpoint in NV, then removed: from
  // then on NV holds a later checkpoint than the file ever did.
  void store_audit_checkpoint(std::span<const std::uint8_t> value) override {
    std::lock_guard lock(checkpoint_mutex_);
    checkpoint_.store(value);
    std::error_code ignored;
    if (fs::remove(legacy_checkpoint_path_, ignored)) sync_directory(legacy_checkpoint_path_);
  }

  std::optional<Bytes> load_audit_checkpoint() override {
    std::lock_guard lock(checkpoint_mutex_);
    if (auto value = checkpoint_.load()) return value;
    return read_file(legacy_checkpoint_path_);
  }

 private:
  static std::span<const std::uint8_t> token_blob(const TokenKeyRef& key) {
    if (!key.token_label.empty())
      throw Error(Failure::unsupported, "the TPM backend has no token '" + key.token_label + "'");
    if (key.blob.empty())
      throw Error(Failure::not_found, "the key has no TPM blob (made by another backend?)");
    return key.blob;
  }

  // HMAC-SHA-256 with a sealed PSK as the key, sealed in turn: the value
  // lives only in locked buffers in between.
  Bytes seal_software_hmac(std::span<const std::uint8_t> parent,
                           std::span<const std::uint8_t> data) {
    Hmac mac = hmac_sha256(WrappedSecretRef{parent}, data);
    const SecureBuffer derived = SecureBuffer::copy_of(mac);
    OPENSSL_cleanse(mac.data(), mac.size());
    return tpm_->seal(derived.span());
  }

  Bytes load_or_create_audit_key() {
    if (auto blob = read_file(audit_key_path_)) {
      try {
        if (blob_kind(*blob) == ObjectKind::hmac_key) return *blob;
      } catch (const Error&) {
      }
      throw Error(Failure::unavailable,
                  "the audit key file " + audit_key_path_.string() + " holds no TPM HMAC key");
    }
    Bytes blob = tpm_->generate_hmac_key();
    write_file_atomically(audit_key_path_, blob);
    return blob;
  }

  std::shared_ptr<Tpm2> tpm_;  // shared with the EVP_PKEYs private_key() hands out
  fs::path audit_key_path_;
  fs::path legacy_checkpoint_path_;
  Bytes audit_key_;  // an HMAC-key blob: usable only with this TPM
  std::mutex checkpoint_mutex_;
  NvAuditCheckpoint checkpoint_;  // MACs with audit_key_, read after the constructor set it
  AuditEpochs epochs_{[this](std::span<const std::uint8_t> data) { return audit_mac(data); }};
};

}  // namespace

std::unique_ptr<SecureElement> open(const BackendConfig& config) {
  return std::make_unique<Tpm2Backend>(config);
}

}  // namespace m2mvault::hsm::tpm2
