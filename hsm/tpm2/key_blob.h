// The byte string the caller keeps for each TPM object (in the catalog):
//
//   "m2t1" | auth value (32 bytes) | TPM2B_PUBLIC | TPM2B_PRIVATE
//
// TPM2B_* in the TPM's own marshalling (big-endian size, then the
// structure). The private part is encrypted and integrity-protected under
// the vault's primary key, so only this TPM can load it. The auth value is
// the object's own random authorization: whoever holds the blob *and* can
// send commands to this TPM can use the key, so the blob is as confidential
// as the catalog that stores it (docs/TPM2.md, "Auth values").
#pragma once

#include <tss2/tss2_tpm2_types.h>

#include <array>
#include <cstdint>
#include <span>

#include "hsm/secure_element.h"
#include "hsm/tpm2/tss.h"

namespace m2mvault::hsm::tpm2 {

// What an object can do, read from its public area (never from a flag the
// caller could edit: the TPM enforces the same attributes).
enum class ObjectKind {
  hmac_key,     // keyedHash + sign: TPM2_HMAC only (Ke)
  sealed_data,  // keyedHash, neither sign nor decrypt: TPM2_Unseal only (PSK kinds)
  signing_key,  // ECC P-256 + sign: TPM2_Sign only
};

const char* to_string(ObjectKind kind) noexcept;

inline constexpr std::size_t kAuthSize = 32;
using BlobDigest = std::array<std::uint8_t, 32>;

// A parsed blob. The auth value is wiped when it goes.
struct KeyBlob {
  TPM2B_PUBLIC public_area{};
  TPM2B_PRIVATE private_area{};
  Wiped<TPM2B_AUTH> auth;
  ObjectKind kind = ObjectKind::sealed_data;
  BlobDigest digest{};  // SHA-256 of the whole blob: names it in the object cache
};

// Parses and checks a blob. Throws Error(invalid_argument) for anything that
// is not a whole blob of one of the three kinds. No TPM involved.
void parse_blob(std::span<const std::uint8_t> blob, KeyBlob& out);

Bytes serialize_blob(const TPM2B_AUTH& auth, const TPM2B_PUBLIC& public_area,
                     const TPM2B_PRIVATE& private_area);

// The kind of a public area; throws Error(invalid_argument) for any other object.
ObjectKind kind_of(const TPMT_PUBLIC& area);

// The TPM name of a public area: nameAlg (2 bytes) || H(TPMT_PUBLIC).
Bytes object_name(const TPMT_PUBLIC& area);

}  // namespace m2mvault::hsm::tpm2
