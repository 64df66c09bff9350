// The m2mvault OpenSSL 3 provider: entry point, algorithm tables, errors.
#include "engine/provider/provider.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/params.h>
#include <openssl/prov_ssl.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#include "engine/provider/decoder.h"
#include "engine/provider/keymgmt.h"
#include "engine/provider/signature.h"
#include "engine/provider/store.h"

namespace m2mvault::provider {
namespace {

constexpr const char* kProviderName = "m2mvault";
constexpr const char* kVersion = "0.1.0";
// The key in the provider's openssl.cnf section that names the daemon socket.
constexpr const char* kSocketParam = "socket";

const OSSL_ALGORITHM kKeymgmt[] = {
    {"EC:id-ecPublicKey:1.2.840.10045.2.1", "provider=m2mvault",
     KeymgmtFunctions<KeyType::ec>::functions, "m2mvault EC keys (vault and software)"},
    {"RSA:rsaEncryption:1.2.840.113549.1.1.1", "provider=m2mvault",
     KeymgmtFunctions<KeyType::rsa>::functions, "m2mvault RSA keys (vault and software)"},
    {nullptr, nullptr, nullptr, nullptr}};

const OSSL_ALGORITHM kSignature[] = {
    {"ECDSA", "provider=m2mvault", SignatureFunctions<KeyType::ec>::functions,
     "ECDSA, vault keys sign in m2mvaultd"},
    {"RSA:rsaEncryption:1.2.840.113549.1.1.1", "provider=m2mvault",
     SignatureFunctions<KeyType::rsa>::functions,
     "RSA PKCS#1 v1.5 and PSS, vault keys sign in m2mvaultd"},
    {nullptr, nullptr, nullptr, nullptr}};

const OSSL_ALGORITHM kStore[] = {
    {"m2mvault", "provider=m2mvault", kStoreFunctions, "m2mvault:<key name> URIs"},
    {nullptr, nullptr, nullptr, nullptr}};

const OSSL_ALGORITHM kDecoder[] = {
    {"EC", "provider=m2mvault,input=der,structure=PrivateKeyInfo", kEcKeyReferenceDecoderFunctions,
     "m2mvault key reference to an EC vault key"},
    {"RSA", "provider=m2mvault,input=der,structure=PrivateKeyInfo",
     kRsaKeyReferenceDecoderFunctions, "m2mvault key reference to an RSA vault key"},
    {nullptr, nullptr, nullptr, nullptr}};

const OSSL_ITEM kReasonStrings[] = {
    {kDaemonUnreachable, const_cast<char*>("daemon not reachable")},
    {kDenied, const_cast<char*>("denied by the vault policy")},
    {kKeyNotFound, const_cast<char*>("key not found")},
    {kUnsupported, const_cast<char*>("not supported by the vault")},
    {kDaemonError, const_cast<char*>("m2mvaultd error")},
    {kBadKeyReference, const_cast<char*>("bad key reference")},
    {kSoftwareFailure, const_cast<char*>("software key operation failed")},
    {kNotAVaultKey, const_cast<char*>("not a vault key")},
    {0, nullptr}};

const OSSL_PARAM kGettableParams[] = {OSSL_PARAM_utf8_ptr(OSSL_PROV_PARAM_NAME, nullptr, 0),
                                      OSSL_PARAM_utf8_ptr(OSSL_PROV_PARAM_VERSION, nullptr, 0),
                                      OSSL_PARAM_utf8_ptr(OSSL_PROV_PARAM_BUILDINFO, nullptr, 0),
                                      OSSL_PARAM_int(OSSL_PROV_PARAM_STATUS, nullptr),
                                      OSSL_PARAM_END};

// TLS-GROUP capabilities of the EC groups. libssl offers a group only when the
// provider announcing it is the one whose "EC" keymgmt a fetch returns: once
// ours is preferred, the default provider's announcements no longer count,
// so we announce the groups our keymgmt generates (in the software context).
struct TlsGroup {
  const char* name;
  const char* internal_name;
  unsigned int id;
  unsigned int security_bits;
};

constexpr TlsGroup kTlsGroups[] = {
    {"secp256r1", "prime256v1", 23, 128},
    {"P-256", "prime256v1", 23, 128},
    {"secp384r1", "secp384r1", 24, 192},
    {"P-384", "secp384r1", 24, 192},
    {"secp521r1", "secp521r1", 25, 256},
    {"P-521", "secp521r1", 25, 256},
    {"brainpoolP256r1", "brainpoolP256r1", 26, 128},
    {"brainpoolP384r1", "brainpoolP384r1", 27, 192},
    {"brainpoolP512r1", "brainpoolP512r1", 28, 256},
};

int get_capabilities(void*, const char* capability, OSSL_CALLBACK* cb, void* arg) {
  if (OPENSSL_strcasecmp(capability, "TLS-GROUP") != 0) return 0;
  for (const TlsGroup& group : kTlsGroups) {
    unsigned int id = group.id;
    unsigned int bits = group.security_bits;
    int min_tls = TLS1_VERSION;
    int max_tls = 0;
    int min_dtls = DTLS1_VERSION;
    int max_dtls = 0;
    const OSSL_PARAM params[] = {
        OSSL_PARAM_utf8_string(OSSL_CAPABILITY_TLS_GROUP_NAME, const_cast<char*>(group.name),
                               std::strlen(group.name)),
        OSSL_PARAM_utf8_string(OSSL_CAPABILITY_TLS_GROUP_NAME_INTERNAL,
                               const_cast<char*>(group.internal_name),
                               std::strlen(group.internal_name)),
        OSSL_PARAM_utf8_string(OSSL_CAPABILITY_TLS_GROUP_ALG, const_cast<char*>("EC"), 2),
        OSSL_PARAM_uint(OSSL_CAPABILITY_TLS_GROUP_ID, &id),
        OSSL_PARAM_uint(OSSL_CAPABILITY_TLS_GROUP_SECURITY_BITS, &bits),
        OSSL_PARAM_int(OSSL_CAPABILITY_TLS_GROUP_MIN_TLS, &min_tls),
        OSSL_PARAM_int(OSSL_CAPABILITY_TLS_GROUP_MAX_TLS, &max_tls),
        OSSL_PARAM_int(OSSL_CAPABILITY_TLS_GROUP_MIN_DTLS, &min_dtls),
        OSSL_PARAM_int(OSSL_CAPABILITY_TLS_GROUP_MAX_DTLS, &max_dtls),
        OSSL_PARAM_END};
    if (cb(params, arg) != 1) return 0;
  }
  return 1;
}

const OSSL_ALGORITHM* query_operation(void*, int operation_id, int* no_cache) {
  *no_cache = 0;
  switch (operation_id) {
    case OSSL_OP_KEYMGMT:
      return kKeymgmt;
    case OSSL_OP_SIGNATURE:
      return kSignature;
    case OSSL_OP_STORE:
      return kStore;
    case OSSL_OP_DECODER:
      return kDecoder;
    default:
      return nullptr;
  }
}

const OSSL_PARAM* gettable_params(void*) {
  return kGettableParams;
}

int get_params(void*, OSSL_PARAM params[]) {
  OSSL_PARAM* p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_NAME);
  if (p != nullptr && OSSL_PARAM_set_utf8_ptr(p, kProviderName) != 1) return 0;
  p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_VERSION);
  if (p != nullptr && OSSL_PARAM_set_utf8_ptr(p, kVersion) != 1) return 0;
  p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_BUILDINFO);
  if (p != nullptr && OSSL_PARAM_set_utf8_ptr(p, kVersion) != 1) return 0;
  p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_STATUS);
  if (p != nullptr && OSSL_PARAM_set_int(p, 1) != 1) return 0;
  return 1;
}

