#include "hsm/tpm2/object_cache.h"

#include <utility>

namespace m2mvault::hsm::tpm2 {

ESYS_TR ObjectCache::find(const BlobDigest& digest) {
  const auto it = index_.find(digest);
  if (it == index_.end()) return ESYS_TR_NONE;
  entries_.splice(entries_.begin(), entries_, it->second);
  return it->second->object.get();
}

ESYS_TR ObjectCache::insert(const BlobDigest& digest, LoadedHandle object) {
  entries_.push_front(Entry{digest, std::move(object)});
  index_[digest] = entries_.begin();
  return entries_.front().object.get();
}

bool ObjectCache::evict_one() {
  if (entries_.empty()) return false;
  index_.erase(entries_.back().digest);
  entries_.pop_back();  // LoadedHandle flushes it
  return true;
}

void ObjectCache::abandon_all() noexcept {
  for (Entry& entry : entries_) entry.object.abandon();
  entries_.clear();
  index_.clear();
}

}  // namespace m2mvault::hsm::tpm2
