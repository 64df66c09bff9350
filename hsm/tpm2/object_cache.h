// The TPM objects kept loaded, least recently used first out. A TPM holds
// only a few transient objects at once (3 on swtpm and on most discrete
// TPMs, and 3 per connection behind the kernel's resource manager); every
// other key lives as a blob and is loaded on demand. Not thread-safe: Tpm2
// serializes use.
#pragma once

#include <cstddef>
#include <list>
#include <map>

#include "hsm/tpm2/connection.h"
#include "hsm/tpm2/key_blob.h"

namespace m2mvault::hsm::tpm2 {

class ObjectCache {
 public:
  explicit ObjectCache(std::size_t capacity) : capacity_(capacity) {}
  ObjectCache(const ObjectCache&) = delete;
  ObjectCache& operator=(const ObjectCache&) = delete;

  std::size_t capacity() const noexcept { return capacity_; }
  std::size_t size() const noexcept { return entries_.size(); }
  bool full() const noexcept { return entries_.size() >= capacity_; }

  // The loaded object of the blob with this digest, now the most recently
  // used; ESYS_TR_NONE when it is not loaded.
  ESYS_TR find(const BlobDigest& digest);

  // Keeps a freshly loaded object as the most recently used. The caller
  // made room first (evict_one() while full()).
  ESYS_TR insert(const BlobDigest& digest, LoadedHandle object);

  // Flushes the least recently used object from the TPM; false when none is
  // loaded.
  bool evict_one();

  // Forgets every object without TPM commands (the TPM was reset).
  void abandon_all() noexcept;

 private:
  struct Entry {
    BlobDigest digest;
    LoadedHandle object;
  };
  std::size_t capacity_;
  std::list<Entry> entries_;  // most recently used first
  std::map<BlobDigest, std::list<Entry>::iterator> index_;
};

}  // namespace m2mvault::hsm::tpm2
