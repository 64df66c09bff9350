#include "engine/tls/psk_release.h"

#include <openssl/crypto.h>
#include <pthread.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "api/client.h"
#include "api/encoding.h"
#include "api/error.h"

namespace m2mvault::tls {
namespace {

// A handshake waits for the daemon at most this long per request.
constexpr std::chrono::milliseconds kDaemonTimeout{10'000};
// Idle connections kept per socket; more threads than this open their own
// and close them after use.
constexpr std::size_t kMaxIdlePerSocket = 8;

// Idle daemon connections by socket path. After fork() the child must not
// share its parent's streams: the atfork handlers keep the mutex
// consistent and bump the generation, and connections of an older
// generation are closed instead of reused.
class ConnectionPool {
 public:
  static ConnectionPool& instance() {
    // Never destroyed: handshakes may run in threads during exit.
    static ConnectionPool* pool = [] {
      auto* p = new ConnectionPool;  // NOLINT: a leaked singleton on purpose
      ::pthread_atfork([] { pool_mutex().lock(); }, [] { pool_mutex().unlock(); },
                       [] {
                         ++instance_generation();
                         pool_mutex().unlock();
                       });
      return p;
    }();
    return *pool;
  }

  struct Lease {
    std::unique_ptr<api::Client> client;
    unsigned generation = 0;
    bool fresh = false;
  };

  Lease acquire(const std::string& path) {
    {
      std::lock_guard lock(pool_mutex());
      auto& idle = idle_[path];
      while (!idle.empty()) {
        Lease lease{std::move(idle.back().client), idle.back().generation, false};
        idle.pop_back();
        if (lease.generation == instance_generation()) return lease;
        // A connection inherited across fork(): dropping it closes only
        // the child's descriptor.
      }
    }
    return connect(path);
  }

  Lease connect(const std::string& path) {
    unsigned generation;
    {
      std::lock_guard lock(pool_mutex());
      generation = instance_generation();
    }
    return Lease{std::make_unique<api::Client>(path, kDaemonTimeout), generation, true};
  }

  void give_back(const std::string& path, Lease lease) {
    std::lock_guard lock(pool_mutex());
    auto& idle = idle_[path];
    if (lease.generation == instance_generation() && idle.size() < kMaxIdlePerSocket) {
      idle.push_back(std::move(lease));
    }
  }

 private:
  static std::mutex& pool_mutex() {
    static std::mutex* m = new std::mutex;  // NOLINT: outlives every thread
    return *m;
  }
  static unsigned& instance_generation() {
    static unsigned generation = 0;
    return generation;
  }

  std::map<std::string, std::vector<Lease>> idle_;
};

std::string string_or_empty(const nlohmann::json& object, const char* field) {
  auto it = object.find(field);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// Wipes a string that held key material (base64 of a PSK).
void wipe(std::string& s) {
  if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
  s.clear();
}

// One psk.release on `client`; decodes into `out` and wipes the text.
ReleasedKey call_release(api::Client& client, const nlohmann::json& params,
                         std::span<std::uint8_t> out, std::size_t& out_len) {
  nlohmann::json result = client.call("psk.release", params);
  auto value = result.find("value");
  if (!result.is_object() || value == result.end() || !value->is_string()) {
    if (value != result.end() && value->is_string()) wipe(value->get_ref<std::string&>());
    throw Error(ErrorCode::internal, "m2mvaultd answered psk.release without a key value");
  }
  std::string& text = value->get_ref<std::string&>();
  ReleasedKey key{string_or_empty(result, "name"), string_or_empty(result, "kind"),
                  string_or_empty(result, "id"), std::nullopt};
  if (auto e = result.find("entity"); e != result.end() && e->is_string())
    key.entity = e->get<std::string>();

  const auto size = encoding::base64_decoded_size(text);
  if (!size || *size == 0) {
    wipe(text);
    throw Error(ErrorCode::internal, "m2mvaultd sent a malformed key value for '" + key.name + "'");
  }
  if (*size > out.size()) {
    wipe(text);
    throw Error(ErrorCode::invalid_argument,
                "key '" + key.name + "' is " + std::to_string(*size) + " bytes, longer than the " +
                    std::to_string(out.size()) + " bytes libssl accepts for a PSK");
  }
  const bool decoded = encoding::base64_decode_into(text, out.first(*size));
  wipe(text);
  if (!decoded) {
    OPENSSL_cleanse(out.data(), out.size());
    throw Error(ErrorCode::internal, "m2mvaultd sent a malformed key value for '" + key.name + "'");
  }
  if (key.kind != "kpsa" && key.kind != "kc") {
    OPENSSL_cleanse(out.data(), *size);
    throw Error(ErrorCode::unsupported,
                "key '" + key.name + "' is of kind '" + key.kind + "', not a TLS PSK (kpsa, kc)");
  }
  out_len = *size;
  return key;
}

}  // namespace

ReleasedKey release_psk(const std::string& socket_path, const nlohmann::json& params,
                        std::span<std::uint8_t> out, std::size_t& out_len) {
  auto& pool = ConnectionPool::instance();
  auto lease = pool.acquire(socket_path);
  for (;;) {
    try {
      ReleasedKey key = call_release(*lease.client, params, out, out_len);
      pool.give_back(socket_path, std::move(lease));
      return key;
    } catch (const Error& e) {
      if (e.code() != ErrorCode::backend_unavailable || lease.client->connected()) {
        // An answer from the daemon (even "unavailable": the release may
        // have run and counted a use): the connection is still good.
        pool.give_back(socket_path, std::move(lease));
        throw;
      }
      // A pooled connection may have been closed by the daemon (idle
      // timeout, restart): retry once on a fresh one.
      if (lease.fresh) throw;
      lease = pool.connect(socket_path);
    }
  }
}

bool plausible_identity(std::string_view identity) {
  if (identity.empty() || identity.size() > 256) return false;
  for (unsigned char c : identity) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

std::string resolve_socket_path(const char* socket_path) {
  if (socket_path != nullptr && *socket_path != '\0') return socket_path;
  return api::default_socket_path().string();
}

}  // namespace m2mvault::tls
