#include "vault/config.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <fstream>

#include "api/error.h"

namespace m2mvault::vault {
namespace {

class ConfigFile : public ::testing::Test {
 protected:
  std::filesystem::path write(const std::string& text) {
    char tmpl[] = "/tmp/m2mvault-config-XXXXXX";
    int fd = ::mkstemp(tmpl);
    ::close(fd);
    paths_.emplace_back(tmpl);
    std::ofstream(paths_.back()) << text;
    return paths_.back();
  }
  void TearDown() override {
    for (const auto& p : paths_) std::filesystem::remove(p);
  }
  std::vector<std::filesystem::path> paths_;
};

TEST_F(ConfigFile, DefaultsNeedNoFile) {
  Config c = load_config(std::nullopt);
  EXPECT_TRUE(c.embedded());
  EXPECT_EQ(c.socket, "/run/m2mvault/m2mvault.sock");
  EXPECT_EQ(c.pkcs11.token_label, "m2mvault");
}

TEST_F(ConfigFile, ReadsAnExternalToken) {
  Config c = load_config(
      write("socket = \"/tmp/x.sock\"\nthreads = 4\n[pkcs11]\nmodule = \"/usr/lib/hsm.so\"\n"
            "token_label = \"gw\"\npin_file = \"/etc/pin\"\n"));
  EXPECT_FALSE(c.embedded());
  EXPECT_EQ(c.socket, "/tmp/x.sock");
  EXPECT_EQ(c.threads, 4u);
  EXPECT_EQ(c.pkcs11.token_label, "gw");
}

TEST_F(ConfigFile, ReadsTheTpmBackendWithItsTctiAndTuning) {
  Config c =
      load_config(write("backend = \"tpm2\"\ntcti = \"swtpm:port=2321\"\n"
                        "[tpm2]\npassword_auth_for_signing = true\n"));
  EXPECT_TRUE(c.tpm());
  EXPECT_FALSE(c.embedded());
  EXPECT_EQ(c.tcti, "swtpm:port=2321");
  EXPECT_TRUE(c.tpm2.password_auth_for_signing);
  EXPECT_NO_THROW(check_backend(c));
  EXPECT_FALSE(load_config(write("backend = \"tpm2\"\n")).tpm2.password_auth_for_signing);
}

TEST_F(ConfigFile, TheAuditCheckpointsNvIndexIsAnOwnerIndexWithRoomForItsCounter) {
  EXPECT_EQ(load_config(write("backend = \"tpm2\"\n")).tpm2.audit_nv_index, 0x01834D30u);
  EXPECT_EQ(load_config(write("backend = \"tpm2\"\n[tpm2]\naudit_nv_index = 0x01800010\n"))
                .tpm2.audit_nv_index,
            0x01800010u);
  for (const char* bad : {"0x01C00002", "0x01BFFFFF", "0x017FFFFF", "-1", "\"0x01800010\""}) {
    EXPECT_THROW(load_config(write(std::string("[tpm2]\naudit_nv_index = ") + bad + "\n")), Error)
        << bad;
  }
}

TEST_F(ConfigFile, TctiWithoutTheTpmBackendAndUnknownBackendsAreRejected) {
  EXPECT_THROW(load_config(write("tcti = \"swtpm:port=2321\"\n")), Error);
  EXPECT_THROW(load_config(write("backend = \"tpm3\"\n")), Error);
  Config c = load_config(std::nullopt);
  c.tcti = "swtpm:port=2321";  // --tcti without --backend tpm2
  EXPECT_THROW(check_backend(c), Error);
  c.backend = "tpm2";
  EXPECT_NO_THROW(check_backend(c));
}

TEST_F(ConfigFile, UnknownKeyIsRejectedWithItsLine) {
  try {
    load_config(write("socket = \"/tmp/x.sock\"\nsokcet = 1\n"));
    FAIL() << "accepted an unknown key";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::invalid_argument);
    EXPECT_NE(std::string(e.what()).find(":2:"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("sokcet"), std::string::npos) << e.what();
  }
}

TEST_F(ConfigFile, SyntaxErrorNamesTheLine) {
  try {
    load_config(write("threads = 4\nsocket = \n"));
    FAIL() << "accepted a broken file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(":2:"), std::string::npos) << e.what();
  }
}

TEST_F(ConfigFile, ExternalModuleNeedsAPinFile) {
  EXPECT_THROW(load_config(write("[pkcs11]\nmodule = \"/usr/lib/hsm.so\"\n")), Error);
}

TEST_F(ConfigFile, WrongTypeIsRejected) {
  EXPECT_THROW(load_config(write("threads = \"many\"\n")), Error);
  EXPECT_THROW(load_config(write("threads = -1\n")), Error);
}

}  // namespace
}  // namespace m2mvault::vault

