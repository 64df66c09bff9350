// Signs with a vault key through the m2mvault provider from many threads and
// from forked children at once, and verifies every signature in software
// with the public key (read without the provider). Used by
// tests/integration/test_provider.py, which restarts the daemon meanwhile.
//
//   provider_stress --modules DIR --socket PATH --key NAME --public PEM
//                   [--threads 8] [--children 4] [--seconds 3]
//
// Prints "at Ns: verified N" each second, then "verified N signatures, F
// failures"; exits 0 when F is 0 and every
// thread and child made at least one signature.
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rand.h>
#include <openssl/store.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "engine/provider/openssl_owners.h"

namespace {

using namespace m2mvault::provider;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string modules, socket, key, public_key;
  int threads = 8;
  int children = 4;
  int seconds = 3;
};

struct Counts {
  std::atomic<long> verified{0};
  std::atomic<long> failures{0};
};

// One signature by the provider, verified by the default provider of the
// default library context with the public key alone.
bool sign_and_verify(OSSL_LIB_CTX* libctx, EVP_PKEY* key, EVP_PKEY* public_key) {
  unsigned char message[64];
  if (RAND_bytes(message, sizeof message) != 1) return false;
  EvpMdCtxPtr sign(EVP_MD_CTX_new());
  unsigned char signature[512];
  size_t length = sizeof signature;
  if (!sign ||
      EVP_DigestSignInit_ex(sign.get(), nullptr, "SHA256", libctx, nullptr, key, nullptr) != 1 ||
      EVP_DigestSign(sign.get(), signature, &length, message, sizeof message) != 1) {
    return false;
  }
  EvpMdCtxPtr verify(EVP_MD_CTX_new());
  return verify &&
         EVP_DigestVerifyInit_ex(verify.get(), nullptr, "SHA256", nullptr, nullptr, public_key,
                                 nullptr) == 1 &&
         EVP_DigestVerify(verify.get(), signature, length, message, sizeof message) == 1;
}

void sign_until(Clock::time_point deadline, OSSL_LIB_CTX* libctx, EVP_PKEY* key,
                EVP_PKEY* public_key, Counts& counts, long& mine) {
  while (Clock::now() < deadline) {
    if (sign_and_verify(libctx, key, public_key)) {
      ++counts.verified;
      ++mine;
    } else {
      if (counts.failures++ < 3) {
        std::fprintf(stderr, "pid %d: a signature failed:\n", static_cast<int>(::getpid()));
        ERR_print_errors_fp(stderr);
      }
      ERR_clear_error();
    }
  }
}

// Signs from `threads` threads until the deadline; false if one made none.
bool run_threads(int threads, Clock::time_point deadline, OSSL_LIB_CTX* libctx, EVP_PKEY* key,
                 EVP_PKEY* public_key, Counts& counts) {
  std::vector<long> made(static_cast<std::size_t>(threads), 0);
  std::vector<std::thread> workers;
  for (int i = 0; i < threads; ++i) {
    workers.emplace_back(sign_until, deadline, libctx, key, public_key, std::ref(counts),
                         std::ref(made[static_cast<std::size_t>(i)]));
  }
  for (auto& worker : workers) worker.join();
  for (long n : made) {
    if (n == 0) return false;
  }
  return true;
}

struct Child {
  pid_t pid;
  int pipe_fd;
};

// Forks a child that signs from two threads until the deadline and reports
// "verified failures" on a pipe.
Child fork_child(Clock::time_point deadline, OSSL_LIB_CTX* libctx, EVP_PKEY* key,
                 EVP_PKEY* public_key) {
  int fds[2];
  if (::pipe(fds) != 0) std::abort();
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    Counts counts;
    const bool all = run_threads(2, deadline, libctx, key, public_key, counts);
    char line[64];
    const int n = std::snprintf(line, sizeof line, "%ld %ld\n", counts.verified.load(),
                                counts.failures.load() + (all ? 0 : 1));
    if (::write(fds[1], line, static_cast<size_t>(n)) != n) ::_exit(3);
    ::_exit(0);
  }
  ::close(fds[1]);
  return {pid, fds[0]};
}

