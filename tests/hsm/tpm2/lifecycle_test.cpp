// Nothing is lost across a daemon restart or a TPM reset, and leftovers of
// a killed process are flushed at start.
#include <tss2/tss2_esys.h>
#include <tss2/tss2_tctildr.h>

#include "hsm/tpm2/templates.h"
#include "tests/hsm/tpm2/tpm2_test_support.h"

namespace m2mvault::hsm::tpm2::testing {
namespace {

// One key of each kind and what using it must give.
struct KeySet {
  Bytes psk = random_bytes(32);
  Bytes ke = random_bytes(32);
  Bytes data = text_bytes("oneM2M");
  Bytes sealed_blob;
  Bytes ke_blob;
  Tpm2::SigningKey signing;

  explicit KeySet(Tpm2& tpm)
      : sealed_blob(tpm.seal(psk)),
        ke_blob(tpm.create_hmac_key(ke)),
        signing(tpm.generate_signing_key()) {}

  void expect_usable(Tpm2& tpm) const {
    EXPECT_TRUE(same_bytes(tpm.unseal(sealed_blob), psk));
    EXPECT_EQ(tpm.hmac_sha256(ke_blob, data), openssl_hmac(ke, data));
    const Pkey public_key = parse_spki(signing.public_key);
    const Bytes signature =
        tpm.sign_digest(signing.blob, DigestAlgorithm::sha256, digest_of(EVP_sha256(), data));
    EXPECT_TRUE(digest_verifies(public_key.get(), EVP_sha256(), data, signature));
  }
};

// A bare ESAPI connection, for setting up and inspecting the TPM around Tpm2:
// tpm2-tss's swtpm TCTI (Tss2_TctiLdr), a TCP connection per command.
class RawEsys {
 public:
  explicit RawEsys(const std::string& tcti) {
    EXPECT_EQ(Tss2_TctiLdr_Initialize(tcti.c_str(), &tcti_), TSS2_RC_SUCCESS);
    EXPECT_EQ(Esys_Initialize(&esys_, tcti_, nullptr), TSS2_RC_SUCCESS);
  }
  // Closes the connection without flushing anything, as a killed process would.
  ~RawEsys() {
    Esys_Finalize(&esys_);
    Tss2_TctiLdr_Finalize(&tcti_);
  }
  ESYS_CONTEXT* get() const { return esys_; }

  std::size_t count(TPM2_HANDLE first) const {
    TPMI_YES_NO more = TPM2_NO;
    TPMS_CAPABILITY_DATA* data = nullptr;
    EXPECT_EQ(Esys_GetCapability(esys_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_HANDLES,
                                 first, TPM2_MAX_CAP_HANDLES, &more, &data),
              TSS2_RC_SUCCESS);
    std::size_t n = 0;
    for (std::uint32_t i = 0; i < data->data.handles.count; ++i) {
      if ((data->data.handles.handle[i] & TPM2_HR_RANGE_MASK) == (first & TPM2_HR_RANGE_MASK)) ++n;
    }
    Esys_Free(data);
    return n;
  }

  void create_primary() const {
    const TPM2B_SENSITIVE_CREATE sensitive{};
    const TPM2B_PUBLIC in_public = primary_template();
    const TPM2B_DATA outside{};
    const TPML_PCR_SELECTION pcrs{};
    ESYS_TR handle = ESYS_TR_NONE;
    EXPECT_EQ(Esys_CreatePrimary(esys_, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                 ESYS_TR_NONE, &sensitive, &in_public, &outside, &pcrs, &handle,
                                 nullptr, nullptr, nullptr, nullptr),
              TSS2_RC_SUCCESS);
  }