const OSSL_ITEM* get_reason_strings(void*) {
  return kReasonStrings;
}

void teardown(void* provctx) {
  std::unique_ptr<ProviderContext> owned(static_cast<ProviderContext*>(provctx));
}

const OSSL_DISPATCH kProviderFunctions[] = {
    {OSSL_FUNC_PROVIDER_TEARDOWN, reinterpret_cast<void (*)()>(teardown)},
    {OSSL_FUNC_PROVIDER_GETTABLE_PARAMS, reinterpret_cast<void (*)()>(gettable_params)},
    {OSSL_FUNC_PROVIDER_GET_PARAMS, reinterpret_cast<void (*)()>(get_params)},
    {OSSL_FUNC_PROVIDER_QUERY_OPERATION, reinterpret_cast<void (*)()>(query_operation)},
    {OSSL_FUNC_PROVIDER_GET_REASON_STRINGS, reinterpret_cast<void (*)()>(get_reason_strings)},
    {OSSL_FUNC_PROVIDER_GET_CAPABILITIES, reinterpret_cast<void (*)()>(get_capabilities)},
    {0, nullptr}};

// The daemon socket: the provider's openssl.cnf section (`socket = /path`;
// nginx workers clear the environment), else $M2MVAULT_SOCKET, else the
// default path.
std::filesystem::path socket_path(const OSSL_CORE_HANDLE* handle,
                                  OSSL_FUNC_core_get_params_fn* core_get_params) {
  if (core_get_params != nullptr) {
    char* configured = nullptr;
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_ptr(kSocketParam, &configured, 0),
                           OSSL_PARAM_construct_end()};
    if (core_get_params(handle, params) == 1 && configured != nullptr && *configured != '\0') {
      return configured;
    }
  }
  return api::default_socket_path();
}

