// TPM2_Sign through the vault's own HMAC session (signing_session.h): the
// session's hashes against Python's hashlib/hmac, then the TPM accepting
// (and refusing) what the session computes.
#include <tss2/tss2_esys.h>
#include <tss2/tss2_tctildr.h>

#include "hsm/tpm2/session_hmac.h"
#include "hsm/tpm2/templates.h"
#include "tests/hsm/tpm2/tpm2_test_support.h"

namespace m2mvault::hsm::tpm2::testing {
namespace {

template <typename T>
T tpm2b(std::span<const std::uint8_t> bytes) {
  T out{};
  out.size = static_cast<UINT16>(bytes.size());
  std::copy(bytes.begin(), bytes.end(), out.buffer);
  return out;
}

Bytes counting(std::uint8_t first, std::size_t size) {
  Bytes out(size);
  for (std::size_t i = 0; i < size; ++i) out[i] = static_cast<std::uint8_t>(first + i);
  return out;
}

Bytes digest_bytes(const Sha256Digest& digest) {
  return Bytes(digest.begin(), digest.end());
}

// The vectors below are Python's:
//   cp = hashlib.sha256(cc + name + params).digest()
//   hmac.new(key, cp + newer + older + b'\x01', hashlib.sha256)
// with cc = 0x0000015d (TPM2_Sign), name = 000b || 11 * 32, params = 00..31,
// rp = hashlib.sha256(b'\0' * 4 + cc + b'\x30' * 20).digest(), newer =
// 01..20, older = 40..5f, key = (77 * 32 if a session key) || the auth value
// with its trailing zeros stripped.
TPM2B_NAME name_of(std::span<const std::uint8_t> bytes) {
  TPM2B_NAME out{};
  out.size = static_cast<UINT16>(bytes.size());
  std::copy(bytes.begin(), bytes.end(), out.name);
  return out;
}

const Bytes kName = [] {
  Bytes name{0x00, 0x0b};
  name.insert(name.end(), 32, 0x11);
  return name;
}();

TEST(SessionHmac, CommandHashIsSha256OfCodeNameAndParameters) {
  const SessionHmac session;
  const TPM2B_NAME name = name_of(kName);
  EXPECT_EQ(digest_bytes(session.command_hash(TPM2_CC_Sign, std::span(&name, 1), counting(0, 50))),
            from_hex("f0e94952333c9b664cc75fac95adf6a4aaa3915c47c66c0e9146b92ef14a1c37"));
}

TEST(SessionHmac, ResponseHashIsSha256OfResponseCodeCommandCodeAndParameters) {
  const SessionHmac session;
  EXPECT_EQ(digest_bytes(session.response_hash(TPM2_RC_SUCCESS, TPM2_CC_Sign, Bytes(20, 0x30))),
            from_hex("42fd316c997999ddad6fe517a3db54b65637a913b341369bb6824ce4710c0d11"));
}

TEST(SessionHmac, CommandHmacCoversHashNoncesAndAttributes) {
  const SessionHmac session;
  const TPM2B_NAME name = name_of(kName);
  const Sha256Digest cp_hash =
      session.command_hash(TPM2_CC_Sign, std::span(&name, 1), counting(0, 50));
  const auto auth = tpm2b<TPM2B_AUTH>(Bytes(30, 0xA5));
  const auto newer = tpm2b<TPM2B_NONCE>(counting(0x01, 32));
  const auto older = tpm2b<TPM2B_NONCE>(counting(0x40, 32));
  const Sha256Digest hmac =
      session.authorization({}, auth, cp_hash, newer, older, TPMA_SESSION_CONTINUESESSION);
  EXPECT_EQ(digest_bytes(hmac),
            from_hex("2c853825e413d71752da1e3d9a554a9f75574fbff8ebd8758b5f82d686ccff37"));
  // As OpenSSL's one-shot HMAC over the same bytes.
  Bytes message(cp_hash.begin(), cp_hash.end());
  message.insert(message.end(), newer.buffer, newer.buffer + newer.size);
  message.insert(message.end(), older.buffer, older.buffer + older.size);
  message.push_back(0x01);
  EXPECT_EQ(hmac, openssl_hmac(Bytes(30, 0xA5), message));
  // Every input counts: the nonces' order, the attributes, the auth value.
  EXPECT_NE(session.authorization({}, auth, cp_hash, older, newer, TPMA_SESSION_CONTINUESESSION),
            hmac);
  EXPECT_NE(session.authorization({}, auth, cp_hash, newer, older, 0), hmac);
  EXPECT_NE(session.authorization({}, tpm2b<TPM2B_AUTH>(Bytes(30, 0xA4)), cp_hash, newer, older,
                                  TPMA_SESSION_CONTINUESESSION),
            hmac);
}

// The key is sessionKey || authValue less its trailing zero octets. Up to
// SHA-256's block size HMAC's own zero padding hides the difference; past
// it (a session key and a long auth value) the key is hashed and it shows.
TEST(SessionHmac, ResponseHmacKeyIsSessionKeyThenAuthValueLessTrailingZeros) {
  const SessionHmac session;
  const Sha256Digest rp_hash =
      session.response_hash(TPM2_RC_SUCCESS, TPM2_CC_Sign, Bytes(20, 0x30));
  Bytes auth_bytes(38, 0xA5);
  auth_bytes.insert(auth_bytes.end(), 2, 0x00);
  // A response: the TPM's new nonce (here 40..5f) first, then nonceCaller.
  const Sha256Digest hmac =
      session.authorization(Bytes(32, 0x77), tpm2b<TPM2B_AUTH>(auth_bytes), rp_hash,
                            tpm2b<TPM2B_NONCE>(counting(0x40, 32)),
                            tpm2b<TPM2B_NONCE>(counting(0x01, 32)), TPMA_SESSION_CONTINUESESSION);
  EXPECT_EQ(digest_bytes(hmac),
            from_hex("7b1c64bd150ab36138faca0816ad49c44cdb7361e8499943c8d38fcefe333e3b"));
  // Python's HMAC with the zeros left in the key:
  EXPECT_NE(digest_bytes(hmac),
            from_hex("38cf20eae58451e8f152a72a52b6e1415927098065d8ca860e0d383d82185a66"));
}

// A signing key blob with a chosen auth value, made under the vault's primary
// by a bare ESAPI client (Tpm2 draws its auth values at random). Run before
// a Tpm2 opens the same swtpm: the primary takes a slot meanwhile.
Bytes signing_key_with_auth(const std::string& tcti, std::span<const std::uint8_t> auth) {
  TSS2_TCTI_CONTEXT* raw_tcti = nullptr;
  ESYS_CONTEXT* esys = nullptr;
  EXPECT_EQ(Tss2_TctiLdr_Initialize(tcti.c_str(), &raw_tcti), TSS2_RC_SUCCESS);
  EXPECT_EQ(Esys_Initialize(&esys, raw_tcti, nullptr), TSS2_RC_SUCCESS);
  const TPM2B_SENSITIVE_CREATE no_sensitive{};
  const TPM2B_PUBLIC primary_public = primary_template();
  const TPM2B_DATA outside{};
  const TPML_PCR_SELECTION pcrs{};
  ESYS_TR primary = ESYS_TR_NONE;
  EXPECT_EQ(Esys_CreatePrimary(esys, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                               &no_sensitive, &primary_public, &outside, &pcrs, &primary, nullptr,
                               nullptr, nullptr, nullptr),
            TSS2_RC_SUCCESS);
  TPM2B_SENSITIVE_CREATE sensitive{};
  sensitive.sensitive.userAuth = tpm2b<TPM2B_AUTH>(auth);
  const TPM2B_PUBLIC key_template = ecc_signing_template();
  TPM2B_PRIVATE* out_private = nullptr;
  TPM2B_PUBLIC* out_public = nullptr;
  EXPECT_EQ(Esys_Create(esys, primary, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &sensitive,
                        &key_template, &outside, &pcrs, &out_private, &out_public, nullptr, nullptr,
                        nullptr),
            TSS2_RC_SUCCESS);
  Bytes blob = serialize_blob(sensitive.sensitive.userAuth, *out_public, *out_private);
  Esys_Free(out_private);
  Esys_Free(out_public);
  Esys_FlushContext(esys, primary);
  Esys_Finalize(&esys);
  Tss2_TctiLdr_Finalize(&raw_tcti);
  return blob;
}

bool signs_verifiably(Tpm2& tpm, const Bytes& blob, std::span<const std::uint8_t> message) {
  const Pkey public_key = parse_spki(signing_public_key(blob));
  const Bytes signature =
      tpm.sign_digest(blob, DigestAlgorithm::sha256, digest_of(EVP_sha256(), message));
  return public_key && digest_verifies(public_key.get(), EVP_sha256(), message, signature);
}

TEST(SigningSession, HundredsOfSignaturesInOneSessionVerify) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  const auto key = tpm.generate_signing_key();
  const Pkey public_key = parse_spki(key.public_key);
  ASSERT_TRUE(public_key);
  // Each command rolls both nonces; a slip in one would fail the next HMAC.
  for (int i = 0; i < 300; ++i) {
    const Bytes message = random_bytes(64);
    const bool sha384 = i % 3 == 0;
    const EVP_MD* md = sha384 ? EVP_sha384() : EVP_sha256();
    const Bytes signature =
        tpm.sign_digest(key.blob, sha384 ? DigestAlgorithm::sha384 : DigestAlgorithm::sha256,
                        digest_of(md, message));
    ASSERT_TRUE(digest_verifies(public_key.get(), md, message, signature)) << "signature " << i;
  }
  EXPECT_EQ(tpm.stats().signing_sessions, 1u);
}

TEST(SigningSession, WrongAuthValueIsRefusedByTheTpm) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  const auto key = tpm.generate_signing_key();
  Bytes bad = key.blob;
  bad[4 + 31] ^= 0x01;  // last byte of the auth value
  // The TPM checks the HMAC keyed with the auth value: a wrong one is
  // TPM_RC_BAD_AUTH (noDA: no lockout), whichever session carried it.
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(tpm_error_of([&] { tpm.sign_digest(bad, DigestAlgorithm::sha256, Bytes(32, 0x5A)); }),
              TPM2_RC_BAD_AUTH);
  }
  EXPECT_EQ(
      failure_of_call([&] { tpm.sign_digest(bad, DigestAlgorithm::sha256, Bytes(32, 0x5A)); }),
      Failure::invalid_argument);
  // Each failure spent its session; the next sign starts a new one and works.
  EXPECT_TRUE(signs_verifiably(tpm, key.blob, text_bytes("after the refusals")));
  EXPECT_EQ(tpm.stats().signing_sessions, 5u);
  EXPECT_EQ(tpm.stats().reconnects, 0u);
}

