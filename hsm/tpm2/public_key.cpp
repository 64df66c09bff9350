#include "hsm/tpm2/public_key.h"

#include <algorithm>

#include "hsm/spki.h"

namespace m2mvault::hsm::tpm2 {
namespace {

constexpr std::size_t kP256Bytes = 32;

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
  return hsm::ecdsa_der({signature.signatureR.buffer, signature.signatureR.size},
                        {signature.signatureS.buffer, signature.signatureS.size});
}

}  // namespace m2mvault::hsm::tpm2
