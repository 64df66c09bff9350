#include "engine/provider/connection.h"

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <thread>
#include <utility>

#include "api/error.h"

namespace m2mvault::provider {
namespace {

// Every live DaemonLink of the process, for the fork() handlers.
struct Registry {
  std::mutex mutex;
  std::vector<DaemonLink*> links;
};

Registry& registry() {
  static Registry* instance = new Registry;  // never destroyed: fork handlers may outlive statics
  return *instance;
}

std::once_flag fork_handlers_registered;

constexpr std::size_t kMaxIdleConnections = 64;
constexpr std::chrono::milliseconds kRequestTimeout{10000};

}  // namespace

DaemonLink::DaemonLink(std::filesystem::path socket_path)
    : socket_path_(std::move(socket_path)), owner_pid_(::getpid()) {
  std::call_once(fork_handlers_registered, [] {
    ::pthread_atfork(&DaemonLink::before_fork, &DaemonLink::after_fork_in_parent,
                     &DaemonLink::after_fork_in_child);
  });
  std::lock_guard lock(registry().mutex);
  registry().links.push_back(this);
}

DaemonLink::~DaemonLink() {
  std::lock_guard lock(registry().mutex);
  std::erase(registry().links, this);
}

void DaemonLink::before_fork() {
  registry().mutex.lock();
  for (DaemonLink* link : registry().links) link->mutex_.lock();
}

void DaemonLink::after_fork_in_parent() {
  for (DaemonLink* link : registry().links) link->mutex_.unlock();
  registry().mutex.unlock();
}

void DaemonLink::after_fork_in_child() {
  for (DaemonLink* link : registry().links) {
    link->forget_inherited_connections();
    link->mutex_.unlock();
  }
  registry().mutex.unlock();
}

// Called with mutex_ held. Closing the inherited descriptors is safe: the
// parent keeps its own; what must never happen is the child talking on them.
void DaemonLink::forget_inherited_connections() {
  idle_.clear();
  owner_pid_ = ::getpid();
}

std::unique_ptr<api::Client> DaemonLink::acquire(bool& pooled) {
  pooled = false;
  {
    std::lock_guard lock(mutex_);
    // A fork that bypassed the handlers (a raw clone) is caught here too.
    if (owner_pid_ != ::getpid()) forget_inherited_connections();
    if (!idle_.empty()) {
      auto client = std::move(idle_.back());
      idle_.pop_back();
      pooled = true;
      return client;
    }
  }
  return std::make_unique<api::Client>(socket_path_, kRequestTimeout);
}

void DaemonLink::release(std::unique_ptr<api::Client> client) {
  std::lock_guard lock(mutex_);
  if (owner_pid_ != ::getpid()) return;  // made before a fork: not ours to keep
  if (idle_.size() < kMaxIdleConnections) idle_.push_back(std::move(client));
}

nlohmann::json DaemonLink::call(std::string_view op, const nlohmann::json& params) {
  const auto deadline = std::chrono::steady_clock::now() + kReconnectWindow;
  auto pause = std::chrono::milliseconds(25);
  for (int attempt = 0;; ++attempt) {
    bool pooled = false;
    std::unique_ptr<api::Client> client;
    try {
      client = acquire(pooled);
      auto result = client->call(op, params);
      release(std::move(client));
      return result;
    } catch (const Error& error) {
      if (error.code() != ErrorCode::backend_unavailable) throw;
      // The daemon itself answered "unavailable" (its token or audit log
      // failed): the request may have run and used the key, so it is not
      // sent again. Only a request that never got an answer is retried.
      if (client && client->connected()) {
        release(std::move(client));
        throw DaemonUnavailable(error);
      }
      // A pooled connection the daemon closed (restart, idle timeout): the
      // other idle ones are as dead; retry at once on a fresh connection.
      // Otherwise back off until the window ends.
      if (pooled && attempt == 0) {
        std::lock_guard lock(mutex_);
        idle_.clear();
        continue;
      }
      if (std::chrono::steady_clock::now() + pause > deadline) throw;
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::milliseconds(400));
    }
  }
}

}  // namespace m2mvault::provider