TEST(SigningSession, AuthValuesEndingInZerosSign) {
  Swtpm swtpm;
  // One random 32-byte auth value in 256 ends in a zero octet, which the TPM
  // drops before any HMAC (it does not change an unsalted session's HMAC,
  // see SessionHmac above, but the TPM must agree end to end).
  Bytes one_zero = random_bytes(32);
  one_zero[0] |= 0x01;
  one_zero[31] = 0x00;
  Bytes two_zeros = one_zero;
  two_zeros[30] = 0x00;
  const Bytes first = signing_key_with_auth(swtpm.tcti(), one_zero);
  const Bytes second = signing_key_with_auth(swtpm.tcti(), two_zeros);
  Tpm2 tpm(swtpm.config());
  EXPECT_TRUE(signs_verifiably(tpm, first, text_bytes("one trailing zero")));
  EXPECT_TRUE(signs_verifiably(tpm, second, text_bytes("two trailing zeros")));
  EXPECT_EQ(tpm.stats().signing_sessions, 1u);
}

TEST(SigningSession, SignsBetweenEsapiCommandsOnTheSameConnection) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  const auto key = tpm.generate_signing_key();
  const Bytes psk = random_bytes(32);
  const Bytes sealed = tpm.seal(psk);
  const Bytes ke = random_bytes(32);
  const Bytes ke_blob = tpm.create_hmac_key(ke);
  // The signing session shares ESAPI's SAPI context: each uses it in turn.
  for (int i = 0; i < 10; ++i) {
    EXPECT_TRUE(signs_verifiably(tpm, key.blob, text_bytes("round " + std::to_string(i))));
    EXPECT_TRUE(same_bytes(tpm.unseal(sealed), psk));
    EXPECT_EQ(tpm.hmac_sha256(ke_blob, text_bytes("x")), openssl_hmac(ke, text_bytes("x")));
  }
  const auto other = tpm.generate_signing_key();
  EXPECT_TRUE(signs_verifiably(tpm, other.blob, text_bytes("a key made after signing")));
  EXPECT_EQ(tpm.stats().signing_sessions, 1u);
}

