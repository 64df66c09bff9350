// OpenSSL-side reference computations for the hsm tests.
#pragma once

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "hsm/secure_element.h"

namespace m2mvault::hsm::testing {

inline Bytes from_hex(const std::string& hex) {
  Bytes out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<std::uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

inline Bytes random_bytes(std::size_t size) {
  Bytes out(size);
  RAND_bytes(out.data(), static_cast<int>(size));
  return out;
}

inline Bytes text_bytes(const std::string& text) {
  return Bytes(text.begin(), text.end());
}

inline Hmac openssl_hmac(std::span<const std::uint8_t> key, std::span<const std::uint8_t> data) {
  Hmac out{};
  unsigned int size = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), data.data(), data.size(), out.data(),
       &size);
  return out;
}

inline Bytes sha256(std::span<const std::uint8_t> data) {
  Bytes out(32);
  unsigned int size = 0;
  EVP_Digest(data.data(), data.size(), out.data(), &size, EVP_sha256(), nullptr);
  return out;
}

struct PkeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;

inline Pkey parse_spki(std::span<const std::uint8_t> der) {
  const unsigned char* in = der.data();
  return Pkey(d2i_PUBKEY(nullptr, &in, static_cast<long>(der.size())));
}

// EVP_PKEY_verify of `signature` over `digest` (of `md`, SHA-256 unless
// given) with the public key.
inline bool verifies(EVP_PKEY* key, SignatureScheme scheme, std::span<const std::uint8_t> digest,
                     std::span<const std::uint8_t> signature, const EVP_MD* md = EVP_sha256()) {
  std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> ctx(EVP_PKEY_CTX_new(key, nullptr),
                                                                  EVP_PKEY_CTX_free);
  if (!ctx || EVP_PKEY_verify_init(ctx.get()) <= 0) return false;
  if (scheme != SignatureScheme::ecdsa) {
    const bool pss = scheme == SignatureScheme::rsa_pss;
    EVP_PKEY_CTX_set_rsa_padding(ctx.get(), pss ? RSA_PKCS1_PSS_PADDING : RSA_PKCS1_PADDING);
    EVP_PKEY_CTX_set_signature_md(ctx.get(), md);
    if (pss) EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx.get(), RSA_PSS_SALTLEN_DIGEST);
  }
  return EVP_PKEY_verify(ctx.get(), signature.data(), signature.size(), digest.data(),
                         digest.size()) == 1;
}

}  // namespace m2mvault::hsm::testing
