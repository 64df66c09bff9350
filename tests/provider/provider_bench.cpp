// ECDSA P-256 signatures per second, in-process, one thread: through the
// m2mvault provider, through the libp11 engine on the same token, and with
// a key in a file. Driven by tests/bench/provider_bench.py.
//
//   provider_bench [--seconds S]
//                  [--modules DIR --socket PATH --key NAME]      provider
//                  [--engine-key PKCS11-URI --engine-module SO --pin PIN]
//                  [--file-key PEM]
//
// Prints one line per measurement: "<what>: <N> sign/s".
#define OPENSSL_SUPPRESS_DEPRECATED  // the libp11 engine is an ENGINE
#include <openssl/engine.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/store.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>

#include "engine/provider/openssl_owners.h"

namespace {

using namespace m2mvault::provider;
using Clock = std::chrono::steady_clock;
using StoreCtxPtr = std::unique_ptr<OSSL_STORE_CTX, OpenSslDeleter<OSSL_STORE_close>>;
using StoreInfoPtr = std::unique_ptr<OSSL_STORE_INFO, OpenSslDeleter<OSSL_STORE_INFO_free>>;

// Signatures per second over `seconds` (after a short warm-up); -1 on failure.
double measure(const char* what, OSSL_LIB_CTX* libctx, EVP_PKEY* key, double seconds) {
  const unsigned char message[32] = "oneM2M TR-0038 A.3 handshake...";
  unsigned char signature[128];
  auto sign_once = [&]() {
    EvpMdCtxPtr ctx(EVP_MD_CTX_new());
    size_t length = sizeof signature;
    return ctx &&
           EVP_DigestSignInit_ex(ctx.get(), nullptr, "SHA256", libctx, nullptr, key, nullptr) ==
               1 &&
           EVP_DigestSign(ctx.get(), signature, &length, message, sizeof message) == 1;
  };
  for (int i = 0; i < 50; ++i) {
    if (!sign_once()) {
      std::fprintf(stderr, "%s: signing failed\n", what);
      ERR_print_errors_fp(stderr);
      return -1;
    }
  }
  long count = 0;
  const auto start = Clock::now();
  const auto end = start + std::chrono::duration<double>(seconds);
  while (Clock::now() < end) {
    if (!sign_once()) return -1;
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

int bench_provider(const std::map<std::string, std::string>& o, double seconds) {
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
  return measure("m2mvault provider", libctx.get(), key.get(), seconds) < 0;
}

int bench_engine(const std::map<std::string, std::string>& o, double seconds) {
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
  const int failed = measure("libp11 engine", nullptr, key.get(), seconds) < 0;
  key.reset();
  ENGINE_finish(engine);
  ENGINE_free(engine);
  return failed;
}

int bench_file(const std::map<std::string, std::string>& o, double seconds) {
  std::unique_ptr<FILE, OpenSslDeleter<std::fclose>> pem(
      std::fopen(o.at("--file-key").c_str(), "r"));
  EvpPkeyPtr key(pem ? PEM_read_PrivateKey(pem.get(), nullptr, nullptr, nullptr) : nullptr);
  if (!key) {
    ERR_print_errors_fp(stderr);
    return 1;
  }
  return measure("file key", nullptr, key.get(), seconds) < 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> o;
  for (int i = 1; i + 1 < argc; i += 2) o[argv[i]] = argv[i + 1];
  const double seconds = o.count("--seconds") ? std::atof(o["--seconds"].c_str()) : 5.0;
  int failures = 0;
  if (o.count("--modules") && o.count("--socket") && o.count("--key")) {
    failures += bench_provider(o, seconds);
  }
  if (o.count("--engine-key") && o.count("--engine-module") && o.count("--pin")) {
    failures += bench_engine(o, seconds);
  }
  if (o.count("--file-key")) failures += bench_file(o, seconds);
  return failures == 0 ? 0 : 1;
}
