#include "hsm/tpm2/templates.h"

#include <cstring>
#include <string_view>

namespace m2mvault::hsm::tpm2 {
namespace {

constexpr TPMA_OBJECT kChildAttributes =
    TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA;

// The primary's unique.ecc.x: the vault's label, zero-padded to 32 bytes.
constexpr std::string_view kPrimaryLabel = "m2mvault primary storage key v1";

TPM2B_PUBLIC keyed_hash(TPMA_OBJECT attributes, TPMI_ALG_KEYEDHASH_SCHEME scheme) {
  TPM2B_PUBLIC out{};
  TPMT_PUBLIC& area = out.publicArea;
  area.type = TPM2_ALG_KEYEDHASH;
  area.nameAlg = TPM2_ALG_SHA256;
  area.objectAttributes = attributes;
  area.parameters.keyedHashDetail.scheme.scheme = scheme;
  if (scheme == TPM2_ALG_HMAC) {
    area.parameters.keyedHashDetail.scheme.details.hmac.hashAlg = TPM2_ALG_SHA256;
  }
  return out;
}

}  // namespace

TPM2B_PUBLIC primary_template() {
  TPM2B_PUBLIC out{};
  TPMT_PUBLIC& area = out.publicArea;
  area.type = TPM2_ALG_ECC;
  area.nameAlg = TPM2_ALG_SHA256;
  area.objectAttributes = TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT | TPMA_OBJECT_FIXEDTPM |
                          TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
                          TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA;
  TPMS_ECC_PARMS& ecc = area.parameters.eccDetail;
  ecc.symmetric.algorithm = TPM2_ALG_AES;
  ecc.symmetric.keyBits.aes = 128;
  ecc.symmetric.mode.aes = TPM2_ALG_CFB;
  ecc.scheme.scheme = TPM2_ALG_NULL;
  ecc.curveID = TPM2_ECC_NIST_P256;
  ecc.kdf.scheme = TPM2_ALG_NULL;
  area.unique.ecc.x.size = 32;
  std::memcpy(area.unique.ecc.x.buffer, kPrimaryLabel.data(), kPrimaryLabel.size());
  area.unique.ecc.y.size = 32;
  return out;
}

TPM2B_PUBLIC sealed_data_template() {
  return keyed_hash(kChildAttributes, TPM2_ALG_NULL);
}

TPM2B_PUBLIC hmac_key_template(bool generated) {
  TPMA_OBJECT attributes = kChildAttributes | TPMA_OBJECT_SIGN_ENCRYPT;
  if (generated) attributes |= TPMA_OBJECT_SENSITIVEDATAORIGIN;
  return keyed_hash(attributes, TPM2_ALG_HMAC);
}

TPM2B_PUBLIC ecc_signing_template() {
  TPM2B_PUBLIC out{};
  TPMT_PUBLIC& area = out.publicArea;
  area.type = TPM2_ALG_ECC;
  area.nameAlg = TPM2_ALG_SHA256;
  area.objectAttributes =
      kChildAttributes | TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_SENSITIVEDATAORIGIN;
  TPMS_ECC_PARMS& ecc = area.parameters.eccDetail;
  ecc.symmetric.algorithm = TPM2_ALG_NULL;
  ecc.scheme.scheme = TPM2_ALG_NULL;
  ecc.curveID = TPM2_ECC_NIST_P256;
  ecc.kdf.scheme = TPM2_ALG_NULL;
  return out;
}

}  // namespace m2mvault::hsm::tpm2
