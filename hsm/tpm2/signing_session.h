// TPM2_Sign authorized through an HMAC session of our own, sent on the SAPI
// context under the connection's ESAPI context (same TCTI, same TPM).
//
// tpm2-tss 3.2's ESAPI computes each session hash in a fresh OpenSSL library
// context, ~1 ms apiece and about four per TPM2_Sign; this session computes
// them with objects fetched once (session_hmac.h), so a signature costs the
// TPM's time, not the TSS's. The key's auth value never crosses the TPM
// interface: only HMACs keyed with it do.
//
// The session: TPM2_StartAuthSession with TPM_SE_HMAC, authHash SHA-256,
// symmetric NULL (TPM2_Sign has no secret parameter), unbound and unsalted —
// our auth values are 32 random bytes, so a captured HMAC gives nothing to
// guess offline (docs/TPM2.md, "Sessions and what crosses in plaintext").
// Nonces roll with every command (TPM 2.0 Part 1 §19, Part 3 TPM2_Sign).
//
// Not thread-safe: Tpm2 serializes use.
#pragma once

#include <tss2/tss2_sys.h>

#include "hsm/tpm2/session_hmac.h"
#include "hsm/tpm2/tss.h"

namespace m2mvault::hsm::tpm2 {

class SigningSession {
 public:
  // TPM2_StartAuthSession on the SAPI context of `esys`. Throws TpmError
  // (e.g. TPM_RC_SESSION_MEMORY).
  explicit SigningSession(ESYS_CONTEXT* esys);
  SigningSession(const SigningSession&) = delete;
  SigningSession& operator=(const SigningSession&) = delete;
  // TPM2_FlushContext of the session unless abandoned; errors are ignored.
  ~SigningSession();

  TPMI_SH_AUTH_SESSION handle() const noexcept { return handle_; }

  // Forgets the session without a TPM command (the TPM was reset or the
  // connection is gone: the handle names nothing any more).
  void abandon() noexcept { handle_ = 0; }

  // One TPM2_Sign by the loaded object `key` (its TPM handle and name),
  // authorized by an HMAC keyed with `auth`. The response's HMAC is checked
  // before the signature is used.
  // Throws TpmError with the TPM's or TSS's code when the command fails, and
  // Error(internal) when the response HMAC does not verify (the TPM or the
  // path to it is not what we think). After either the session's nonces can
  // no longer be trusted: the caller discards the session.
  TPMT_SIGNATURE sign(TPM2_HANDLE key, const TPM2B_NAME& name, const TPM2B_AUTH& auth,
                      const TPM2B_DIGEST& digest, const TPMT_SIG_SCHEME& scheme,
                      const TPMT_TK_HASHCHECK& validation);

 private:
  TSS2_SYS_CONTEXT* sys_ = nullptr;
  TPMI_SH_AUTH_SESSION handle_ = 0;
  TPM2B_NONCE nonce_tpm_{};  // the TPM's latest nonce: nonceOlder of the next command
  SessionHmac hmac_;
};

}  // namespace m2mvault::hsm::tpm2
