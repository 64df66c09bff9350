// One SoftHSM2 setup per test process (SoftHSM2 reads SOFTHSM2_CONF once per
// C_Initialize and is a per-process singleton): the embedded token created
// through create_embedded_token() into a temporary state directory, plus
// extra tokens in the same tokendir for the failure and adoption tests, all
// made before the module is first loaded in this process.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "hsm/pkcs11/pkcs11_backend.h"

namespace m2mvault::hsm::testing {

inline constexpr const char* kNoKekToken = "nokek";
inline constexpr const char* kPinTestToken = "pintest";
inline constexpr const char* kAdoptToken = "adopt";
inline constexpr const char* kEnsureKekToken = "ensurekek";
inline constexpr const char* kDeviceKeyLabel = "device-key";
inline constexpr const char* kDeviceKeyIdHex = "a1b2c3d4";
inline constexpr const char* kP384KeyIdHex = "0384";

struct HsmSetup {
  std::filesystem::path root;     // the temporary directory
  std::filesystem::path staging;  // where create_embedded_token wrote (renamed away)
  std::filesystem::path state;    // the state directory after the rename
  std::string user_pin;
  pkcs11::Config config;  // embedded_config(state)
  std::unique_ptr<SecureElement> backend;
};

// The process's setup; created on first use, removed at exit.
HsmSetup& setup();

// Runs a shell command, returning its exit status.
int run(const std::string& command);

}  // namespace m2mvault::hsm::testing
