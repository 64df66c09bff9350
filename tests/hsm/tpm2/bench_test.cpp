// Micro benchmark on swtpm, disabled by default:
//   tpm2_tests --gtest_also_run_disabled_tests --gtest_filter='*Benchmark*'
#include <sys/resource.h>

#include <chrono>

#include "tests/hsm/tpm2/tpm2_test_support.h"

namespace m2mvault::hsm::tpm2::testing {
namespace {

using Clock = std::chrono::steady_clock;

double cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

// Operations per second (wall clock), and this process's CPU time per
// operation (ESAPI and OpenSSL work, independent of swtpm and machine load).
struct Rate {
  double per_second;
  double client_cpu_ms;
};

template <typename Operation>
Rate measure(int count, Operation&& operation) {
  const auto start = Clock::now();
  const double cpu_start = cpu_seconds();
  for (int i = 0; i < count; ++i) operation(i);
  const std::chrono::duration<double> elapsed = Clock::now() - start;
  return {count / elapsed.count(), (cpu_seconds() - cpu_start) * 1000.0 / count};
}

void report(const char* what, Rate rate) {
  std::printf("%-46s %7.0f /s   client CPU %6.3f ms/op\n", what, rate.per_second,
              rate.client_cpu_ms);
}

void run_benchmark(bool password_auth_for_signing) {
  Swtpm swtpm;
  Config config = swtpm.config();
  config.password_auth_for_signing = password_auth_for_signing;
  Tpm2 tpm(config);
  std::printf("-- signing authorized by %s\n",
              password_auth_for_signing ? "password" : "the signing HMAC session (SAPI)");
  constexpr int kCount = 500;
  constexpr int kKeys = 8;  // more than the 2 slots: every use loads
  const Bytes digest = digest_of(EVP_sha256(), text_bytes("bench"));
  const Bytes data = text_bytes("oneM2M Enrolment Key to Master Credential derivation maf");

  std::vector<Bytes> signing, hmac, sealed;
  for (int i = 0; i < kKeys; ++i) {
    signing.push_back(tpm.generate_signing_key().blob);
    hmac.push_back(tpm.create_hmac_key(random_bytes(32)));
    sealed.push_back(tpm.seal(random_bytes(32)));
  }
  report("ECDSA P-256 sign, key loaded", measure(kCount, [&](int) {
           tpm.sign_digest(signing[0], DigestAlgorithm::sha256, digest);
         }));
  report("HMAC-SHA-256, key loaded", measure(kCount, [&](int) { tpm.hmac_sha256(hmac[0], data); }));
  report("unseal, object loaded", measure(kCount, [&](int) { tpm.unseal(sealed[0]); }));
  const auto loads_before = tpm.stats().loads;
  report("ECDSA P-256 sign, 8 keys round robin (churn)", measure(kCount, [&](int i) {
           tpm.sign_digest(signing[static_cast<std::size_t>(i % kKeys)], DigestAlgorithm::sha256,
                           digest);
         }));
  report("HMAC-SHA-256, 8 keys round robin (churn)", measure(kCount, [&](int i) {
           tpm.hmac_sha256(hmac[static_cast<std::size_t>(i % kKeys)], data);
         }));
  report("unseal, 8 objects round robin (churn)",
         measure(kCount, [&](int i) { tpm.unseal(sealed[static_cast<std::size_t>(i % kKeys)]); }));
  EXPECT_GE(tpm.stats().loads - loads_before, static_cast<std::uint64_t>(3 * kCount));
  report("seal (TPM2_Create, 32 bytes)", measure(200, [&](int) { tpm.seal(digest); }));
  report("derive Kpsa (TPM2_HMAC + TPM2_Create)",
         measure(200, [&](int) { tpm.derive_sealed(hmac[0], data); }));
  report("generate P-256 signing key", measure(100, [&](int) { tpm.generate_signing_key(); }));
}

TEST(Tpm2Benchmark, DISABLED_SignHmacUnseal) {
  run_benchmark(false);
  run_benchmark(true);
}

}  // namespace
}  // namespace m2mvault::hsm::tpm2::testing
