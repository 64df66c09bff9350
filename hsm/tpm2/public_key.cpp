#include "hsm/tpm2/public_key.h"

#include <openssl/ecdsa.h>
#include <openssl/x509.h>

#include <algorithm>

#include "hsm/pkcs11/openssl_ptr.h"
#include "hsm/spki.h"

namespace m2mvault::hsm::tpm2 {
namespace {

using pkcs11::BignumPtr;
using EcdsaSigPtr = std::unique_ptr<ECDSA_SIG, pkcs11::OpenSslDeleter<ECDSA_SIG_free>>;

constexpr std::size_t kP256Bytes = 32;

[[noreturn]] void openssl_failed(const char* what) {
  throw Error(Failure::internal, std::string(what) + " failed");
}

// A coordinate, left-padded with zeros to the field size (a TPM may strip them).
void append_coordinate(Bytes& out, const TPM2B_ECC_PARAMETER& coordinate) {
  if (coordinate.size > kP256Bytes) {
    throw Error(Failure::invalid_argument, "ECC point coordinate longer than 32 bytes");
  }
  out.insert(out.end(), kP256Bytes - coordinate.size, 0);
  out.insert(out.end(), coordinate.buffer, coordinate.buffer + coordinate.size);
}

}  // namespace

Bytes ecc_spki(const TPMT_PUBLIC& area) {
  if (area.type != TPM2_ALG_ECC || area.parameters.eccDetail.curveID != TPM2_ECC_NIST_P256) {
    throw Error(Failure::unsupported, "public key is not ECC P-256");
  }
  Bytes point{0x04};  // uncompressed
  append_coordinate(point, area.unique.ecc.x);
  append_coordinate(point, area.unique.ecc.y);

  return p256_spki(point);
}

Bytes ecdsa_der(const TPMS_SIGNATURE_ECC& signature) {
  BignumPtr r(BN_bin2bn(signature.signatureR.buffer, signature.signatureR.size, nullptr));
  BignumPtr s(BN_bin2bn(signature.signatureS.buffer, signature.signatureS.size, nullptr));
  EcdsaSigPtr sig(ECDSA_SIG_new());
  if (!r || !s || !sig) openssl_failed("BN_bin2bn");
  if (ECDSA_SIG_set0(sig.get(), r.get(), s.get()) != 1) openssl_failed("ECDSA_SIG_set0");
  (void)r.release();  // owned by sig now
  (void)s.release();
  const int size = i2d_ECDSA_SIG(sig.get(), nullptr);
  if (size <= 0) openssl_failed("i2d_ECDSA_SIG");
  Bytes der(static_cast<std::size_t>(size));
  unsigned char* out = der.data();
  if (i2d_ECDSA_SIG(sig.get(), &out) != size) openssl_failed("i2d_ECDSA_SIG");
  return der;
}

}  // namespace m2mvault::hsm::tpm2