bool start_software_context(ProviderContext& provider) {
  provider.software.reset(OSSL_LIB_CTX_new());
  if (!provider.software) return false;
  provider.software_default.reset(OSSL_PROVIDER_load(provider.software.get(), "default"));
  if (!provider.software_default) return false;
  provider.software_ec.reset(EVP_KEYMGMT_fetch(provider.software.get(), "EC", nullptr));
  provider.software_rsa.reset(EVP_KEYMGMT_fetch(provider.software.get(), "RSA", nullptr));
  provider.software_ecdsa.reset(EVP_SIGNATURE_fetch(provider.software.get(), "ECDSA", nullptr));
  provider.software_rsa_signature.reset(
      EVP_SIGNATURE_fetch(provider.software.get(), "RSA", nullptr));
  return provider.software_ec && provider.software_rsa && provider.software_ecdsa &&
         provider.software_rsa_signature;
}

}  // namespace

void debug_log(const char* format, ...) {
  static const bool enabled = std::getenv("M2MVAULT_PROVIDER_DEBUG") != nullptr;
  if (!enabled) return;
  std::fputs("m2mvault provider: ", stderr);
  va_list args;
  va_start(args, format);
  std::vfprintf(stderr, format, args);
  va_end(args);
  std::fputc('\n', stderr);
}

void raise_error(const ProviderContext& provider, Reason reason, const char* format, ...) {
  if (provider.core_new_error == nullptr || provider.core_vset_error == nullptr) return;
  provider.core_new_error(provider.handle);
  if (provider.core_set_error_debug != nullptr) {
    provider.core_set_error_debug(provider.handle, nullptr, 0, nullptr);
  }
  va_list args;
  va_start(args, format);
  provider.core_vset_error(provider.handle, static_cast<uint32_t>(reason), format, args);
  va_end(args);
}

void raise_daemon_error(const ProviderContext& provider, const Error& error,
                        const std::string& key_name) {
  const std::string socket = provider.daemon->socket_path().string();
  switch (error.code()) {
    case ErrorCode::backend_unavailable:
      if (dynamic_cast<const DaemonUnavailable*>(&error) != nullptr) {
        raise_error(provider, kDaemonUnreachable, "m2mvaultd (%s) is unavailable: %s",
                    socket.c_str(), error.what());
      } else {
        raise_error(provider, kDaemonUnreachable, "daemon not reachable at %s: %s", socket.c_str(),
                    error.what());
      }
      return;
    case ErrorCode::denied:
      raise_error(provider, kDenied, "denied: %s", error.what());
      return;
    case ErrorCode::not_found:
      raise_error(provider, kKeyNotFound, "key not found: %s", key_name.c_str());
      return;
    case ErrorCode::unsupported:
    case ErrorCode::invalid_argument:
      raise_error(provider, kUnsupported, "m2mvaultd (%s) cannot do this with key %s: %s",
                  socket.c_str(), key_name.c_str(), error.what());
      return;
    default:
      raise_error(provider, kDaemonError, "m2mvaultd (%s) failed with key %s: %s: %s",
                  socket.c_str(), key_name.c_str(), std::string(to_string(error.code())).c_str(),
                  error.what());
      return;
  }
}

}  // namespace m2mvault::provider

using m2mvault::provider::ProviderContext;

extern "C" __attribute__((visibility("default"))) int OSSL_provider_init(
    const OSSL_CORE_HANDLE* handle, const OSSL_DISPATCH* in, const OSSL_DISPATCH** out,
    void** provctx) {
  std::unique_ptr<ProviderContext> provider;
  try {
    provider = std::make_unique<ProviderContext>();
  } catch (const std::bad_alloc&) {
    return 0;
  }
  provider->handle = handle;
  OSSL_FUNC_core_get_params_fn* core_get_params = nullptr;
  for (; in->function_id != 0; ++in) {
    switch (in->function_id) {
      case OSSL_FUNC_CORE_GET_PARAMS:
        core_get_params = OSSL_FUNC_core_get_params(in);
        break;
      case OSSL_FUNC_CORE_NEW_ERROR:
        provider->core_new_error = OSSL_FUNC_core_new_error(in);
        break;
      case OSSL_FUNC_CORE_SET_ERROR_DEBUG:
        provider->core_set_error_debug = OSSL_FUNC_core_set_error_debug(in);
        break;
      case OSSL_FUNC_CORE_VSET_ERROR:
        provider->core_vset_error = OSSL_FUNC_core_vset_error(in);
        break;
      case OSSL_FUNC_BIO_READ_EX:
        provider->core_bio_read_ex = OSSL_FUNC_BIO_read_ex(in);
        break;
      default:
        break;
    }
  }
  try {
    provider->daemon = std::make_unique<m2mvault::provider::DaemonLink>(
        m2mvault::provider::socket_path(handle, core_get_params));
  } catch (const std::exception&) {
    return 0;
  }
  if (!m2mvault::provider::start_software_context(*provider)) return 0;
  *out = m2mvault::provider::kProviderFunctions;
  *provctx = provider.release();
  return 1;
}
