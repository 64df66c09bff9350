// The SecureElement on a TPM 2.0 (docs/TPM2.md, "The backend"): every key is
// a TPM blob the catalog keeps (Tpm2), nothing persistent lives in the TPM.
//  - PSK kinds: sealed data objects (wrap = seal, unwrap = unseal; their
//    check values and any HMAC with them are computed from the unsealed
//    bytes, since a sealed object cannot HMAC).
//  - Ke: HMAC-key objects; create_token_secret() returns the blob.
//  - Signing keys: ECC P-256 objects; generate_signing_key() returns the
//    blob; private_key() is an EVP_PKEY whose ECDSA runs in TPM2_Sign.
//  - The audit key: an HMAC-key blob in a file of the state directory
//    (mode 0600); audit epochs as on PKCS#11.
//  - The audit checkpoint: in TPM NV (nv_checkpoint.h), an NV counter and a
//    record bound to it, so rolling back the state directory together with
//    the log does not roll it back. The only thing the vault keeps in the
//    TPM. A state directory from before it has the file
//    kLegacyAuditCheckpointFile: read while NV holds no checkpoint, removed
//    by the first store.
// Object ids name keys only; token_object_exists() is always false and
// list_vault_objects() empty, so reconciliation drops pending rows (their
// blob never reached the catalog, and no key was left in the TPM).
#pragma once

#include <filesystem>
#include <memory>

#include "hsm/secure_element.h"
#include "hsm/tpm2/nv_checkpoint.h"
#include "hsm/tpm2/tpm2.h"

namespace m2mvault::hsm::tpm2 {

// Files of the backend in the state directory.
inline constexpr const char* kAuditKeyFile = "tpm2-audit-key";
// Where the audit checkpoint was kept before it moved to NV.
inline constexpr const char* kLegacyAuditCheckpointFile = "tpm2-audit-checkpoint";

struct BackendConfig {
  Config tpm;
  // Where the audit key file lives (the daemon's state dir).
  std::filesystem::path state_dir;
  // The audit checkpoint's NV record index; its counter is the next handle.
  // Both in the owner range.
  std::uint32_t audit_nv_index = kDefaultAuditNvIndex;
};

// Connects to the TPM (Tpm2's constructor: startup, flush of leftovers when
// the TCTI is no resource manager, primary, salted session) and loads or
// creates the audit key. Throws Error(unavailable) when the TPM cannot be
// reached or the audit key file is unusable, Error(invalid_argument) for an
// audit_nv_index outside the owner range. Touches no NV index: the first
// store_audit_checkpoint() defines them.
std::unique_ptr<SecureElement> open(const BackendConfig& config);

}  // namespace m2mvault::hsm::tpm2