  // TPM2_FlushContext of every loaded session, someone else's included.
  void flush_sessions() const {
    TPMI_YES_NO more = TPM2_NO;
    TPMS_CAPABILITY_DATA* data = nullptr;
    ASSERT_EQ(Esys_GetCapability(esys_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_HANDLES,
                                 TPM2_LOADED_SESSION_FIRST, TPM2_MAX_CAP_HANDLES, &more, &data),
              TSS2_RC_SUCCESS);
    for (std::uint32_t i = 0; i < data->data.handles.count; ++i) {
      ESYS_TR session = ESYS_TR_NONE;
      EXPECT_EQ(Esys_TR_FromTPMPublic(esys_, data->data.handles.handle[i], ESYS_TR_NONE,
                                      ESYS_TR_NONE, ESYS_TR_NONE, &session),
                TSS2_RC_SUCCESS);
      EXPECT_EQ(Esys_FlushContext(esys_, session), TSS2_RC_SUCCESS);
    }
    Esys_Free(data);
  }

  void start_session() const {
    const TPMT_SYM_DEF none{.algorithm = TPM2_ALG_NULL, .keyBits = {}, .mode = {}};
    ESYS_TR session = ESYS_TR_NONE;
    EXPECT_EQ(Esys_StartAuthSession(esys_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                    ESYS_TR_NONE, nullptr, TPM2_SE_HMAC, &none, TPM2_ALG_SHA256,
                                    &session),
              TSS2_RC_SUCCESS);
  }

 private:
  TSS2_TCTI_CONTEXT* tcti_ = nullptr;
  ESYS_CONTEXT* esys_ = nullptr;
};

TEST(Lifecycle, BlobsWorkAfterReopening) {
  Swtpm swtpm;
  std::unique_ptr<KeySet> keys;
  {
    Tpm2 tpm(swtpm.config());
    keys = std::make_unique<KeySet>(tpm);
    keys->expect_usable(tpm);
  }
  Tpm2 reopened(swtpm.config());
  EXPECT_EQ(reopened.stats().flushed_at_start, 0u) << "the first Tpm2 left objects loaded";
  keys->expect_usable(reopened);
}

TEST(Lifecycle, BlobsWorkAcrossSwtpmRestartWhileTpm2Lives) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  const KeySet keys(tpm);
  keys.expect_usable(tpm);
  for (int round = 1; round <= 2; ++round) {
    swtpm.restart();
    keys.expect_usable(tpm);
    EXPECT_EQ(tpm.stats().reconnects, static_cast<std::uint64_t>(round));
  }
  // New keys after the reset too.
  const KeySet more(tpm);
  more.expect_usable(tpm);
}

TEST(Lifecycle, BlobsWorkAfterTpmInitThroughControlChannel) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  const KeySet keys(tpm);
  keys.expect_usable(tpm);
  swtpm.init_via_control_channel();
  keys.expect_usable(tpm);
  EXPECT_EQ(tpm.stats().reconnects, 1u);
  // Each kind of operation as the first one after a reset.
  swtpm.init_via_control_channel();
  EXPECT_TRUE(same_bytes(tpm.unseal(keys.sealed_blob), keys.psk));
  swtpm.init_via_control_channel();
  EXPECT_EQ(tpm.hmac_sha256(keys.ke_blob, keys.data), openssl_hmac(keys.ke, keys.data));
  swtpm.init_via_control_channel();
  EXPECT_EQ(blob_kind(tpm.seal(keys.psk)), ObjectKind::sealed_data);
  EXPECT_EQ(tpm.stats().reconnects, 4u);
}

// The signing session lives in the TPM like the objects: a reset takes it,
// and the first sign after one reconnects and starts a new session.
TEST(Lifecycle, SignIsTheFirstCommandAfterAReset) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  const KeySet keys(tpm);
  keys.expect_usable(tpm);
  const Pkey public_key = parse_spki(keys.signing.public_key);
  const auto sign_and_verify = [&](const std::string& text) {
    const Bytes message = text_bytes(text);
    const Bytes signature = tpm.sign_digest(keys.signing.blob, DigestAlgorithm::sha256,
                                            digest_of(EVP_sha256(), message));
    EXPECT_TRUE(digest_verifies(public_key.get(), EVP_sha256(), message, signature)) << text;
  };
  swtpm.init_via_control_channel();
  sign_and_verify("after _TPM_Init");
  swtpm.restart();
  sign_and_verify("after a restart");
  for (int i = 0; i < 20; ++i) sign_and_verify("then in a row " + std::to_string(i));
  EXPECT_EQ(tpm.stats().reconnects, 2u);
  EXPECT_EQ(tpm.stats().signing_sessions, 3u);
  keys.expect_usable(tpm);
}

