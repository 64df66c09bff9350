// Lifetimes under a controlled clock (TS-0003 10.7): a derived key never
// outlives its Ke, and an expired key is refused with `expired` by every
// operation that uses it. Real SoftHSM2 token, injected clock.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>

#include "api/error.h"
#include "tests/hsm/hsm_environment.h"
#include "vault/vault.h"

namespace m2mvault::vault {
namespace {

constexpr std::int64_t kStart = 1'900'000'000;

class Expiry : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/m2mvault-expiry-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    catalog_ = Catalog::open(dir_ / "catalog.db");
    vault_ = std::make_unique<Vault>(*catalog_, *hsm::testing::setup().backend,
                                     [this] { return now_.load(); });
  }
  void TearDown() override {
    vault_.reset();
    catalog_.reset();
    std::filesystem::remove_all(dir_);
  }
  ErrorCode code_of(const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return e.code();
    }
    return static_cast<ErrorCode>(-1);
  }

  std::atomic<std::int64_t> now_{kStart};
  std::filesystem::path dir_;
  std::unique_ptr<Catalog> catalog_;
  std::unique_ptr<Vault> vault_;
};

TEST_F(Expiry, AKpsaDerivedFromAKeExpiresWithIt) {
  ImportSpec ke;
  ke.kind = KeyKind::ke;
  ke.identifier = "AAECAwQFBgcICQoLDA0ODw==@mef.example.com";
  ke.name = "ke";
  ke.expires = kStart + 100;
  const std::vector<std::uint8_t> value(32, 0x42);
  vault_->import_key(ke, value);

  DeriveSpec kpsa;
  kpsa.derivation = Derivation::provisioned_secure_connection_key;
  kpsa.parent = "ke";
  kpsa.subject = "C123456";
  kpsa.name = "kpsa-unbounded";
  kpsa.identifier = "kpsa-unbounded@in.example.com";
  EXPECT_EQ(vault_->derive(kpsa).expires, kStart + 100);  // no expiry asked: the Ke's
  kpsa.name = "kpsa-later";
  kpsa.identifier = "kpsa-later@in.example.com";
  kpsa.expires = kStart + 5000;
  EXPECT_EQ(vault_->derive(kpsa).expires, kStart + 100);  // asked later: clamped
  kpsa.name = "kpsa-sooner";
  kpsa.identifier = "kpsa-sooner@in.example.com";
  kpsa.expires = kStart + 50;
  EXPECT_EQ(vault_->derive(kpsa).expires, kStart + 50);  // sooner stays sooner

  now_ = kStart + 99;
  EXPECT_TRUE(vault_->check("kpsa-unbounded").matches);
  now_ = kStart + 100;  // the Ke's last second has passed
  EXPECT_EQ(code_of([&] { vault_->check("kpsa-unbounded"); }), ErrorCode::expired);
  EXPECT_EQ(code_of([&] { vault_->check("ke"); }), ErrorCode::expired);
  kpsa.name = "kpsa-too-late";
  kpsa.identifier = "kpsa-too-late@in.example.com";
  kpsa.expires.reset();
  EXPECT_EQ(code_of([&] { vault_->derive(kpsa); }), ErrorCode::expired);
  // Metadata stays readable, so an operator can see what expired.
  EXPECT_EQ(vault_->show("kpsa-unbounded").expires, kStart + 100);
}

TEST_F(Expiry, AnExpiredSigningKeyNoLongerSigns) {
  GenerateSpec spec;
  spec.name = "short-signer";
  spec.expires = kStart + 10;
  vault_->generate_signing_key(spec);
  const std::vector<std::uint8_t> digest(32, 0x01);
  EXPECT_FALSE(vault_->sign("short-signer", hsm::SignatureScheme::ecdsa, digest).empty());
  now_ = kStart + 10;
  EXPECT_EQ(code_of([&] { vault_->sign("short-signer", hsm::SignatureScheme::ecdsa, digest); }),
            ErrorCode::expired);
}

}  // namespace
}  // namespace m2mvault::vault
