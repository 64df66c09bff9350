// The provider context shared by every operation of the m2mvault provider:
// the core's up-calls, the software library context that handles ordinary
// (non-vault) keys, and the link to the daemon.
#pragma once

#include <openssl/core.h>
#include <openssl/core_dispatch.h>

#include <filesystem>
#include <memory>
#include <string>

#include "api/error.h"
#include "engine/provider/connection.h"
#include "engine/provider/key_reference.h"
#include "engine/provider/openssl_owners.h"

namespace m2mvault::provider {

// Reason codes of the provider's OpenSSL errors (strings in provider.cpp).
enum Reason : int {
  kDaemonUnreachable = 1,
  kDenied = 2,
  kKeyNotFound = 3,
  kUnsupported = 4,
  kDaemonError = 5,
  kBadKeyReference = 6,
  kSoftwareFailure = 7,
  kNotAVaultKey = 8,
};

struct ProviderContext {
  const OSSL_CORE_HANDLE* handle = nullptr;
  OSSL_FUNC_core_new_error_fn* core_new_error = nullptr;
  OSSL_FUNC_core_set_error_debug_fn* core_set_error_debug = nullptr;
  OSSL_FUNC_core_vset_error_fn* core_vset_error = nullptr;
  OSSL_FUNC_BIO_read_ex_fn* core_bio_read_ex = nullptr;

  // Ordinary keys (ephemeral ECDHE keys, peers' keys, file keys) live here,
  // in the default provider of a library context of our own: whatever is not
  // a vault key is exactly as fast as without m2mvault.
  LibCtxPtr software;
  ProviderPtr software_default;
  EvpKeymgmtPtr software_ec;
  EvpKeymgmtPtr software_rsa;
  EvpSignaturePtr software_ecdsa;
  EvpSignaturePtr software_rsa_signature;

  std::unique_ptr<DaemonLink> daemon;

  OSSL_LIB_CTX* software_libctx() const { return software.get(); }
  EVP_KEYMGMT* software_keymgmt(KeyType type) const {
    return type == KeyType::ec ? software_ec.get() : software_rsa.get();
  }
};

// With $M2MVAULT_PROVIDER_DEBUG set, writes one line to stderr (what the
// provider is asked to do; never a key byte).
void debug_log(const char* format, ...) __attribute__((format(printf, 1, 2)));

// Raises an OpenSSL error in the provider's library, with a formatted message.
void raise_error(const ProviderContext& provider, Reason reason, const char* format, ...)
    __attribute__((format(printf, 3, 4)));

// Raises the OpenSSL error that says what a daemon failure means: "daemon not
// reachable at <socket>", "denied", "key not found: <name>", ...
void raise_daemon_error(const ProviderContext& provider, const Error& error,
                        const std::string& key_name);

}  // namespace m2mvault::provider
