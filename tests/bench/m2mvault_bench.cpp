// m2mvault-bench: latency and throughput of the daemon, measured against the
// floor of the machine it runs on. Not a test: tools/bench runs it against a
// daemon it starts, and tests/bench/README.md records the results.
//
//   m2mvault-bench --socket PATH [--seconds S] [--clients 1,16]
//
// Measures, in one run:
//   floor     raw Unix-socket ping-pong between two processes (socketpair +
//             fork), same message size as a ping request
//   ping      API round trip of a no-op request
//   hmac      key.check: HMAC-SHA-256 inside the token through the API
//   sign      ECDSA P-256 signature inside the token through the API
//   import    Kpsa creations (wrap + durable catalog insert)
//   derive    Km derivations through the API, against the raw in-token cost
//             of the same work (C_Sign HMAC + C_CreateObject + C_WrapKey)
//             measured on a token of the benchmark's own
#include <fmt/format.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "api/client.h"
#include "api/encoding.h"
#include "api/framing.h"
#include "hsm/pkcs11/pkcs11_backend.h"

namespace {

using Clock = std::chrono::steady_clock;
using m2mvault::api::Client;

struct Result {
  std::string name;
  int clients;
  double p50_us;
  double p99_us;
  double ops_per_s;
  std::size_t ops;
};

Result summarize(std::string name, int clients, std::vector<double> lat_us, double seconds) {
  std::sort(lat_us.begin(), lat_us.end());
  auto pct = [&](double p) {
    return lat_us.empty() ? 0.0 : lat_us[static_cast<std::size_t>(p * (lat_us.size() - 1))];
  };
  return {std::move(name), clients, pct(0.50), pct(0.99), lat_us.size() / seconds, lat_us.size()};
}

bool write_all(int fd, const void* data, std::size_t n) {
  auto* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w <= 0) return false;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

bool read_all(int fd, void* data, std::size_t n) {
  auto* p = static_cast<char*>(data);
  while (n > 0) {
    ssize_t r = ::read(fd, p, n);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

// The floor: a frame the size of a ping request and of its response,
// bounced between two processes over a Unix stream socket.
Result raw_floor(double seconds) {
  const std::string request = m2mvault::api::encode_frame({{"v", 1}, {"id", 1}, {"op", "ping"}});
  const std::string response =
      m2mvault::api::encode_frame({{"v", 1}, {"id", 1}, {"result", nlohmann::json::object()}});
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) throw std::runtime_error("socketpair");
  // The floor as the issue defines it: two processes on different cores
  // (the API client and daemon are left unpinned, as users run them).
  cpu_set_t saved;
  CPU_ZERO(&saved);
  ::sched_getaffinity(0, sizeof saved, &saved);
  const bool pin = CPU_COUNT(&saved) >= 2;
  auto pin_to = [](int cpu) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    ::sched_setaffinity(0, sizeof one, &one);
  };
  pid_t child = ::fork();
  if (child == 0) {
    if (pin) pin_to(1);
    ::close(sv[0]);
    std::vector<char> buf(request.size());
    while (read_all(sv[1], buf.data(), buf.size())) {
      if (!write_all(sv[1], response.data(), response.size())) break;
    }
    ::_exit(0);
  }
  ::close(sv[1]);
  if (pin) pin_to(0);
  std::vector<char> buf(response.size());
  std::vector<double> lat;
  const auto end = Clock::now() + std::chrono::duration<double>(seconds);
  const auto start = Clock::now();
  while (Clock::now() < end) {
    auto t0 = Clock::now();
    write_all(sv[0], request.data(), request.size());
    read_all(sv[0], buf.data(), buf.size());
    lat.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  ::close(sv[0]);
  ::waitpid(child, nullptr, 0);
  ::sched_setaffinity(0, sizeof saved, &saved);
  return summarize(pin ? "raw socket floor (2 processes, cores 0/1)" : "raw socket floor", 1,
                   std::move(lat), elapsed);
}

// Runs `op` from `clients` threads, each with its own connection, for
// `seconds` (or `max_ops` operations per client).
Result run_clients(const std::string& name, const std::string& socket, int clients, double seconds,
                   const std::function<void(Client&, int, std::uint64_t)>& op,
                   std::uint64_t max_ops = UINT64_MAX) {
  std::vector<std::vector<double>> lat(clients);
  std::vector<std::thread> threads;
  std::atomic<bool> go{false};
  std::atomic<Clock::rep> deadline{0};  // set before `go`
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      Client client(socket);
      client.call("ping");
      while (!go.load()) std::this_thread::yield();
      const Clock::time_point end{Clock::duration(deadline.load())};
      for (std::uint64_t i = 0; i < max_ops && Clock::now() < end; ++i) {
        auto t0 = Clock::now();
        op(client, c, i);
        lat[c].push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  auto start = Clock::now();
  deadline =
      (start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds)))
          .time_since_epoch()
          .count();
  go = true;
  for (auto& t : threads) t.join();
  double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  std::vector<double> all;
  for (auto& l : lat) all.insert(all.end(), l.begin(), l.end());
  return summarize(name, clients, std::move(all), elapsed);
}

// The same in-token work as a derivation, without the daemon: HMAC with a
// token-resident Ke into a session object, wrapped under the KEK. Runs on a
// fresh embedded token of this process (SoftHSM2 is loaded here only).
std::vector<Result> raw_derivations(const std::vector<int>& client_counts, double seconds) {
  char tmpl[] = "/tmp/m2mvault-bench-XXXXXX";
  const std::filesystem::path dir = ::mkdtemp(tmpl);
  const auto staging = dir / "staging";
  const auto state = dir / "state";
  std::filesystem::create_directories(staging);
  m2mvault::hsm::pkcs11::create_embedded_token(staging, state);
  std::filesystem::rename(staging, state);
  auto se = m2mvault::hsm::pkcs11::open(m2mvault::hsm::pkcs11::embedded_config(state));
  auto ke_id = se->new_object_id();
  std::vector<std::uint8_t> ke(32, 0x4b);
  se->create_token_secret(ke_id, ke);
  const m2mvault::hsm::SecretRef parent = m2mvault::hsm::TokenKeyRef{"", ke_id, ""};
  const std::string label = "oneM2M Enrolment Key to Master Credential derivationmaf.example.com";
  const std::vector<std::uint8_t> input(label.begin(), label.end());

  std::vector<Result> results;
  for (int clients : client_counts) {
    std::vector<std::vector<double>> lat(clients);
    std::vector<std::thread> threads;
    const auto start = Clock::now();
    const auto end =
        start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
    for (int c = 0; c < clients; ++c) {
      threads.emplace_back([&, c] {
        while (Clock::now() < end) {
          auto t0 = Clock::now();
          se->derive_wrapped_secret(parent, input);
          lat[c].push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
        }
      });
    }
    for (auto& t : threads) t.join();
    double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    std::vector<double> all;
    for (auto& l : lat) all.insert(all.end(), l.begin(), l.end());
    results.push_back(
        summarize("raw in-token derivation (no daemon)", clients, std::move(all), elapsed));
  }
  se->destroy_token_object(ke_id);
  se.reset();
  std::filesystem::remove_all(dir);
  return results;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"m2mvault-bench - daemon latency and throughput"};
  std::string socket;
  double seconds = 3;
  std::vector<int> client_counts{1, 16};
  app.add_option("--socket", socket, "Daemon socket")->required();
  app.add_option("--seconds", seconds, "Duration of each measurement");
  app.add_option("--clients", client_counts, "Concurrent client counts")->delimiter(',');
  std::vector<std::string> only;
  app.add_option("--only", only,
                 "Run only these measurements: ping, check, sign, import, derive, generate "
                 "(default: all)")
      ->delimiter(',')
      ->check(CLI::IsMember({"ping", "check", "sign", "import", "derive", "generate"}));
  CLI11_PARSE(app, argc, argv);
  const auto wanted = [&](const char* tag) {
    return only.empty() || std::find(only.begin(), only.end(), tag) != only.end();
  };

