// A fixed set of R/W sessions on one slot, so concurrent operations do not
// serialize on a single session (a PKCS#11 session runs one operation at a time).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <vector>

#include "hsm/pkcs11/ck.h"

namespace m2mvault::hsm::pkcs11 {

class SessionPool {
 public:
  // Opens `size` (at least 1) R/W sessions; throws Error(unavailable) on failure.
  SessionPool(CK_FUNCTION_LIST* fn, CK_SLOT_ID slot, std::size_t size);
  // Closes every session (the pool must not be borrowed from any more).
  ~SessionPool();
  SessionPool(const SessionPool&) = delete;
  SessionPool& operator=(const SessionPool&) = delete;

  // One borrowed session, returned to the pool when the lease ends.
  class Lease {
   public:
    Lease(SessionPool& pool, CK_SESSION_HANDLE handle) : pool_(&pool), handle_(handle) {}
    Lease(Lease&& other) noexcept : pool_(other.pool_), handle_(other.handle_) {
      other.pool_ = nullptr;
    }
    Lease& operator=(Lease&&) = delete;
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease() {
      if (pool_ != nullptr) pool_->give_back(handle_);
    }
    CK_SESSION_HANDLE handle() const noexcept { return handle_; }

   private:
    SessionPool* pool_;
    CK_SESSION_HANDLE handle_;
  };

  // Waits until a session is free.
  Lease borrow();

  CK_FUNCTION_LIST* fn() const noexcept { return fn_; }

 private:
  void give_back(CK_SESSION_HANDLE handle) noexcept;

  CK_FUNCTION_LIST* fn_;
  std::vector<CK_SESSION_HANDLE> all_;
  std::mutex mutex_;
  std::condition_variable available_;
  std::vector<CK_SESSION_HANDLE> free_;
};

}  // namespace m2mvault::hsm::pkcs11