// A session gone from under the connection (TPM_RC_REFERENCE_S0 on the
// next sign) is recovered like a reset: reconnect, new sessions, sign again.
// The other client talks to swtpm while the Tpm2 lives: both on tpm2-tss's
// TCTI, which holds no connection between commands.
TEST(Lifecycle, SigningSessionFlushedFromOutsideIsReplaced) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.shared_config());
  const KeySet keys(tpm);
  keys.expect_usable(tpm);
  {
    const RawEsys raw(swtpm.tcti());
    EXPECT_EQ(raw.count(TPM2_LOADED_SESSION_FIRST), 2u);  // the salted one and the signing one
    raw.flush_sessions();
  }
  const Pkey public_key = parse_spki(keys.signing.public_key);
  const Bytes message = text_bytes("after the flush");
  const Bytes signature =
      tpm.sign_digest(keys.signing.blob, DigestAlgorithm::sha256, digest_of(EVP_sha256(), message));
  EXPECT_TRUE(digest_verifies(public_key.get(), EVP_sha256(), message, signature));
  EXPECT_EQ(tpm.stats().reconnects, 1u);
  EXPECT_EQ(tpm.stats().signing_sessions, 2u);
  keys.expect_usable(tpm);
}

TEST(Lifecycle, UnreachableTpmIsUnavailableThenRecovers) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  const KeySet keys(tpm);
  swtpm.stop();
  try {
    tpm.unseal(keys.sealed_blob);
    FAIL() << "unsealed with no TPM";
  } catch (const Error& error) {
    EXPECT_EQ(error.failure(), Failure::unavailable) << error.what();
  }
  swtpm.start();
  keys.expect_usable(tpm);
}

TEST(Lifecycle, NoTpmAtStartIsUnavailable) {
  Config config;
  config.tcti = "swtpm:host=127.0.0.1,port=1";
  EXPECT_EQ(failure_of_call([&] { Tpm2 tpm(config); }), Failure::unavailable);
  config.tcti = "nosuchtcti:whatever";
  EXPECT_EQ(failure_of_call([&] { Tpm2 tpm(config); }), Failure::unavailable);
}

TEST(Lifecycle, LeftoversOfAKilledProcessAreFlushedAtStart) {
  Swtpm swtpm;
  {
    // Fill every transient slot and leave a session, then go away.
    const RawEsys raw(swtpm.tcti());
    raw.create_primary();
    raw.create_primary();
    raw.create_primary();
    raw.start_session();
    EXPECT_EQ(raw.count(TPM2_TRANSIENT_FIRST), 3u);
    EXPECT_EQ(raw.count(TPM2_LOADED_SESSION_FIRST), 1u);
  }
  std::unique_ptr<KeySet> keys;
  {
    Tpm2 tpm(swtpm.config());
    EXPECT_EQ(tpm.stats().flushed_at_start, 4u);
    keys = std::make_unique<KeySet>(tpm);
    keys->expect_usable(tpm);
  }
  const RawEsys after(swtpm.tcti());
  EXPECT_EQ(after.count(TPM2_TRANSIENT_FIRST), 0u);
  EXPECT_EQ(after.count(TPM2_LOADED_SESSION_FIRST), 0u);
  EXPECT_EQ(after.count(TPM2_ACTIVE_SESSION_FIRST), 0u);
}

TEST(Lifecycle, ModelNamesTheTpm) {
  Swtpm swtpm;
  Tpm2 tpm(swtpm.config());
  EXPECT_EQ(tpm.model().rfind("IBM", 0), 0u) << tpm.model();
  EXPECT_EQ(tpm.stats().loaded_capacity, 2u);
}

}  // namespace
}  // namespace m2mvault::hsm::tpm2::testing
