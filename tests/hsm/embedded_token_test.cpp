// First initialization of the embedded token, and open() refusing what it cannot use.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "hsm/pkcs11/pkcs11_backend.h"
#include "tests/hsm/hsm_environment.h"
#include "tests/hsm/raw_pkcs11.h"

namespace m2mvault::hsm::testing {
namespace {

namespace fs = std::filesystem;
using pkcs11::EmbeddedLayout;

std::string read_file(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

unsigned mode_of(const fs::path& path) {
  struct stat info {};
  EXPECT_EQ(::stat(path.c_str(), &info), 0) << path;
  return info.st_mode & 07777;
}

// Expects open(config) to throw Error(unavailable) whose message contains `names`.
void expect_unavailable(const pkcs11::Config& config, const std::string& names) {
  try {
    pkcs11::open(config);
    FAIL() << "open() succeeded";
  } catch (const Error& error) {
    EXPECT_EQ(error.failure(), Failure::unavailable);
    EXPECT_NE(std::string(error.what()).find(names), std::string::npos) << error.what();
  }
}

TEST(EmbeddedToken, CreationWritesConfPinsAndTokenForTheFinalDirectory) {
  HsmSetup& s = setup();
  EXPECT_FALSE(fs::exists(s.staging));
  for (const char* name :
       {EmbeddedLayout::conf, EmbeddedLayout::user_pin, EmbeddedLayout::so_pin}) {
    EXPECT_TRUE(fs::is_regular_file(s.state / name)) << name;
  }
  EXPECT_EQ(mode_of(s.state / EmbeddedLayout::user_pin), 0600u);
  EXPECT_EQ(mode_of(s.state / EmbeddedLayout::so_pin), 0600u);
  EXPECT_FALSE(fs::exists(s.state / "softhsm2-staging.conf"));
  EXPECT_FALSE(fs::is_empty(s.state / EmbeddedLayout::tokens));

  const std::string conf = read_file(s.state / EmbeddedLayout::conf);
  EXPECT_NE(conf.find("directories.tokendir = " + (s.state / "tokens").string() + "\n"),
            std::string::npos)
      << conf;
  EXPECT_NE(conf.find("objectstore.backend = file"), std::string::npos);
  EXPECT_EQ(conf.find(s.staging.string() + "/"), std::string::npos) << conf;

  EXPECT_EQ(s.user_pin.size(), 32u);
  EXPECT_NE(read_file(s.state / EmbeddedLayout::so_pin).substr(0, 32), s.user_pin);
}

TEST(EmbeddedToken, OpenSucceedsAfterTheRename) {
  HsmSetup& s = setup();
  const BackendInfo info = s.backend->info();
  EXPECT_EQ(info.backend, "pkcs11");
  EXPECT_EQ(info.token_label, pkcs11::kDefaultTokenLabel);
  EXPECT_EQ(info.module, pkcs11::kDefaultSoftHsmModule);
  EXPECT_EQ(info.token_model, "SoftHSM v2");
  // A second backend on the same token shares the loaded module.
  EXPECT_NO_THROW(pkcs11::open(s.config));
}

TEST(EmbeddedToken, CreationWithAMissingModuleFailsNamingIt) {
  HsmSetup& s = setup();
  try {
    pkcs11::create_embedded_token(s.root / "other.staging", s.root / "other",
                                  "/nonexistent/libnope.so");
    FAIL() << "create_embedded_token succeeded";
  } catch (const Error& error) {
    EXPECT_EQ(error.failure(), Failure::unavailable);
    EXPECT_NE(std::string(error.what()).find("/nonexistent/libnope.so"), std::string::npos)
        << error.what();
  }
}

TEST(OpenToken, WrongPinIsRefusedNamingThePinFile) {
  HsmSetup& s = setup();
  const fs::path wrong = s.root / "wrong-pin";
  std::ofstream(wrong) << "0000000000\n";
  pkcs11::Config config = s.config;
  config.token_label = kPinTestToken;
  config.pin_file = wrong;
  expect_unavailable(config, wrong.string());
  expect_unavailable(config, "CKR_PIN_INCORRECT");
}

TEST(OpenToken, MissingPinFileIsRefusedNamingIt) {
  pkcs11::Config config = setup().config;
  config.pin_file = setup().root / "no-such-pin";
  expect_unavailable(config, config.pin_file.string());
}

TEST(OpenToken, WrongTokenLabelIsRefusedNamingIt) {
  pkcs11::Config config = setup().config;
  config.token_label = "no-such-token";
  expect_unavailable(config, "'no-such-token'");
}

TEST(OpenToken, TokenWithoutKekIsRefused) {
  pkcs11::Config config = setup().config;
  config.token_label = kNoKekToken;
  expect_unavailable(config, "KEK missing");
}

TEST(OpenToken, MissingModuleIsRefusedNamingIt) {
  pkcs11::Config config = setup().config;
  config.module = "/nonexistent/libnope.so";
  expect_unavailable(config, "/nonexistent/libnope.so");
}

TEST(EnsureKek, CreatesTheKekOnceInAnExternalToken) {
  pkcs11::Config config = setup().config;
  config.token_label = kEnsureKekToken;
  expect_unavailable(config, "KEK missing");
  pkcs11::ensure_kek(config);
  pkcs11::ensure_kek(config);
  EXPECT_NO_THROW(pkcs11::open(config));

  RawSession raw(config.module, kEnsureKekToken, setup().user_pin);
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  std::string label = pkcs11::kKekLabel;
  CK_BBOOL yes = CK_TRUE;
  const auto keks = raw.find({{CKA_CLASS, &cls, sizeof cls},
                              {CKA_LABEL, label.data(), label.size()},
                              {CKA_TOKEN, &yes, sizeof yes}});
  ASSERT_EQ(keks.size(), 1u);
  EXPECT_EQ(raw.read_value_rv(keks.front()), CKR_ATTRIBUTE_SENSITIVE);
}

}  // namespace
}  // namespace m2mvault::hsm::testing
