// The legacy EC_KEY_METHOD is the one way OpenSSL 3.0 lets a key's private
// operation be a callback without writing a provider (deprecated, still
// supported; libp11 does the same). This file alone is compiled with
// -Wno-deprecated-declarations.
#include "hsm/tpm2/evp_key.h"

#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cstring>

namespace m2mvault::hsm::tpm2 {
namespace {

// What a key's sign callback needs, in the EC_KEY's ex_data.
struct KeyContext {
  std::shared_ptr<Tpm2> tpm;
  Bytes blob;
};

void free_context(void* /*parent*/, void* ptr, CRYPTO_EX_DATA* /*ad*/, int /*idx*/, long /*argl*/,
                  void* /*argp*/) {
  std::unique_ptr<KeyContext> owned(static_cast<KeyContext*>(ptr));
}

// EC_KEY_dup copies ex_data: the copy gets its own context.
int dup_context(CRYPTO_EX_DATA* /*to*/, const CRYPTO_EX_DATA* /*from*/, void** from_d, int /*idx*/,
                long /*argl*/, void* /*argp*/) {
  auto* slot = static_cast<KeyContext**>(static_cast<void*>(from_d));
  if (*slot == nullptr) return 1;
  try {
    *slot = std::make_unique<KeyContext>(**slot).release();
    return 1;
  } catch (...) {
    *slot = nullptr;
    return 0;
  }
}

int context_index() {
  static const int index = EC_KEY_get_ex_new_index(0, nullptr, nullptr, dup_context, free_context);
  return index;
}

// The DER signature of `digest` by the TPM, or empty (error queued).
Bytes tpm_sign(const unsigned char* digest, int digest_length, EC_KEY* key) {
  const auto* context = static_cast<const KeyContext*>(EC_KEY_get_ex_data(key, context_index()));
  if (context == nullptr || digest_length < 0) {
    ERR_raise_data(ERR_LIB_EC, ERR_R_PASSED_INVALID_ARGUMENT, "not a TPM key");
    return {};
  }
  try {
    const Bytes normalized = p256_digest({digest, static_cast<std::size_t>(digest_length)});
    return context->tpm->sign_digest(context->blob, DigestAlgorithm::sha256, normalized);
  } catch (const std::exception& e) {
    // The message names the TPM call and return code, never key bytes.
    ERR_raise_data(ERR_LIB_EC, ERR_R_INTERNAL_ERROR, "TPM2_Sign: %s", e.what());
    return {};
  }
}

int sign(int /*type*/, const unsigned char* digest, int digest_length, unsigned char* signature,
         unsigned int* signature_length, const BIGNUM* /*kinv*/, const BIGNUM* /*r*/, EC_KEY* key) {
  const Bytes der = tpm_sign(digest, digest_length, key);
  if (der.empty()) return 0;
  if (der.size() > static_cast<std::size_t>(ECDSA_size(key))) {
    ERR_raise(ERR_LIB_EC, ERR_R_INTERNAL_ERROR);
    return 0;
  }
  std::memcpy(signature, der.data(), der.size());
  *signature_length = static_cast<unsigned int>(der.size());
  return 1;
}

ECDSA_SIG* sign_sig(const unsigned char* digest, int digest_length, const BIGNUM* /*kinv*/,
                    const BIGNUM* /*r*/, EC_KEY* key) {
  const Bytes der = tpm_sign(digest, digest_length, key);
  if (der.empty()) return nullptr;
  const unsigned char* p = der.data();
  return d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der.size()));
}

// The default EC method with signing replaced; made once, kept for the
// process (keys may outlive any owner we could give it).
const EC_KEY_METHOD* tpm_method() {
  static const EC_KEY_METHOD* method = [] {
    EC_KEY_METHOD* m = EC_KEY_METHOD_new(EC_KEY_OpenSSL());
    if (m != nullptr) EC_KEY_METHOD_set_sign(m, sign, nullptr, sign_sig);
    return m;
  }();
  return method;
}

struct EcKeyFree {
  void operator()(EC_KEY* key) const noexcept { EC_KEY_free(key); }
};

}  // namespace

Bytes p256_digest(std::span<const std::uint8_t> digest) {
  constexpr std::size_t kSize = 32;
  Bytes out(kSize, 0);
  if (digest.size() >= kSize) {
    std::copy_n(digest.begin(), kSize, out.begin());
  } else {
    std::copy(digest.begin(), digest.end(), out.end() - static_cast<std::ptrdiff_t>(digest.size()));
  }
  return out;
}

std::shared_ptr<EVP_PKEY> make_private_key(std::shared_ptr<Tpm2> tpm,
                                           std::span<const std::uint8_t> blob) {
  if (blob_kind(blob) != ObjectKind::signing_key)
    throw Error(Failure::invalid_argument, "the TPM blob is not a signing key");
  const Bytes spki = signing_public_key(blob);
  const unsigned char* p = spki.data();
  std::unique_ptr<EC_KEY, EcKeyFree> ec(d2i_EC_PUBKEY(nullptr, &p, static_cast<long>(spki.size())));
  const EC_KEY_METHOD* method = tpm_method();
  if (!ec || method == nullptr || EC_KEY_set_method(ec.get(), method) != 1)
    throw Error(Failure::internal, "cannot make an EC key for the TPM signing key");
  auto context =
      std::make_unique<KeyContext>(KeyContext{std::move(tpm), Bytes(blob.begin(), blob.end())});
  if (EC_KEY_set_ex_data(ec.get(), context_index(), context.get()) != 1)
    throw Error(Failure::internal, "cannot attach the TPM key to its EC key");
  context.release();  // owned by the EC_KEY now (free_context)
  std::shared_ptr<EVP_PKEY> pkey(EVP_PKEY_new(), EVP_PKEY_free);
  // With a method other than the default the EVP_PKEY is "foreign": OpenSSL
  // signs through the legacy EC_KEY method, never exporting it to a provider.
  if (!pkey || EVP_PKEY_assign_EC_KEY(pkey.get(), ec.get()) != 1)
    throw Error(Failure::internal, "cannot make an EVP_PKEY for the TPM signing key");
  ec.release();  // owned by the EVP_PKEY
  return pkey;
}

}  // namespace m2mvault::hsm::tpm2