  std::vector<Result> results;
  if (only.empty()) results.push_back(raw_floor(seconds));

  Client setup(socket);
  std::vector<std::uint8_t> kpsa(32);
  for (std::size_t i = 0; i < kpsa.size(); ++i) kpsa[i] = static_cast<std::uint8_t>(i * 7 + 1);
  const std::string run_tag = std::to_string(::getpid());
  setup.call("key.import", {{"kind", "kpsa"},
                            {"id", "bench-" + run_tag + "@bench.example.com"},
                            {"value", m2mvault::encoding::base64_encode(kpsa)}});
  setup.call("key.generate", {{"kind", "signing"}, {"name", "bench-sign-" + run_tag}});
  const std::string digest = m2mvault::encoding::base64_encode(std::vector<std::uint8_t>(32, 0x5a));

  for (int clients : client_counts) {
    if (wanted("ping"))
      results.push_back(run_clients("API round trip (ping)", socket, clients, seconds,
                                    [](Client& c, int, std::uint64_t) { c.call("ping"); }));
    if (wanted("check"))
      results.push_back(
          run_clients("HMAC in token (key.check)", socket, clients, seconds,
                      [&](Client& c, int, std::uint64_t) {
                        c.call("key.check", {{"key", "bench-" + run_tag + "@bench.example.com"}});
                      }));
    if (wanted("sign"))
      results.push_back(run_clients(
          "ECDSA P-256 sign", socket, clients, seconds, [&](Client& c, int, std::uint64_t) {
            c.call("sign", {{"key", "bench-sign-" + run_tag}, {"digest", digest}});
          }));
    if (wanted("import"))
      results.push_back(run_clients("Kpsa creation (key.import)", socket, clients, seconds,
                                    [&](Client& c, int client, std::uint64_t i) {
                                      c.call("key.import",
                                             {{"kind", "kpsa"},
                                              {"id", fmt::format("b{}-{}-{}-{}@bench.example.com",
                                                                 run_tag, clients, client, i)},
                                              {"value", m2mvault::encoding::base64_encode(kpsa)}});
                                    }));
  }
  std::vector<std::uint8_t> ke(32);
  for (std::size_t i = 0; i < ke.size(); ++i) ke[i] = static_cast<std::uint8_t>(i);
  const std::string ke_name = "bench-ke-" + run_tag;
  setup.call("key.import", {{"kind", "ke"},
                            {"id", "AAECAwQFBgcICQoLDA0ODw==@bench" + run_tag + ".example.com"},
                            {"name", ke_name},
                            {"value", m2mvault::encoding::base64_encode(ke)}});
  for (int clients : client_counts) {
    if (!wanted("derive")) break;
    results.push_back(run_clients("Km derivation (key.derive)", socket, clients, seconds,
                                  [&](Client& c, int client, std::uint64_t i) {
                                    c.call("key.derive",
                                           {{"derivation", "km"},
                                            {"ke", ke_name},
                                            {"maf_id", "maf.example.com"},
                                            {"id", fmt::format("d{}-{}-{}-{}@maf.example.com",
                                                               run_tag, clients, client, i)}});
                                  }));
  }
  if (wanted("derive")) {
    for (auto& r : raw_derivations(client_counts, seconds)) results.push_back(std::move(r));
  }

