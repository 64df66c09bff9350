#include "hsm/tpm2/key_blob.h"

#include <openssl/evp.h>
#include <tss2/tss2_mu.h>

#include <algorithm>
#include <cstring>

namespace m2mvault::hsm::tpm2 {
namespace {

constexpr std::array<std::uint8_t, 4> kMagic{'m', '2', 't', '1'};

[[noreturn]] void malformed(const char* what) {
  throw Error(Failure::invalid_argument, std::string("not a TPM key blob: ") + what);
}

BlobDigest sha256(std::span<const std::uint8_t> data) {
  BlobDigest out{};
  unsigned int size = 0;
  if (EVP_Digest(data.data(), data.size(), out.data(), &size, EVP_sha256(), nullptr) != 1) {
    throw Error(Failure::internal, "SHA-256 failed");
  }
  return out;
}

}  // namespace

const char* to_string(ObjectKind kind) noexcept {
  switch (kind) {
    case ObjectKind::hmac_key:
      return "HMAC key";
    case ObjectKind::sealed_data:
      return "sealed data";
    case ObjectKind::signing_key:
      return "signing key";
  }
  return "?";
}

ObjectKind kind_of(const TPMT_PUBLIC& area) {
  const TPMA_OBJECT attributes = area.objectAttributes;
  const bool sign = (attributes & TPMA_OBJECT_SIGN_ENCRYPT) != 0;
  const bool decrypt = (attributes & TPMA_OBJECT_DECRYPT) != 0;
  if (area.nameAlg != TPM2_ALG_SHA256) malformed("name algorithm is not SHA-256");
  if (area.type == TPM2_ALG_KEYEDHASH && !decrypt) {
    return sign ? ObjectKind::hmac_key : ObjectKind::sealed_data;
  }
  if (area.type == TPM2_ALG_ECC && sign && !decrypt &&
      area.parameters.eccDetail.curveID == TPM2_ECC_NIST_P256) {
    return ObjectKind::signing_key;
  }
  malformed("object is neither an HMAC key, sealed data nor a P-256 signing key");
}

void parse_blob(std::span<const std::uint8_t> blob, KeyBlob& out) {
  if (blob.size() < kMagic.size() + kAuthSize ||
      !std::equal(kMagic.begin(), kMagic.end(), blob.begin())) {
    malformed("bad header");
  }
  std::size_t offset = kMagic.size();
  out.auth->size = kAuthSize;
  std::memcpy(out.auth->buffer, blob.data() + offset, kAuthSize);
  offset += kAuthSize;
  if (Tss2_MU_TPM2B_PUBLIC_Unmarshal(blob.data(), blob.size(), &offset, &out.public_area) !=
      TSS2_RC_SUCCESS) {
    malformed("bad public area");
  }
  if (Tss2_MU_TPM2B_PRIVATE_Unmarshal(blob.data(), blob.size(), &offset, &out.private_area) !=
      TSS2_RC_SUCCESS) {
    malformed("bad private area");
  }
  if (offset != blob.size()) malformed("trailing bytes");
  out.kind = kind_of(out.public_area.publicArea);
  out.digest = sha256(blob);
}

Bytes serialize_blob(const TPM2B_AUTH& auth, const TPM2B_PUBLIC& public_area,
                     const TPM2B_PRIVATE& private_area) {
  if (auth.size != kAuthSize) throw Error(Failure::internal, "auth value is not 32 bytes");
  Bytes out(kMagic.size() + kAuthSize + sizeof(TPM2B_PUBLIC) + sizeof(TPM2B_PRIVATE));
  std::copy(kMagic.begin(), kMagic.end(), out.begin());
  std::memcpy(out.data() + kMagic.size(), auth.buffer, kAuthSize);
  std::size_t offset = kMagic.size() + kAuthSize;
  check(Tss2_MU_TPM2B_PUBLIC_Marshal(&public_area, out.data(), out.size(), &offset),
        "Tss2_MU_TPM2B_PUBLIC_Marshal");
  check(Tss2_MU_TPM2B_PRIVATE_Marshal(&private_area, out.data(), out.size(), &offset),
        "Tss2_MU_TPM2B_PRIVATE_Marshal");
  out.resize(offset);
  return out;
}

Bytes object_name(const TPMT_PUBLIC& area) {
  std::array<std::uint8_t, sizeof(TPMT_PUBLIC)> marshalled{};
  std::size_t size = 0;
  check(Tss2_MU_TPMT_PUBLIC_Marshal(&area, marshalled.data(), marshalled.size(), &size),
        "Tss2_MU_TPMT_PUBLIC_Marshal");
  const BlobDigest digest = sha256(std::span(marshalled.data(), size));
  Bytes name(2 + digest.size());
  name[0] = static_cast<std::uint8_t>(TPM2_ALG_SHA256 >> 8);
  name[1] = static_cast<std::uint8_t>(TPM2_ALG_SHA256 & 0xFF);
  std::copy(digest.begin(), digest.end(), name.begin() + 2);
  return name;
}

}  // namespace m2mvault::hsm::tpm2