bool parse(int argc, char** argv, Options& o) {
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const char* value = argv[i + 1];
    if (flag == "--modules")
      o.modules = value;
    else if (flag == "--socket")
      o.socket = value;
    else if (flag == "--key")
      o.key = value;
    else if (flag == "--public")
      o.public_key = value;
    else if (flag == "--threads")
      o.threads = std::atoi(value);
    else if (flag == "--children")
      o.children = std::atoi(value);
    else if (flag == "--seconds")
      o.seconds = std::atoi(value);
    else
      return false;
  }
  return !o.modules.empty() && !o.key.empty() && !o.public_key.empty() && o.threads > 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (!parse(argc, argv, o)) {
    std::fprintf(stderr,
                 "usage: provider_stress --modules DIR --socket PATH --key NAME --public PEM "
                 "[--threads N] [--children N] [--seconds S]\n");
    return 2;
  }
  if (!o.socket.empty()) ::setenv("M2MVAULT_SOCKET", o.socket.c_str(), 1);
  LibCtxPtr libctx(OSSL_LIB_CTX_new());
  if (!libctx || OSSL_PROVIDER_set_default_search_path(libctx.get(), o.modules.c_str()) != 1) {
    return 2;
  }
  OSSL_PROVIDER* m2mvault = OSSL_PROVIDER_load(libctx.get(), "m2mvault");
  OSSL_PROVIDER* fallback = OSSL_PROVIDER_load(libctx.get(), "default");
  if (m2mvault == nullptr || fallback == nullptr) {
    ERR_print_errors_fp(stderr);
    return 2;
  }
  const std::string uri = "m2mvault:" + o.key;
  StoreCtxPtr store(OSSL_STORE_open_ex(uri.c_str(), libctx.get(), nullptr, nullptr, nullptr,
                                       nullptr, nullptr, nullptr));
  EvpPkeyPtr key;
  while (store && !key && !OSSL_STORE_eof(store.get())) {
    StoreInfoPtr info(OSSL_STORE_load(store.get()));
    if (info && OSSL_STORE_INFO_get_type(info.get()) == OSSL_STORE_INFO_PKEY) {
      key.reset(OSSL_STORE_INFO_get1_PKEY(info.get()));
    }
  }
  std::unique_ptr<FILE, OpenSslDeleter<std::fclose>> pem(std::fopen(o.public_key.c_str(), "r"));
  EvpPkeyPtr public_key(pem ? PEM_read_PUBKEY(pem.get(), nullptr, nullptr, nullptr) : nullptr);
  if (!key || !public_key) {
    std::fprintf(stderr, "cannot load %s or %s\n", uri.c_str(), o.public_key.c_str());
    ERR_print_errors_fp(stderr);
    return 2;
  }

  const auto deadline = Clock::now() + std::chrono::seconds(o.seconds);
  Counts counts;
  // After one signature the pool holds a connection: the children must not use it.
  if (!sign_and_verify(libctx.get(), key.get(), public_key.get())) {
    ERR_print_errors_fp(stderr);
    return 1;
  }
  std::vector<Child> children;
  for (int i = 0; i < o.children / 2; ++i) {
    children.push_back(fork_child(deadline, libctx.get(), key.get(), public_key.get()));
  }
  std::thread parent_threads([&] {
    if (!run_threads(o.threads, deadline, libctx.get(), key.get(), public_key.get(), counts)) {
      ++counts.failures;
      std::fprintf(stderr, "a thread made no signature\n");
    }
  });
  // The rest fork while the parent's threads are signing.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  for (int i = o.children / 2; i < o.children; ++i) {
    children.push_back(fork_child(deadline, libctx.get(), key.get(), public_key.get()));
  }
  // Progress of the parent's threads, once a second: a restart shows as a
  // pause, never as failures.
  for (int second = 1; Clock::now() < deadline; ++second) {
    std::this_thread::sleep_until(deadline - std::chrono::seconds(o.seconds) +
                                  std::chrono::seconds(second));
    std::printf("at %ds: verified %ld\n", second, counts.verified.load());
    std::fflush(stdout);
  }
  parent_threads.join();

  long verified = counts.verified.load() + 1;
  long failures = counts.failures.load();
  for (const Child& child : children) {
    char line[64] = "";
    const ssize_t n = ::read(child.pipe_fd, line, sizeof line - 1);
    ::close(child.pipe_fd);
    int status = 0;
    ::waitpid(child.pid, &status, 0);
    long child_verified = 0;
    long child_failures = 1;
    if (n <= 0 || std::sscanf(line, "%ld %ld", &child_verified, &child_failures) != 2 ||
        !WIFEXITED(status) || WEXITSTATUS(status) != 0 || child_verified == 0) {
      std::fprintf(stderr, "child %d failed (status %d)\n", static_cast<int>(child.pid), status);
      child_failures = std::max(child_failures, 1L);
    }
    std::printf("child %d: verified %ld, failures %ld\n", static_cast<int>(child.pid),
                child_verified, child_failures);
    verified += child_verified;
    failures += child_failures;
  }
  std::printf("verified %ld signatures, %ld failures\n", verified, failures);
  return failures == 0 ? 0 : 1;
}
