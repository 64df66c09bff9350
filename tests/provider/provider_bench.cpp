// ECDSA P-256 signatures per second, in-process, one thread: through the
// m2mvault provider, through the libp11 engine on the same token, through
// any other provider's key (tpm2-openssl), and with a key in a file. Driven
// by tests/bench/provider_bench.py and tests/bench/tpm2_bench.py.
//
//   provider_bench [--seconds S] [--operation digest-sign|sign] [--start-at T] [--gap-us G]
//                  [--modules DIR --socket PATH --key NAME]      provider
//                  [--engine-key PKCS11-URI --engine-module SO --pin PIN]
//                  [--store-key URI --store-providers P1,P2 [--label TEXT]]
//                  [--file-key PEM]
//
// --operation: digest-sign (default) is EVP_DigestSign over a message, what
// TLS calls; sign is EVP_PKEY_sign of a SHA-256 digest, what pkeyutl calls
// (a provider that hashes inside the TPM does that only for digest-sign).
// --start-at: after the warm-up, wait until this time (seconds since the
// epoch) before measuring, so that concurrent processes measure one window.
// --store-providers are loaded in the order given, into a library context
// of their own, and --store-key is opened with OSSL_STORE in it.
//
// --gap-us: spin G microseconds between signatures (a server's handshake
// work between its signatures) and report the median time of one signature
// instead of a rate (tests/bench/README.md, session 5).
//
// Prints one line per measurement: "<what>: <N> sign/s", or with --gap-us
// "<what>: p50 <T> us per signature, <G> us apart".
#define OPENSSL_SUPPRESS_DEPRECATED  // the libp11 engine is an ENGINE
#include <openssl/engine.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/store.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "engine/provider/openssl_owners.h"

namespace {

using namespace m2mvault::provider;
using Clock = std::chrono::steady_clock;

struct Options {
  double seconds = 5.0;
  bool digest_sign = true;  // false: EVP_PKEY_sign of a digest
  double start_at = 0.0;    // seconds since the epoch; 0: at once
  long gap_us = 0;          // spun between signatures; 0: back to back
};

// One signature of a fixed 32-byte message (or of its SHA-256 digest).
bool sign_once(OSSL_LIB_CTX* libctx, EVP_PKEY* key, bool digest_sign) {
  static const unsigned char message[32] = "oneM2M TR-0038 A.3 handshake...";
  unsigned char signature[128];
  size_t length = sizeof signature;
  if (digest_sign) {
    EvpMdCtxPtr ctx(EVP_MD_CTX_new());
    return ctx &&
           EVP_DigestSignInit_ex(ctx.get(), nullptr, "SHA256", libctx, nullptr, key, nullptr) ==
               1 &&
           EVP_DigestSign(ctx.get(), signature, &length, message, sizeof message) == 1;
  }
  static const unsigned char digest[32] = "taken as a SHA-256 digest......";
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(libctx, key, nullptr));
  return ctx && EVP_PKEY_sign_init(ctx.get()) == 1 &&
         EVP_PKEY_sign(ctx.get(), signature, &length, digest, sizeof digest) == 1;
}

void wait_until(double start_at) {
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  const double delay = start_at - std::chrono::duration<double>(now).count();
  if (delay > 0) std::this_thread::sleep_for(std::chrono::duration<double>(delay));
}

// Signatures per second over `seconds` (after a short warm-up); -1 on failure.
double measure(const char* what, OSSL_LIB_CTX* libctx, EVP_PKEY* key, const Options& options) {
  for (int i = 0; i < 50; ++i) {
    if (!sign_once(libctx, key, options.digest_sign)) {
      std::fprintf(stderr, "%s: signing failed\n", what);
      ERR_print_errors_fp(stderr);
      return -1;
    }
  }
  wait_until(options.start_at);
  if (options.gap_us > 0) {
    std::vector<double> took;
    const auto end = Clock::now() + std::chrono::duration<double>(options.seconds);
    while (Clock::now() < end) {
      const auto resume = Clock::now() + std::chrono::microseconds(options.gap_us);
      while (Clock::now() < resume) {
      }
      const auto start = Clock::now();
      if (!sign_once(libctx, key, options.digest_sign)) {
        std::fprintf(stderr, "%s: signing failed\n", what);
        ERR_print_errors_fp(stderr);
        return -1;
      }
      took.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
    }
    std::nth_element(took.begin(), took.begin() + took.size() / 2, took.end());
    std::printf("%s: p50 %.0f us per signature, %ld us apart\n", what, took[took.size() / 2],
                options.gap_us);
    std::fflush(stdout);
    return took[took.size() / 2];
  }
  long count = 0;
  const auto start = Clock::now();
  const auto end = start + std::chrono::duration<double>(options.seconds);
  while (Clock::now() < end) {
    if (!sign_once(libctx, key, options.digest_sign)) {
      std::fprintf(stderr, "%s: signing failed after %ld signatures\n", what, count);
      ERR_print_errors_fp(stderr);
      return -1;
    }
    ++count;
  }
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  const double rate = static_cast<double>(count) / elapsed;
  std::printf("%s: %.0f sign/s\n", what, rate);
  std::fflush(stdout);
  return rate;
}

