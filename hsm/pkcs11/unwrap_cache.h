// A bounded LRU of unwrapped session objects keyed by SHA-256(blob), so
// repeated HMACs with one wrapped key do not unwrap it each time.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <span>

#include "hsm/pkcs11/ck.h"
#include "hsm/pkcs11/session_pool.h"

namespace m2mvault::hsm::pkcs11 {

// A session object the backend made (an unwrapped secret, or the session copy
// of a signing key); destroyed through the housekeeping session when the
// last user and its cache let go of it. `length` is the secret's length, 0
// for a key without one.
class SessionObject {
 public:
  SessionObject(SessionPool& housekeeping, CK_OBJECT_HANDLE handle, std::size_t length)
      : housekeeping_(housekeeping), handle_(handle), length_(length) {}
  SessionObject(const SessionObject&) = delete;
  SessionObject& operator=(const SessionObject&) = delete;
  ~SessionObject();

  CK_OBJECT_HANDLE handle() const noexcept { return handle_; }
  std::size_t length() const noexcept { return length_; }

 private:
  SessionPool& housekeeping_;
  CK_OBJECT_HANDLE handle_;
  std::size_t length_;
};

class UnwrapCache {
 public:
  using Digest = std::array<std::uint8_t, 32>;

  explicit UnwrapCache(std::size_t capacity) : capacity_(capacity) {}

  static Digest digest_of(std::span<const std::uint8_t> blob);

  // The cached key for `digest` (now the most recently used), or null.
  std::shared_ptr<const SessionObject> find(const Digest& digest);
  // Caches `key`, evicting the least recently used entry beyond capacity.
  // When another thread cached the same blob first, its key is kept and returned.
  std::shared_ptr<const SessionObject> insert(const Digest& digest,
                                              std::shared_ptr<const SessionObject> key);
  // Drops every entry (their objects go when their last user lets go).
  void clear();

 private:
  struct Entry {
    std::shared_ptr<const SessionObject> key;
    std::list<Digest>::iterator position;
  };

  std::size_t capacity_;
  std::mutex mutex_;
  std::list<Digest> order_;  // most recently used first
  std::map<Digest, Entry> entries_;
};

}  // namespace m2mvault::hsm::pkcs11