  if (wanted("generate"))
    results.push_back(run_clients(
        "signing key generation (token object)", socket, 1, seconds,
        [&](Client& c, int, std::uint64_t i) {
          c.call("key.generate",
                 {{"kind", "signing"}, {"name", fmt::format("g{}-{}", run_tag, i)}});
        },
        200));

  fmt::print(
      "| measurement | clients | p50 (µs) | p99 (µs) | ops/s | ops "
      "|\n|---|---:|---:|---:|---:|---:|\n");
  for (const auto& r : results) {
    fmt::print("| {} | {} | {:.1f} | {:.1f} | {:.0f} | {} |\n", r.name, r.clients, r.p50_us,
               r.p99_us, r.ops_per_s, r.ops);
  }
  for (const auto& api : results) {
    if (!api.name.starts_with("Km derivation")) continue;
    for (const auto& raw : results) {
      if (raw.name.starts_with("raw in-token derivation") && raw.clients == api.clients) {
        fmt::print(
            "\nderivations through the API / raw in-token, {} clients = {:.0f}% (target >= 50% at "
            "16)",
            api.clients, 100.0 * api.ops_per_s / raw.ops_per_s);
      }
    }
  }
  fmt::print("\n");
  const double floor = results[0].p50_us;
  for (const auto& r : results) {
    if (r.name.starts_with("API round trip") && r.clients == 1) {
      fmt::print("\nAPI round trip p50 / raw floor p50 = {:.2f} (target <= 1.5)\n",
                 r.p50_us / floor);
    }
  }
  return 0;
}
