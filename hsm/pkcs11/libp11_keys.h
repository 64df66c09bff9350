// Signing keys reached through libp11, which turns a token private key into
// an EVP_PKEY whose operations run in the token (DESIGN.md, "Backends").
//
// libp11 quirks this file lives with:
//  - one PKCS11_CTX per module for the whole process, never unloaded:
//    PKCS11_CTX_unload calls C_Finalize on the module the backend shares;
//  - 0.4.12 finds keys only by enumerating the token, and needs the
//    public-key object beside the private key to build the EVP_PKEY.
#pragma once

#include <openssl/evp.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>

#include "hsm/secure_buffer.h"
#include "hsm/secure_element.h"

namespace m2mvault::hsm::pkcs11 {

class Libp11Keys {
 public:
  // `pin` logs libp11 in to the vault's token and to tokens of adopted keys.
  Libp11Keys(std::filesystem::path module, std::string vault_token_label, SecureBuffer pin);

  // The EVP_PKEY of the private key `ref` names, cached per key. Throws
  // Error(not_found) when the token or key does not exist.
  std::shared_ptr<EVP_PKEY> private_key(const TokenKeyRef& ref);

  // Drops cached keys with this CKA_ID (after the objects were destroyed).
  void forget(std::span<const std::uint8_t> object_id);

 private:
  std::string token_of(const TokenKeyRef& ref) const;

  std::filesystem::path module_;
  std::string vault_token_label_;
  SecureBuffer pin_;
  std::mutex mutex_;
  std::map<std::string, std::shared_ptr<EVP_PKEY>> cache_;
};

// Signs `digest` with `key` through EVP_PKEY_sign: ECDSA (DER signature),
// RSA PKCS#1 v1.5 or PSS (salt = digest length) with the digest named by its size.
Bytes sign_digest_with(EVP_PKEY* key, SignatureScheme scheme, std::span<const std::uint8_t> digest);

}  // namespace m2mvault::hsm::pkcs11
