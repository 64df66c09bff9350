#include "hsm/spki.h"

#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/x509.h>

#include <string>

#include "hsm/error.h"
#include "hsm/pkcs11/openssl_ptr.h"

namespace m2mvault::hsm {
namespace {

using pkcs11::BignumPtr;
using pkcs11::EvpPkeyCtxPtr;
using pkcs11::EvpPkeyPtr;
using pkcs11::ParamBldPtr;
using pkcs11::ParamPtr;

[[noreturn]] void openssl_failed(const char* what) {
  throw Error(Failure::internal, std::string(what) + " failed");
}

// `object` in DER through its OpenSSL i2d_ function (`name`, for errors):
// once for the size, once for the bytes.
template <typename T>
Bytes to_der(int (*i2d)(const T*, unsigned char**), const T* object, const char* name) {
  const int size = i2d(object, nullptr);
  if (size <= 0) openssl_failed(name);
  Bytes der(static_cast<std::size_t>(size));
  unsigned char* out = der.data();
  if (i2d(object, &out) != size) openssl_failed(name);
  return der;
}

}  // namespace

Bytes spki_from_params(const char* key_type, const OSSL_PARAM* params, const char* what) {
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, key_type, nullptr));
  EVP_PKEY* raw = nullptr;
  if (!ctx || EVP_PKEY_fromdata_init(ctx.get()) <= 0 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, const_cast<OSSL_PARAM*>(params)) <=
          0) {
    throw Error(Failure::internal, what);
  }
  const EvpPkeyPtr pkey(raw);
  return to_der(i2d_PUBKEY, pkey.get(), "i2d_PUBKEY");
}

Bytes p256_spki(std::span<const std::uint8_t> point) {
  ParamBldPtr build(OSSL_PARAM_BLD_new());
  if (!build ||
      !OSSL_PARAM_BLD_push_utf8_string(build.get(), OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) ||
      !OSSL_PARAM_BLD_push_octet_string(build.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(),
                                        point.size())) {
    openssl_failed("OSSL_PARAM_BLD_push");
  }
  const ParamPtr params(OSSL_PARAM_BLD_to_param(build.get()));
  if (!params) openssl_failed("OSSL_PARAM_BLD_to_param");
  return spki_from_params("EC", params.get(), "public key is not a valid P-256 point");
}

Bytes ecdsa_der(std::span<const std::uint8_t> r, std::span<const std::uint8_t> s) {
  using EcdsaSigPtr = std::unique_ptr<ECDSA_SIG, pkcs11::OpenSslDeleter<ECDSA_SIG_free>>;
  BignumPtr r_bn(BN_bin2bn(r.data(), static_cast<int>(r.size()), nullptr));
  BignumPtr s_bn(BN_bin2bn(s.data(), static_cast<int>(s.size()), nullptr));
  EcdsaSigPtr sig(ECDSA_SIG_new());
  if (!r_bn || !s_bn || !sig) openssl_failed("BN_bin2bn");
  if (ECDSA_SIG_set0(sig.get(), r_bn.get(), s_bn.get()) != 1) openssl_failed("ECDSA_SIG_set0");
  (void)r_bn.release();  // owned by sig now
  (void)s_bn.release();
  return to_der(i2d_ECDSA_SIG, sig.get(), "i2d_ECDSA_SIG");
}

}  // namespace m2mvault::hsm
