// Catalog throughput and lookup latency on the real file system:
//   vault_catalog_bench [directory] [seconds per phase]
// Durable inserts per second from 1 and from 16 threads (group commit), and
// find() latency from 1 and from 16 threads on the resulting catalog.
#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "vault/catalog.h"

namespace {

using m2mvault::vault::Catalog;
using m2mvault::vault::KeyKind;
using m2mvault::vault::KeyRecord;
using Clock = std::chrono::steady_clock;

KeyRecord kpsa(const std::string& relative) {
  KeyRecord r;
  r.kind = KeyKind::kpsa;
  r.identifier = relative + "@in.provider.com";
  r.entity = "C-gateway-device";
  r.created = 1'800'000'000;
  r.blob = std::vector<std::uint8_t>(40, 0x5a);
  r.length = 32;
  r.check_value = "0011223344556677";
  return r;
}

void inserts(Catalog& catalog, int threads, double seconds, std::atomic<long>& serial) {
  const auto commits_before = m2mvault::vault::catalog_commit_count(catalog);
  std::atomic<long> done{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> pool;
  const auto t0 = Clock::now();
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      while (!stop.load()) {
        catalog.insert(kpsa("AE" + std::to_string(serial++) + "-dev"));
        ++done;
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : pool) t.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  const auto commits = m2mvault::vault::catalog_commit_count(catalog) - commits_before;
  fmt::print(
      "insert, {:2} thread(s): {:8.0f} inserts/s  ({} inserts in {} transactions, {:.1f}/txn)\n",
      threads, done / elapsed, done.load(), commits,
      commits ? static_cast<double>(done) / static_cast<double>(commits) : 0.0);
}

void finds(Catalog& catalog, int threads, long keys, double seconds) {
  std::atomic<long> done{0}, misses{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> pool;
  const auto t0 = Clock::now();
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      long i = t * 7919;
      long local = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        // Mixed case FQDN: every lookup canonicalizes.
        if (!catalog.find("AE" + std::to_string(i++ % keys) + "-dev@IN.provider.com")) ++misses;
        ++local;
      }
      done += local;
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : pool) t.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  fmt::print("find,   {:2} thread(s): {:8.0f} finds/s, {:.2f} us per find per thread{}\n", threads,
             done / elapsed, 1e6 * elapsed * threads / static_cast<double>(done),
             misses ? fmt::format(" ({} MISSES)", misses.load()) : "");
}

}  // namespace

int main(int argc, char** argv) {
  const std::filesystem::path base = argc > 1 ? argv[1] : std::filesystem::temp_directory_path();
  const double seconds = argc > 2 ? std::atof(argv[2]) : 3.0;
  const auto dir = base / fmt::format("m2mvault-catalog-bench-{}", ::getpid());
  std::filesystem::create_directories(dir);
  {
    auto catalog = Catalog::open(dir / "catalog.db");
    std::atomic<long> serial{0};
    inserts(*catalog, 1, seconds, serial);
    inserts(*catalog, 16, seconds, serial);
    inserts(*catalog, 64, seconds, serial);
    const long keys = serial.load();
    fmt::print("catalog holds {} keys\n", catalog->count());
    finds(*catalog, 1, keys, seconds);
    finds(*catalog, 16, keys, seconds);
  }
  std::filesystem::remove_all(dir);
}
