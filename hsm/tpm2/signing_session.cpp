#include "hsm/tpm2/signing_session.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>

namespace m2mvault::hsm::tpm2 {
namespace {

// nonceCaller: as long as the session's digest (Part 3, TPM2_StartAuthSession
// takes 16 bytes up to the digest size; the longest makes replay hardest).
constexpr UINT16 kNonceSize = 32;

TPM2B_NONCE fresh_nonce() {
  TPM2B_NONCE nonce{};
  nonce.size = kNonceSize;
  if (RAND_bytes(nonce.buffer, kNonceSize) != 1) {
    throw Error(Failure::internal, "RAND_bytes failed");
  }
  return nonce;
}

// An unbound, unsalted session's sessionKey is the Empty Buffer (Part 1 §19):
// the HMAC key is the object's auth value alone.
constexpr std::span<const std::uint8_t> kNoSessionKey{};

}  // namespace

SigningSession::SigningSession(ESYS_CONTEXT* esys) {
  check(Esys_GetSysContext(esys, &sys_), "Esys_GetSysContext");
  const TPM2B_NONCE nonce_caller = fresh_nonce();
  const TPM2B_ENCRYPTED_SECRET no_salt{};
  const TPMT_SYM_DEF no_symmetric{.algorithm = TPM2_ALG_NULL, .keyBits = {}, .mode = {}};
  TPMI_SH_AUTH_SESSION handle = 0;
  TPM2B_NONCE nonce_tpm{};
  check(Tss2_Sys_StartAuthSession(sys_, TPM2_RH_NULL, TPM2_RH_NULL, nullptr, &nonce_caller,
                                  &no_salt, TPM2_SE_HMAC, &no_symmetric, TPM2_ALG_SHA256, &handle,
                                  &nonce_tpm, nullptr),
        "TPM2_StartAuthSession (signing)");
  handle_ = handle;
  nonce_tpm_ = nonce_tpm;
}

SigningSession::~SigningSession() {
  if (handle_ != 0) Tss2_Sys_FlushContext(sys_, handle_);
}

TPMT_SIGNATURE SigningSession::sign(TPM2_HANDLE key, const TPM2B_NAME& name, const TPM2B_AUTH& auth,
                                    const TPM2B_DIGEST& digest, const TPMT_SIG_SCHEME& scheme,
                                    const TPMT_TK_HASHCHECK& validation) {
  check(Tss2_Sys_Sign_Prepare(sys_, key, &digest, &scheme, &validation), "Tss2_Sys_Sign_Prepare");
  const std::uint8_t* parameters = nullptr;
  std::size_t parameters_size = 0;
  check(Tss2_Sys_GetCpBuffer(sys_, &parameters_size, &parameters), "Tss2_Sys_GetCpBuffer");
  const Sha256Digest cp_hash =
      hmac_.command_hash(TPM2_CC_Sign, std::span(&name, 1), std::span(parameters, parameters_size));

  TSS2L_SYS_AUTH_COMMAND command_auths{};
  command_auths.count = 1;
  TPMS_AUTH_COMMAND& command = command_auths.auths[0];
  command.sessionHandle = handle_;
  command.nonce = fresh_nonce();
  command.sessionAttributes = TPMA_SESSION_CONTINUESESSION;
  const Sha256Digest command_hmac = hmac_.authorization(kNoSessionKey, auth, cp_hash, command.nonce,
                                                        nonce_tpm_, command.sessionAttributes);
  command.hmac.size = static_cast<UINT16>(command_hmac.size());
  std::copy(command_hmac.begin(), command_hmac.end(), command.hmac.buffer);
  check(Tss2_Sys_SetCmdAuths(sys_, &command_auths), "Tss2_Sys_SetCmdAuths");

  check(Tss2_Sys_Execute(sys_), "TPM2_Sign");

  // The response: rpHash over its parameters, HMAC'd with the TPM's new
  // nonce first. It must match before anything in it is believed.
  TSS2L_SYS_AUTH_RESPONSE response_auths{};
  check(Tss2_Sys_GetRspAuths(sys_, &response_auths), "Tss2_Sys_GetRspAuths");
  const std::uint8_t* response_parameters = nullptr;
  std::size_t response_parameters_size = 0;
  check(Tss2_Sys_GetRpBuffer(sys_, &response_parameters_size, &response_parameters),
        "Tss2_Sys_GetRpBuffer");
  if (response_auths.count != 1) {
    throw Error(Failure::internal, "TPM2_Sign: the response carries no session");
  }
  const TPMS_AUTH_RESPONSE& response = response_auths.auths[0];
  const Sha256Digest rp_hash = hmac_.response_hash(
      TPM2_RC_SUCCESS, TPM2_CC_Sign, std::span(response_parameters, response_parameters_size));
  const Sha256Digest expected = hmac_.authorization(kNoSessionKey, auth, rp_hash, response.nonce,
                                                    command.nonce, response.sessionAttributes);
  if (response.hmac.size != expected.size() ||
      CRYPTO_memcmp(response.hmac.buffer, expected.data(), expected.size()) != 0) {
    throw Error(Failure::internal,
                "TPM2_Sign: the response HMAC does not verify (the TPM or the path to it is "
                "not the one this session was started with)");
  }
  if ((response.sessionAttributes & TPMA_SESSION_CONTINUESESSION) == 0) {
    throw Error(Failure::internal, "TPM2_Sign: the TPM closed the signing session");
  }
  nonce_tpm_ = response.nonce;

  TPMT_SIGNATURE signature{};
  check(Tss2_Sys_Sign_Complete(sys_, &signature), "Tss2_Sys_Sign_Complete");
  return signature;
}

}  // namespace m2mvault::hsm::tpm2
