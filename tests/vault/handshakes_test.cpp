// Handshake sessions (vault/handshakes.h) on a real SoftHSM2 token: whose a
// session is, how many a uid may hold, expiry, and that a failed handshake
// ends its session and stores nothing. The exports themselves are checked
// against openssl in tests/integration/test_tls_export.py.
#include "vault/handshakes.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <thread>

#include "api/error.h"
#include "tests/hsm/hsm_environment.h"

namespace m2mvault::vault {
namespace {

constexpr uid_t kAlice = 1000;
constexpr uid_t kBob = 1001;

ErrorCode code_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.code();
  }
  ADD_FAILURE() << "no error";
  return ErrorCode::internal;
}

class HandshakeSessions : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/m2mvault-handshakes-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    catalog_ = Catalog::open(dir_ / "catalog.db");
    vault_ = std::make_unique<Vault>(*catalog_, se());
    ImportSpec km;
    km.kind = KeyKind::km;
    km.identifier = "km-1@mymaf.provider.org";
    const std::vector<std::uint8_t> value(32, 0x5a);
    vault_->import_key(km, value);
    spec_.procedure = HandshakeProcedure::maf;
    spec_.psk_key = "km-1@mymaf.provider.org";
    spec_.fqdn = "mymaf.provider.org";
  }
  void TearDown() override {
    vault_.reset();
    catalog_.reset();
    std::filesystem::remove_all(dir_);
  }
  static hsm::SecureElement& se() { return *hsm::testing::setup().backend; }

  std::filesystem::path dir_;
  std::unique_ptr<Catalog> catalog_;
  std::unique_ptr<Vault> vault_;
  Config config_;
  HandshakeSpec spec_;
};

TEST_F(HandshakeSessions, StartGivesTheClientHelloWithTheMafInSni) {
  Handshakes handshakes(*vault_, se(), config_);
  const auto progress = handshakes.start(kAlice, spec_, {});
  EXPECT_FALSE(progress.done);
  ASSERT_GT(progress.output.size(), 5u);
  EXPECT_EQ(progress.output[0], 0x16);  // a handshake record
  EXPECT_EQ(progress.output[5], 0x01);  // ClientHello
  const std::string hello(progress.output.begin(), progress.output.end());
  EXPECT_NE(hello.find("mymaf.provider.org"), std::string::npos);
  EXPECT_EQ(handshakes.active(), 1u);
}

TEST_F(HandshakeSessions, ASessionBelongsToTheUidThatStartedIt) {
  Handshakes handshakes(*vault_, se(), config_);
  const auto progress = handshakes.start(kAlice, spec_, {});
  EXPECT_EQ(code_of([&] { handshakes.step(kBob, progress.session, {}); }), ErrorCode::not_found);
  EXPECT_EQ(code_of([&] { handshakes.abort(kBob, progress.session); }), ErrorCode::not_found);
  EXPECT_EQ(handshakes.active(), 1u);  // Bob's attempts did not end Alice's session
  handshakes.abort(kAlice, progress.session);
  EXPECT_EQ(handshakes.active(), 0u);
  EXPECT_EQ(code_of([&] { handshakes.step(kAlice, progress.session, {}); }), ErrorCode::not_found);
}

TEST_F(HandshakeSessions, EachUidHoldsABoundedNumber) {
  config_.handshake.per_principal = 3;
  Handshakes handshakes(*vault_, se(), config_);
  std::vector<std::string> alices;
  for (int i = 0; i < 3; ++i) alices.push_back(handshakes.start(kAlice, spec_, {}).session);
  EXPECT_EQ(code_of([&] { handshakes.start(kAlice, spec_, {}); }), ErrorCode::backend_unavailable);
  handshakes.start(kBob, spec_, {});  // another uid is not affected
  handshakes.abort(kAlice, alices[0]);
  handshakes.start(kAlice, spec_, {});  // a freed place can be used again
  EXPECT_EQ(handshakes.active(), 4u);
}

TEST_F(HandshakeSessions, AnUnfinishedSessionExpires) {
  config_.handshake.timeout = std::chrono::seconds(1);
  Handshakes handshakes(*vault_, se(), config_);
  const auto progress = handshakes.start(kAlice, spec_, {});
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  EXPECT_EQ(code_of([&] { handshakes.step(kAlice, progress.session, {}); }), ErrorCode::not_found);
  EXPECT_EQ(handshakes.active(), 0u);
}

TEST_F(HandshakeSessions, GarbageFromThePeerFailsTheHandshakeEndsTheSessionAndStoresNothing) {
  Handshakes handshakes(*vault_, se(), config_);
  const std::size_t keys = vault_->count();
  const auto progress = handshakes.start(kAlice, spec_, {});
  const std::vector<std::uint8_t> garbage = {'H', 'T', 'T', 'P', '/', '1',  '.',
                                             '1', ' ', '2', '0', '0', '\r', '\n'};
  EXPECT_EQ(code_of([&] { handshakes.step(kAlice, progress.session, garbage); }),
            ErrorCode::handshake_failed);
  EXPECT_EQ(code_of([&] { handshakes.step(kAlice, progress.session, {}); }), ErrorCode::not_found);
  EXPECT_EQ(vault_->count(), keys);
  EXPECT_EQ(handshakes.active(), 0u);
}

TEST_F(HandshakeSessions, BadSpecsAreRefusedBeforeAnySessionExists) {
  Handshakes handshakes(*vault_, se(), config_);
  HandshakeSpec no_fqdn = spec_;
  no_fqdn.fqdn = "not a host";
  EXPECT_EQ(code_of([&] { handshakes.start(kAlice, no_fqdn, {}); }), ErrorCode::invalid_argument);
  HandshakeSpec enrol_with_km = spec_;
  enrol_with_km.procedure = HandshakeProcedure::enrolment;
  EXPECT_EQ(code_of([&] { handshakes.start(kAlice, enrol_with_km, {}); }),
            ErrorCode::invalid_argument);
  HandshakeSpec escertke_with_psk = spec_;
  escertke_with_psk.procedure = HandshakeProcedure::escertke_initiate;
  EXPECT_EQ(code_of([&] { handshakes.start(kAlice, escertke_with_psk, {}); }),
            ErrorCode::invalid_argument);
  HandshakeSpec past = spec_;
  past.expires = 1'000'000'000;
  EXPECT_EQ(code_of([&] { handshakes.start(kAlice, past, {}); }), ErrorCode::invalid_argument);
  HandshakeSpec missing = spec_;
  missing.psk_key = "nobody@mymaf.provider.org";
  EXPECT_EQ(code_of([&] { handshakes.start(kAlice, missing, {}); }), ErrorCode::not_found);
  HandshakeSpec bad_suites = spec_;
  bad_suites.cipher_suites = "NO-SUCH-SUITE";
  EXPECT_EQ(code_of([&] { handshakes.start(kAlice, bad_suites, {}); }),
            ErrorCode::invalid_argument);
  EXPECT_EQ(handshakes.active(), 0u);
}

}  // namespace
}  // namespace m2mvault::vault
