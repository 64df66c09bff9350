#include "hsm/pkcs11/public_key.h"

#include <openssl/asn1.h>
#include <openssl/core_names.h>
#include <openssl/x509.h>

#include <algorithm>

#include "hsm/pkcs11/ck_util.h"
#include "hsm/pkcs11/openssl_ptr.h"
#include "hsm/spki.h"

namespace m2mvault::hsm::pkcs11 {
namespace {

using OctetStringPtr = std::unique_ptr<ASN1_OCTET_STRING, OpenSslDeleter<ASN1_OCTET_STRING_free>>;

[[noreturn]] void openssl_failed(const char* what) {
  throw Error(Failure::internal, std::string(what) + " failed");
}

Bytes ec_spki(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object) {
  const auto params = get_bytes_attribute(fn, session, object, CKA_EC_PARAMS);
  if (!std::equal(params.begin(), params.end(), kP256Params.begin(), kP256Params.end())) {
    throw Error(Failure::unsupported, "EC key is not on curve P-256");
  }
  auto point = get_bytes_attribute(fn, session, object, CKA_EC_POINT);
  // PKCS#11 wants the point DER-wrapped in an OCTET STRING (SoftHSM2 does
  // so); some modules return it raw.
  const unsigned char* in = point.data();
  if (OctetStringPtr octets(d2i_ASN1_OCTET_STRING(nullptr, &in, static_cast<long>(point.size())));
      octets && in == point.data() + point.size()) {
    point.assign(ASN1_STRING_get0_data(octets.get()),
                 ASN1_STRING_get0_data(octets.get()) + ASN1_STRING_length(octets.get()));
  }
  return p256_spki(point);
}

Bytes rsa_spki(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object) {
  const auto modulus = get_bytes_attribute(fn, session, object, CKA_MODULUS);
  const auto exponent = get_bytes_attribute(fn, session, object, CKA_PUBLIC_EXPONENT);
  const BignumPtr n(BN_bin2bn(modulus.data(), static_cast<int>(modulus.size()), nullptr));
  const BignumPtr e(BN_bin2bn(exponent.data(), static_cast<int>(exponent.size()), nullptr));
  if (!n || !e) openssl_failed("BN_bin2bn");
  if (BN_num_bits(n.get()) != 2048) throw Error(Failure::unsupported, "RSA key is not 2048 bits");
  ParamBldPtr build(OSSL_PARAM_BLD_new());
  if (!build || !OSSL_PARAM_BLD_push_BN(build.get(), OSSL_PKEY_PARAM_RSA_N, n.get()) ||
      !OSSL_PARAM_BLD_push_BN(build.get(), OSSL_PKEY_PARAM_RSA_E, e.get())) {
    openssl_failed("OSSL_PARAM_BLD_push_BN");
  }
  const ParamPtr built(OSSL_PARAM_BLD_to_param(build.get()));
  if (!built) openssl_failed("OSSL_PARAM_BLD_to_param");
  return spki_from_params("RSA", built.get(), "token public key is not a valid key");
}

}  // namespace

PublicKey read_public_key(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session,
                          CK_OBJECT_HANDLE public_object) {
  switch (get_ulong_attribute(fn, session, public_object, CKA_KEY_TYPE)) {
    case CKK_EC:
      return {ec_spki(fn, session, public_object), SigningAlgorithm::ec_p256};
    case CKK_RSA:
      return {rsa_spki(fn, session, public_object), SigningAlgorithm::rsa_2048};
    default:
      throw Error(Failure::unsupported, "key is neither EC P-256 nor RSA");
  }
}

}  // namespace m2mvault::hsm::pkcs11
