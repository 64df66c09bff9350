#include "tests/hsm/hsm_environment.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <stdexcept>

namespace m2mvault::hsm::testing {
namespace {

namespace fs = std::filesystem;

std::string read_first_line(const fs::path& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

void must_run(const std::string& command) {
  if (run(command) != 0) throw std::runtime_error("setup command failed: " + command);
}

std::unique_ptr<HsmSetup> make_setup() {
  auto s = std::make_unique<HsmSetup>();
  std::string pattern = (fs::temp_directory_path() / "m2mvault-hsm-XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  s->root = pattern;
  s->staging = s->root / "state.staging";
  s->state = s->root / "state";

  pkcs11::create_embedded_token(s->staging, s->state);
  fs::rename(s->staging, s->state);
  s->config = pkcs11::embedded_config(s->state);
  s->user_pin = read_first_line(s->state / pkcs11::EmbeddedLayout::user_pin);

  // Extra tokens, made by other processes before this one loads the module.
  const std::string env = "SOFTHSM2_CONF='" + s->config.softhsm2_conf.string() + "' ";
  const std::string module = s->config.module.string();
  for (const char* label : {kNoKekToken, kPinTestToken, kAdoptToken, kEnsureKekToken}) {
    must_run(env + "softhsm2-util --init-token --free --label " + label +
             " --so-pin 87654321 --pin " + s->user_pin + " >/dev/null");
  }
  const std::string tool = env + "pkcs11-tool --module " + module + " --token-label " +
                           kAdoptToken + " --login --pin " + s->user_pin;
  must_run(tool + " --keypairgen --key-type EC:prime256v1 --id " + kDeviceKeyIdHex + " --label " +
           kDeviceKeyLabel + " >/dev/null 2>&1");
  must_run(tool + " --keypairgen --key-type EC:secp384r1 --id " + kP384KeyIdHex +
           " --label p384-key >/dev/null 2>&1");

  s->backend = pkcs11::open(s->config);
  return s;
}

std::unique_ptr<HsmSetup>& holder() {
  static std::unique_ptr<HsmSetup> instance;
  return instance;
}

// Closes the backend while the module is still alive (static destructors of
// a dlopened module may run before ours) and removes the directory.
class Teardown : public ::testing::Environment {
 public:
  void TearDown() override {
    if (auto& s = holder()) {
      s->backend.reset();
      std::error_code ignored;
      fs::remove_all(s->root, ignored);
    }
  }
};

}  // namespace

int run(const std::string& command) {
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

HsmSetup& setup() {
  auto& instance = holder();
  if (!instance) instance = make_setup();
  return *instance;
}

}  // namespace m2mvault::hsm::testing

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  // gtest takes ownership of the environment.
  ::testing::AddGlobalTestEnvironment(
      std::make_unique<m2mvault::hsm::testing::Teardown>().release());
  return RUN_ALL_TESTS();
}