EvpPkeyPtr load_from_store(OSSL_LIB_CTX* libctx, const std::string& uri) {
  StoreCtxPtr store(OSSL_STORE_open_ex(uri.c_str(), libctx, nullptr, nullptr, nullptr, nullptr,
                                       nullptr, nullptr));
  while (store && !OSSL_STORE_eof(store.get())) {
    StoreInfoPtr info(OSSL_STORE_load(store.get()));
    if (info && OSSL_STORE_INFO_get_type(info.get()) == OSSL_STORE_INFO_PKEY) {
      return EvpPkeyPtr(OSSL_STORE_INFO_get1_PKEY(info.get()));
    }
  }
  return nullptr;
}

int bench_provider(const std::map<std::string, std::string>& o, const Options& options) {
  ::setenv("M2MVAULT_SOCKET", o.at("--socket").c_str(), 1);
  LibCtxPtr libctx(OSSL_LIB_CTX_new());
  OSSL_PROVIDER_set_default_search_path(libctx.get(), o.at("--modules").c_str());
  if (OSSL_PROVIDER_load(libctx.get(), "m2mvault") == nullptr ||
      OSSL_PROVIDER_load(libctx.get(), "default") == nullptr) {
    ERR_print_errors_fp(stderr);
    return 1;
  }
  auto key = load_from_store(libctx.get(), "m2mvault:" + o.at("--key"));
  if (!key) {
    ERR_print_errors_fp(stderr);
    return 1;
  }
  return measure("m2mvault provider", libctx.get(), key.get(), options) < 0;
}

int bench_engine(const std::map<std::string, std::string>& o, const Options& options) {
  ENGINE* engine = ENGINE_by_id("pkcs11");
  if (engine == nullptr ||
      ENGINE_ctrl_cmd_string(engine, "MODULE_PATH", o.at("--engine-module").c_str(), 0) != 1 ||
      ENGINE_ctrl_cmd_string(engine, "PIN", o.at("--pin").c_str(), 0) != 1 ||
      ENGINE_init(engine) != 1) {
    ERR_print_errors_fp(stderr);
    return 1;
  }
  EvpPkeyPtr key(ENGINE_load_private_key(engine, o.at("--engine-key").c_str(), nullptr, nullptr));
  if (!key) {
    ERR_print_errors_fp(stderr);
    return 1;
  }
  const int failed = measure("libp11 engine", nullptr, key.get(), options) < 0;
  key.reset();
  ENGINE_finish(engine);
  ENGINE_free(engine);
  return failed;
}

int bench_store(const std::map<std::string, std::string>& o, const Options& options) {
  LibCtxPtr libctx(OSSL_LIB_CTX_new());
  std::istringstream names(o.at("--store-providers"));
  for (std::string name; std::getline(names, name, ',');) {
    if (OSSL_PROVIDER_load(libctx.get(), name.c_str()) == nullptr) {
      ERR_print_errors_fp(stderr);
      return 1;
    }
  }
  auto key = load_from_store(libctx.get(), o.at("--store-key"));
  if (!key) {
    std::fprintf(stderr, "no private key in %s\n", o.at("--store-key").c_str());
    ERR_print_errors_fp(stderr);
    return 1;
  }
  const std::string what =
      o.count("--label") ? o.at("--label") : o.at("--store-providers") + " provider";
  return measure(what.c_str(), libctx.get(), key.get(), options) < 0;
}

int bench_file(const std::map<std::string, std::string>& o, const Options& options) {
  std::unique_ptr<FILE, OpenSslDeleter<std::fclose>> pem(
      std::fopen(o.at("--file-key").c_str(), "r"));
  EvpPkeyPtr key(pem ? PEM_read_PrivateKey(pem.get(), nullptr, nullptr, nullptr) : nullptr);
  if (!key) {
    ERR_print_errors_fp(stderr);
    return 1;
  }
  return measure("file key", nullptr, key.get(), options) < 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> o;
  for (int i = 1; i + 1 < argc; i += 2) o[argv[i]] = argv[i + 1];
  Options options;
  if (o.count("--seconds")) options.seconds = std::atof(o["--seconds"].c_str());
  if (o.count("--start-at")) options.start_at = std::atof(o["--start-at"].c_str());
  if (o.count("--gap-us")) options.gap_us = std::atol(o["--gap-us"].c_str());
  if (o.count("--operation")) {
    if (o["--operation"] != "digest-sign" && o["--operation"] != "sign") {
      std::fprintf(stderr, "--operation is digest-sign or sign\n");
      return 2;
    }
    options.digest_sign = o["--operation"] == "digest-sign";
  }
  int failures = 0;
  if (o.count("--modules") && o.count("--socket") && o.count("--key")) {
    failures += bench_provider(o, options);
  }
  if (o.count("--engine-key") && o.count("--engine-module") && o.count("--pin")) {
    failures += bench_engine(o, options);
  }
  if (o.count("--store-key") && o.count("--store-providers")) failures += bench_store(o, options);
  if (o.count("--file-key")) failures += bench_file(o, options);
  return failures == 0 ? 0 : 1;
}
