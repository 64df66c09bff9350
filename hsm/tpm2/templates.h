// The public templates of the objects the vault makes in a TPM. Every object
// is a child of one primary storage key and carries its own auth value; none
// is duplicable (fixedTPM, fixedParent) and none counts towards dictionary-
// attack lockout (noDA: the auth values are 32 random bytes, and a tampered
// catalog must not be able to lock the whole TPM).
#pragma once

#include <tss2/tss2_tpm2_types.h>

namespace m2mvault::hsm::tpm2 {

// The primary storage key, re-created identically from the owner
// hierarchy's seed whenever it is needed: ECC P-256, restricted decrypt,
// AES-128-CFB for its children, and a unique field fixed to the vault's
// label, so it is the vault's own and not another application's SRK.
TPM2B_PUBLIC primary_template();

// A sealed data object (PSK kinds): keyedHash, neither sign nor decrypt,
// data supplied by the caller, readable only with TPM2_Unseal.
TPM2B_PUBLIC sealed_data_template();

// An HMAC-SHA-256 key (Ke): keyedHash with the sign attribute. The key is
// either supplied by the caller (`generated` false) or drawn by the TPM.
TPM2B_PUBLIC hmac_key_template(bool generated);

// An ECC P-256 signing key drawn by the TPM; scheme NULL, so each TPM2_Sign
// picks ECDSA with SHA-256 or SHA-384.
TPM2B_PUBLIC ecc_signing_template();

}  // namespace m2mvault::hsm::tpm2
