#include "hsm/tpm2/tss.h"

#include <tss2/tss2_rc.h>

#include <cstdio>

namespace m2mvault::hsm::tpm2 {
namespace {

bool is_tpm_layer(TSS2_RC rc) {
  return (rc & TSS2_RC_LAYER_MASK) == TSS2_TPM_RC_LAYER;
}

}  // namespace

TSS2_RC tpm_error_number(TSS2_RC rc) {
  if (!is_tpm_layer(rc)) return rc;
  // Format one: bit 7 set, error number in bits 0-5, the index above them.
  if ((rc & TPM2_RC_FMT1) != 0) return rc & (TPM2_RC_FMT1 | 0x3FU);
  return rc & 0xFFFU;
}

std::string describe_rc(TSS2_RC rc) {
  char code[16];
  std::snprintf(code, sizeof code, "0x%08x", rc);
  const char* decoded = Tss2_RC_Decode(rc);
  return std::string(code) + " (" + (decoded ? decoded : "unknown") + ")";
}

std::string hex_handle(std::uint32_t handle) {
  char text[16];
  std::snprintf(text, sizeof text, "0x%08x", handle);
  return text;
}

bool is_lost_state(TSS2_RC rc) {
  if ((rc & TSS2_RC_LAYER_MASK) == TSS2_TCTI_RC_LAYER) return true;
  if (!is_tpm_layer(rc)) {
    // A dropped connection as ESAPI and SAPI pass it on.
    const TSS2_RC base = rc & 0xFFFFU;
    return base == TSS2_BASE_RC_NO_CONNECTION || base == TSS2_BASE_RC_IO_ERROR;
  }
  const TSS2_RC number = tpm_error_number(rc);
  if (number == TPM2_RC_INITIALIZE || number == TPM2_RC_REBOOT) return true;
  if (number >= TPM2_RC_REFERENCE_H0 && number <= TPM2_RC_REFERENCE_S6) return true;
  // TPM_RC_HANDLE for a handle (not a parameter): an object no longer loaded.
  return number == TPM2_RC_HANDLE && (rc & TPM2_RC_P) == 0 && (rc & TPM2_RC_S) == 0;
}

Failure failure_of(TSS2_RC rc) {
  if (!is_tpm_layer(rc)) {
    const TSS2_RC base = rc & 0xFFFFU;
    if ((rc & TSS2_RC_LAYER_MASK) == TSS2_TCTI_RC_LAYER || base == TSS2_BASE_RC_NO_CONNECTION ||
        base == TSS2_BASE_RC_IO_ERROR) {
      return Failure::unavailable;
    }
    return Failure::internal;
  }
  switch (tpm_error_number(rc)) {
    case TPM2_RC_ATTRIBUTES:
    case TPM2_RC_KEY:
    case TPM2_RC_SCHEME:
    case TPM2_RC_SIZE:
    case TPM2_RC_VALUE:
    case TPM2_RC_TYPE:
    case TPM2_RC_HASH:
    case TPM2_RC_AUTH_FAIL:
    case TPM2_RC_BAD_AUTH:
      return Failure::invalid_argument;
    case TPM2_RC_INITIALIZE:
    case TPM2_RC_REBOOT:
    case TPM2_RC_FAILURE:
    case TPM2_RC_LOCKOUT:
    case TPM2_RC_OBJECT_MEMORY:
    case TPM2_RC_SESSION_MEMORY:
      return Failure::unavailable;
    default:
      return Failure::internal;
  }
}

void check(TSS2_RC rc, const char* call) {
  if (rc != TSS2_RC_SUCCESS) fail(rc, call, failure_of(rc));
}

void check(TSS2_RC rc, const char* call, Failure failure) {
  if (rc != TSS2_RC_SUCCESS) fail(rc, call, failure);
}

void fail(TSS2_RC rc, const char* call, Failure failure) {
  throw TpmError(failure, std::string(call) + " failed: " + describe_rc(rc), rc);
}

}  // namespace m2mvault::hsm::tpm2
