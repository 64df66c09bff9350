// The hashes and HMACs of a TPM 2.0 HMAC authorization session whose
// authHash is SHA-256 (TPM 2.0 Part 1 §19, authorizations and sessions),
// on OpenSSL objects fetched once. tpm2-tss 3.2's ESAPI fetches SHA-256 in a
// fresh library context for every hash it takes (~1 ms each); these cost
// microseconds. No TPM involved: the computations only.
#pragma once

#include <openssl/types.h>
#include <tss2/tss2_tpm2_types.h>

#include <array>
#include <cstdint>
#include <memory>
#include <span>

namespace m2mvault::hsm::tpm2 {

using Sha256Digest = std::array<std::uint8_t, 32>;

class SessionHmac {
 public:
  // Fetches SHA-256 and HMAC from the default library context. Throws
  // Error(internal) when OpenSSL has neither.
  SessionHmac();
  ~SessionHmac();
  SessionHmac(const SessionHmac&) = delete;
  SessionHmac& operator=(const SessionHmac&) = delete;

  // cpHash = SHA-256(commandCode || name of each handle, in order ||
  // cpParameters), cpParameters being the marshalled parameters after the
  // handle and authorization areas (Part 1 §18, command/response structure).
  Sha256Digest command_hash(TPM2_CC command, std::span<const TPM2B_NAME> names,
                            std::span<const std::uint8_t> parameters) const;

  // rpHash = SHA-256(responseCode || commandCode || rpParameters) (Part 1
  // §18). Only successful responses carry an HMAC, so responseCode is 0
  // in practice.
  Sha256Digest response_hash(TPM2_RC response, TPM2_CC command,
                             std::span<const std::uint8_t> parameters) const;

  // HMAC-SHA-256 keyed with sessionKey || authValue over
  //   pHash || nonceNewer || nonceOlder || sessionAttributes (one octet),
  // with the authValue's trailing zero octets removed, as the TPM removes
  // them before any HMAC (Part 1 §19). For a command: pHash = cpHash, nonceNewer =
  // nonceCaller, nonceOlder = the last nonceTPM. For a response: rpHash, the
  // new nonceTPM, that command's nonceCaller. The key is assembled in a
  // wiped buffer and OpenSSL wipes its copy when its context is freed.
  Sha256Digest authorization(std::span<const std::uint8_t> session_key, const TPM2B_AUTH& auth,
                             const Sha256Digest& p_hash, const TPM2B_NONCE& nonce_newer,
                             const TPM2B_NONCE& nonce_older, TPMA_SESSION attributes) const;

 private:
  struct Fetched;
  std::unique_ptr<Fetched> fetched_;
};

}  // namespace m2mvault::hsm::tpm2
