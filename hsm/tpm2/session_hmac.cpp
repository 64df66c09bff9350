#include "hsm/tpm2/session_hmac.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include "hsm/error.h"
#include "hsm/tpm2/tss.h"

namespace m2mvault::hsm::tpm2 {
namespace {

struct MdFree {
  void operator()(EVP_MD* md) const noexcept { EVP_MD_free(md); }
};
struct MdCtxFree {
  void operator()(EVP_MD_CTX* ctx) const noexcept { EVP_MD_CTX_free(ctx); }
};
struct MacFree {
  void operator()(EVP_MAC* mac) const noexcept { EVP_MAC_free(mac); }
};
// EVP_MAC_CTX_free wipes the key and the HMAC pads derived from it.
struct MacCtxFree {
  void operator()(EVP_MAC_CTX* ctx) const noexcept { EVP_MAC_CTX_free(ctx); }
};

[[noreturn]] void crypto_failed(const char* what) {
  throw Error(Failure::internal, std::string("session ") + what + " failed");
}

std::array<std::uint8_t, 4> big_endian(std::uint32_t value) {
  return {static_cast<std::uint8_t>(value >> 24), static_cast<std::uint8_t>(value >> 16),
          static_cast<std::uint8_t>(value >> 8), static_cast<std::uint8_t>(value)};
}

// One SHA-256 over the concatenation of `parts`.
Sha256Digest hash(EVP_MD* sha256, std::initializer_list<std::span<const std::uint8_t>> parts) {
  const std::unique_ptr<EVP_MD_CTX, MdCtxFree> ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestInit_ex2(ctx.get(), sha256, nullptr) != 1) crypto_failed("SHA-256");
  for (const auto part : parts) {
    if (EVP_DigestUpdate(ctx.get(), part.data(), part.size()) != 1) crypto_failed("SHA-256");
  }
  Sha256Digest out{};
  unsigned int size = 0;
  if (EVP_DigestFinal_ex(ctx.get(), out.data(), &size) != 1 || size != out.size()) {
    crypto_failed("SHA-256");
  }
  return out;
}

}  // namespace

struct SessionHmac::Fetched {
  std::unique_ptr<EVP_MD, MdFree> sha256;
  std::unique_ptr<EVP_MAC, MacFree> hmac;
};

SessionHmac::SessionHmac() : fetched_(std::make_unique<Fetched>()) {
  fetched_->sha256.reset(EVP_MD_fetch(nullptr, "SHA256", nullptr));
  fetched_->hmac.reset(EVP_MAC_fetch(nullptr, "HMAC", nullptr));
  if (!fetched_->sha256 || !fetched_->hmac) crypto_failed("SHA-256 or HMAC fetch");
}

SessionHmac::~SessionHmac() = default;

Sha256Digest SessionHmac::command_hash(TPM2_CC command, std::span<const TPM2B_NAME> names,
                                       std::span<const std::uint8_t> parameters) const {
  const std::unique_ptr<EVP_MD_CTX, MdCtxFree> ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestInit_ex2(ctx.get(), fetched_->sha256.get(), nullptr) != 1) {
    crypto_failed("cpHash");
  }
  const auto code = big_endian(command);
  bool ok = EVP_DigestUpdate(ctx.get(), code.data(), code.size()) == 1;
  for (const TPM2B_NAME& name : names) {
    ok = ok && EVP_DigestUpdate(ctx.get(), name.name, name.size) == 1;
  }
  ok = ok && EVP_DigestUpdate(ctx.get(), parameters.data(), parameters.size()) == 1;
  Sha256Digest out{};
  unsigned int size = 0;
  if (!ok || EVP_DigestFinal_ex(ctx.get(), out.data(), &size) != 1 || size != out.size()) {
    crypto_failed("cpHash");
  }
  return out;
}

Sha256Digest SessionHmac::response_hash(TPM2_RC response, TPM2_CC command,
                                        std::span<const std::uint8_t> parameters) const {
  const auto code = big_endian(response);
  const auto command_code = big_endian(command);
  return hash(fetched_->sha256.get(), {code, command_code, parameters});
}

Sha256Digest SessionHmac::authorization(std::span<const std::uint8_t> session_key,
                                        const TPM2B_AUTH& auth, const Sha256Digest& p_hash,
                                        const TPM2B_NONCE& nonce_newer,
                                        const TPM2B_NONCE& nonce_older,
                                        TPMA_SESSION attributes) const {
  std::size_t auth_size = auth.size;
  if (session_key.size() > sizeof(TPMU_HA) || auth_size > sizeof(TPMU_HA) ||
      nonce_newer.size > sizeof(TPMU_HA) || nonce_older.size > sizeof(TPMU_HA)) {
    throw Error(Failure::internal, "session HMAC input too long");
  }
  while (auth_size > 0 && auth.buffer[auth_size - 1] == 0) --auth_size;

  Wiped<std::array<std::uint8_t, 2 * sizeof(TPMU_HA)>> key;
  std::copy(session_key.begin(), session_key.end(), key->begin());
  std::copy(auth.buffer, auth.buffer + auth_size, key->begin() + session_key.size());
  const std::size_t key_size = session_key.size() + auth_size;

  char digest_name[] = "SHA256";
  const OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest_name, 0),
      OSSL_PARAM_construct_end()};
  const std::unique_ptr<EVP_MAC_CTX, MacCtxFree> ctx(EVP_MAC_CTX_new(fetched_->hmac.get()));
  // key->data() is never null, so an empty key (no session key, an authValue
  // of zeros) is still a key to OpenSSL, not "keep the previous one".
  const std::uint8_t attribute = attributes;
  Sha256Digest out{};
  std::size_t size = 0;
  if (!ctx || EVP_MAC_init(ctx.get(), key->data(), key_size, params) != 1 ||
      EVP_MAC_update(ctx.get(), p_hash.data(), p_hash.size()) != 1 ||
      EVP_MAC_update(ctx.get(), nonce_newer.buffer, nonce_newer.size) != 1 ||
      EVP_MAC_update(ctx.get(), nonce_older.buffer, nonce_older.size) != 1 ||
      EVP_MAC_update(ctx.get(), &attribute, 1) != 1 ||
      EVP_MAC_final(ctx.get(), out.data(), &size, out.size()) != 1 || size != out.size()) {
    crypto_failed("HMAC");
  }
  return out;
}

}  // namespace m2mvault::hsm::tpm2