TEST(SigningSession, KeysTakingTurnsInTheSlotsAllSign) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  std::vector<Bytes> keys;
  for (int i = 0; i < 6; ++i) keys.push_back(tpm.generate_signing_key().blob);
  const auto loads_before = tpm.stats().loads;
  // Round robin over more keys than slots: every sign names a newly loaded object.
  for (int i = 0; i < 30; ++i) {
    EXPECT_TRUE(signs_verifiably(tpm, keys[static_cast<std::size_t>(i) % keys.size()],
                                 text_bytes("turn " + std::to_string(i))));
  }
  EXPECT_GE(tpm.stats().loads - loads_before, 30u);
  EXPECT_EQ(tpm.stats().signing_sessions, 1u);
}

// A path to the TPM that flips one bit of the signature in chosen TPM2_Sign
// responses (tamper_proxy.py behind the tcti-cmd TCTI).
Config through_tampering_proxy(const Swtpm& swtpm, const std::string& tampered_signs) {
  Config config = swtpm.config();
  config.tcti = std::string("cmd:python3 ") + M2MVAULT_TAMPER_PROXY + " " +
                std::to_string(swtpm.port()) + " " + tampered_signs;
  return config;
}

TEST(SigningSession, TamperedResponseFailsItsHmacCheck) {
  Swtpm swtpm;
  Tpm2 tpm(through_tampering_proxy(swtpm, "2 3"));
  const auto key = tpm.generate_signing_key();
  EXPECT_TRUE(signs_verifiably(tpm, key.blob, text_bytes("first: untouched")));
  for (const char* which : {"second", "third"}) {
    try {
      tpm.sign_digest(key.blob, DigestAlgorithm::sha256, Bytes(32, 0x42));
      ADD_FAILURE() << "the " << which << " response was tampered with and accepted";
    } catch (const Error& error) {
      EXPECT_EQ(error.failure(), Failure::internal) << error.what();
      EXPECT_NE(std::string(error.what()).find("response HMAC"), std::string::npos) << error.what();
    }
  }
  // Each lie spent its session; an honest response verifies again.
  EXPECT_TRUE(signs_verifiably(tpm, key.blob, text_bytes("fourth: untouched")));
  EXPECT_EQ(tpm.stats().signing_sessions, 3u);
  EXPECT_EQ(tpm.stats().reconnects, 0u);
}

