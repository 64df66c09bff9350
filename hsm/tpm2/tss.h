// tpm2-tss glue: the one way a TSS return code is checked, the error type
// that carries it, and owners for what the ESAPI hands out.
#pragma once

#include <openssl/crypto.h>
#include <tss2/tss2_esys.h>
#include <tss2/tss2_tctildr.h>

#include <cstdint>
#include <memory>
#include <string>

#include "hsm/error.h"

namespace m2mvault::hsm::tpm2 {

// An hsm::Error raised for a TPM or TSS return code. rc() is the raw code;
// the message names the call and the code as Tss2_RC_Decode spells it.
class TpmError : public Error {
 public:
  TpmError(Failure failure, const std::string& message, TSS2_RC rc)
      : Error(failure, message), rc_(rc) {}
  TSS2_RC rc() const noexcept { return rc_; }

 private:
  TSS2_RC rc_;
};

// The TPM's error number without the handle, parameter or session index that
// format-one codes carry (so TPM2_RC_ATTRIBUTES matches "parameter 1:
// inconsistent attributes"). Codes of the TSS layers come back unchanged.
TSS2_RC tpm_error_number(TSS2_RC rc);

// "0x000001c4 (tpm:parameter(1):value is out of range...)".
std::string describe_rc(TSS2_RC rc);

// "0x01834d30": a TPM handle as TPM tools and specifications print it.
std::string hex_handle(std::uint32_t handle);

// True for codes that mean the TPM lost what this process had loaded: the
// connection dropped, the TPM was reset (TPM_RC_INITIALIZE), or a handle or
// session is no longer loaded. The caller reconnects and retries once.
bool is_lost_state(TSS2_RC rc);

// The stable failure a TPM code maps to when the caller has no better one:
// connection problems are `unavailable`, misuse of an object
// (attributes, key, scheme, size) is `invalid_argument`, the rest `internal`.
Failure failure_of(TSS2_RC rc);

// Throws TpmError naming `call` unless rc is TSS2_RC_SUCCESS.
void check(TSS2_RC rc, const char* call);
void check(TSS2_RC rc, const char* call, Failure failure);
[[noreturn]] void fail(TSS2_RC rc, const char* call, Failure failure);

// A TCTI loaded by Tss2_TctiLdr_Initialize (not the vault's own swtpm TCTI,
// which SwtpmTcti owns).
struct TctiFinalize {
  void operator()(TSS2_TCTI_CONTEXT* tcti) const noexcept { Tss2_TctiLdr_Finalize(&tcti); }
};
using TctiPtr = std::unique_ptr<TSS2_TCTI_CONTEXT, TctiFinalize>;

struct EsysFinalize {
  void operator()(ESYS_CONTEXT* esys) const noexcept { Esys_Finalize(&esys); }
};
using EsysContextPtr = std::unique_ptr<ESYS_CONTEXT, EsysFinalize>;

// An ESAPI output (allocated by the TSS), released with Esys_Free.
struct EsysFree {
  void operator()(void* out) const noexcept { Esys_Free(out); }
};
template <typename T>
using EsysPtr = std::unique_ptr<T, EsysFree>;

// An ESAPI output that holds a secret: wiped, then released.
template <typename T>
struct EsysWipeFree {
  void operator()(T* out) const noexcept {
    OPENSSL_cleanse(out, sizeof(T));
    Esys_Free(out);
  }
};
template <typename T>
using EsysSecretPtr = std::unique_ptr<T, EsysWipeFree<T>>;

// A TSS structure on the stack that holds a secret (TPM2B_SENSITIVE_CREATE,
// TPM2B_AUTH, ...): zero-initialized, wiped when the scope ends.
template <typename T>
class Wiped {
 public:
  Wiped() = default;
  Wiped(const Wiped&) = delete;
  Wiped& operator=(const Wiped&) = delete;
  ~Wiped() { OPENSSL_cleanse(&value_, sizeof(T)); }
  T& get() noexcept { return value_; }
  const T& get() const noexcept { return value_; }
  T* operator->() noexcept { return &value_; }
  const T* operator->() const noexcept { return &value_; }
  T* ptr() noexcept { return &value_; }
  const T* ptr() const noexcept { return &value_; }

 private:
  T value_{};
};

}  // namespace m2mvault::hsm::tpm2
