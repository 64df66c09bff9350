// OpenSSL-side references and small helpers for the TPM tests.
#pragma once

#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>

#include "hsm/tpm2/tpm2.h"
#include "tests/hsm/test_support.h"
#include "tests/hsm/tpm2/swtpm_fixture.h"

namespace m2mvault::hsm::tpm2::testing {

using hsm::testing::from_hex;
using hsm::testing::openssl_hmac;
using hsm::testing::parse_spki;
using hsm::testing::Pkey;
using hsm::testing::random_bytes;
using hsm::testing::text_bytes;

// A state directory for one test, removed at the end.
class TempDir {
 public:
  TempDir() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "m2mvault-tpm2-state-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

inline bool same_bytes(const SecureBuffer& buffer, std::span<const std::uint8_t> bytes) {
  return std::equal(buffer.data(), buffer.data() + buffer.size(), bytes.begin(), bytes.end());
}

inline Bytes digest_of(const EVP_MD* md, std::span<const std::uint8_t> message) {
  Bytes out(static_cast<std::size_t>(EVP_MD_get_size(md)));
  unsigned int size = 0;
  EVP_Digest(message.data(), message.size(), out.data(), &size, md, nullptr);
  return out;
}

// EVP_DigestVerify of a DER ECDSA signature over `message` with `md`.
inline bool digest_verifies(EVP_PKEY* key, const EVP_MD* md, std::span<const std::uint8_t> message,
                            std::span<const std::uint8_t> signature) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, md, nullptr, key) != 1) return false;
  return EVP_DigestVerify(ctx.get(), signature.data(), signature.size(), message.data(),
                          message.size()) == 1;
}

// The TPM error number a TpmError carries (handle/parameter index removed).
template <typename Call>
TSS2_RC tpm_error_of(Call&& call) {
  try {
    call();
  } catch (const TpmError& error) {
    return tpm_error_number(error.rc());
  } catch (const std::exception& error) {
    ADD_FAILURE() << "not a TpmError: " << error.what();
    return 0;
  }
  ADD_FAILURE() << "no error";
  return 0;
}

// The hsm::Failure an operation throws.
template <typename Call>
std::optional<Failure> failure_of_call(Call&& call) {
  try {
    call();
  } catch (const Error& error) {
    return error.failure();
  }
  return std::nullopt;
}

}  // namespace m2mvault::hsm::tpm2::testing
