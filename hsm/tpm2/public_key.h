// Conversions from TPM structures to what X.509 and TLS carry.
#pragma once

#include <tss2/tss2_tpm2_types.h>

#include "hsm/secure_element.h"

namespace m2mvault::hsm::tpm2 {

// The DER SubjectPublicKeyInfo of an ECC P-256 public area.
Bytes ecc_spki(const TPMT_PUBLIC& area);

// A TPM ECDSA signature (r, s) as DER ECDSA-Sig-Value.
Bytes ecdsa_der(const TPMS_SIGNATURE_ECC& signature);

}  // namespace m2mvault::hsm::tpm2
