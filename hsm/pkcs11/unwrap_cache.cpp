#include "hsm/pkcs11/unwrap_cache.h"

#include <openssl/sha.h>

#include <vector>

namespace m2mvault::hsm::pkcs11 {

SessionObject::~SessionObject() {
  auto session = housekeeping_.borrow();
  housekeeping_.fn()->C_DestroyObject(session.handle(), handle_);
}

UnwrapCache::Digest UnwrapCache::digest_of(std::span<const std::uint8_t> blob) {
  Digest digest{};
  SHA256(blob.data(), blob.size(), digest.data());
  return digest;
}

std::shared_ptr<const SessionObject> UnwrapCache::find(const Digest& digest) {
  std::lock_guard lock(mutex_);
  auto found = entries_.find(digest);
  if (found == entries_.end()) return nullptr;
  order_.splice(order_.begin(), order_, found->second.position);
  return found->second.key;
}

std::shared_ptr<const SessionObject> UnwrapCache::insert(const Digest& digest,
                                                         std::shared_ptr<const SessionObject> key) {
  if (capacity_ == 0) return key;
  // Evicted keys are released after the lock, so their destruction (a token
  // call) never runs under it.
  std::vector<std::shared_ptr<const SessionObject>> evicted;
  std::shared_ptr<const SessionObject> result;
  {
    std::lock_guard lock(mutex_);
    if (auto found = entries_.find(digest); found != entries_.end()) {
      order_.splice(order_.begin(), order_, found->second.position);
      evicted.push_back(std::move(key));
      return found->second.key;
    }
    order_.push_front(digest);
    entries_.emplace(digest, Entry{key, order_.begin()});
    result = std::move(key);
    while (entries_.size() > capacity_) {
      auto oldest = entries_.find(order_.back());
      evicted.push_back(std::move(oldest->second.key));
      entries_.erase(oldest);
      order_.pop_back();
    }
  }
  return result;
}

void UnwrapCache::clear() {
  std::map<Digest, Entry> dropped;
  {
    std::lock_guard lock(mutex_);
    dropped.swap(entries_);
    order_.clear();
  }
}

}  // namespace m2mvault::hsm::pkcs11