namespace m2mvault::vault {
namespace {

class IdFormatConfig : public ConfigFile {};

TEST_F(IdFormatConfig, Base64ByDefaultHexPerFqdn) {
  Config c = load_config(
      write("[id_format]\n\"MEF.example.com\" = \"hex\"\n\"maf.example.com\" = \"base64\"\n"));
  EXPECT_EQ(c.id_format_for("mef.EXAMPLE.com"), IdFormat::hex);
  EXPECT_EQ(c.id_format_for("maf.example.com"), IdFormat::base64);
  EXPECT_EQ(c.id_format_for("other.example.com"), IdFormat::base64);
  EXPECT_THROW(load_config(write("[id_format]\n\"mef.example.com\" = \"base32\"\n")), Error);
  EXPECT_THROW(load_config(write("[id_format]\n\"not an fqdn\" = \"hex\"\n")), Error);
}

TEST_F(ConfigFile, HandshakeDefaultsAndOverrides) {
  Config defaults = load_config(std::nullopt);
  EXPECT_EQ(defaults.handshake.timeout, std::chrono::seconds(60));
  EXPECT_EQ(defaults.handshake.per_principal, 8u);
  EXPECT_EQ(defaults.handshake.ke_lifetime, std::chrono::days(365));
  EXPECT_EQ(defaults.handshake.kc_lifetime, std::chrono::days(30));
  EXPECT_EQ(defaults.handshake.e2e_lifetime, std::chrono::days(30));
  EXPECT_EQ(defaults.handshake.psk_ciphers, "PSK-AES128-CBC-SHA256");
  EXPECT_EQ(defaults.handshake.certificate_ciphers, "ECDHE-ECDSA-AES128-SHA256");
  Config c = load_config(write(
      "[handshake]\ntimeout_s = 5\nper_principal = 2\nke_lifetime_s = 100\nkc_lifetime_s = 200\n"
      "e2e_lifetime_s = 300\npsk_ciphers = \"PSK-AES256-CBC-SHA384\"\n"));
  EXPECT_EQ(c.handshake.timeout, std::chrono::seconds(5));
  EXPECT_EQ(c.handshake.per_principal, 2u);
  EXPECT_EQ(c.handshake.ke_lifetime, std::chrono::seconds(100));
  EXPECT_EQ(c.handshake.kc_lifetime, std::chrono::seconds(200));
  EXPECT_EQ(c.handshake.e2e_lifetime, std::chrono::seconds(300));
  EXPECT_EQ(c.handshake.psk_ciphers, "PSK-AES256-CBC-SHA384");
  EXPECT_TRUE(c.handshake.require_extended_master_secret);
  EXPECT_FALSE(load_config(write("[handshake]\nrequire_extended_master_secret = false\n"))
                   .handshake.require_extended_master_secret);
}

TEST_F(ConfigFile, HandshakeSectionRejectsUnknownKeysAndNonPositiveValues) {
  for (const char* text : {"[handshake]\ntimeout = 5\n", "[handshake]\ntimeout_s = 0\n",
                           "[handshake]\nper_principal = -1\n", "handshake = 3\n",
                           "[handshake]\nrequire_extended_master_secret = 1\n"}) {
    try {
      load_config(write(text));
      FAIL() << "accepted: " << text;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::invalid_argument) << text;
      EXPECT_NE(std::string(e.what()).find(":"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace m2mvault::vault