TEST(SigningSession, PasswordAuthorizationCannotTellATamperedResponse) {
  // What the session's response HMAC buys: under a password the same lie
  // comes back as a signature, and only verifying it shows it is wrong.
  Swtpm swtpm;
  Config config = through_tampering_proxy(swtpm, "1");
  config.password_auth_for_signing = true;
  Tpm2 tpm(config);
  const auto key = tpm.generate_signing_key();
  EXPECT_FALSE(signs_verifiably(tpm, key.blob, text_bytes("tampered")));
  EXPECT_TRUE(signs_verifiably(tpm, key.blob, text_bytes("untouched")));
}

TEST(SigningSession, PasswordAuthorizationStillSigns) {
  Swtpm swtpm;
  Config config = swtpm.config();
  config.password_auth_for_signing = true;
  Tpm2 tpm(config);
  const auto key = tpm.generate_signing_key();
  EXPECT_TRUE(signs_verifiably(tpm, key.blob, text_bytes("password")));
  EXPECT_EQ(tpm.stats().signing_sessions, 0u);
  Bytes bad = key.blob;
  bad[4] ^= 0x01;
  EXPECT_EQ(tpm_error_of([&] { tpm.sign_digest(bad, DigestAlgorithm::sha256, Bytes(32, 1)); }),
            TPM2_RC_BAD_AUTH);
}

}  // namespace
}  // namespace m2mvault::hsm::tpm2::testing
