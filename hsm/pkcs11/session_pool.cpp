#include "hsm/pkcs11/session_pool.h"

#include "hsm/pkcs11/ck_util.h"

namespace m2mvault::hsm::pkcs11 {

SessionPool::SessionPool(CK_FUNCTION_LIST* fn, CK_SLOT_ID slot, std::size_t size) : fn_(fn) {
  if (size == 0) size = 1;
  all_.reserve(size);
  for (std::size_t i = 0; i < size; ++i) {
    CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
    const CK_RV rv =
        fn_->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &session);
    if (rv != CKR_OK) {
      for (CK_SESSION_HANDLE opened : all_) fn_->C_CloseSession(opened);
      fail_call(Failure::unavailable, "C_OpenSession", rv);
    }
    all_.push_back(session);
  }
  free_ = all_;
}

SessionPool::~SessionPool() {
  for (CK_SESSION_HANDLE session : all_) fn_->C_CloseSession(session);
}

SessionPool::Lease SessionPool::borrow() {
  std::unique_lock lock(mutex_);
  available_.wait(lock, [this] { return !free_.empty(); });
  const CK_SESSION_HANDLE session = free_.back();
  free_.pop_back();
  return Lease(*this, session);
}

void SessionPool::give_back(CK_SESSION_HANDLE handle) noexcept {
  {
    std::lock_guard lock(mutex_);
    free_.push_back(handle);
  }
  available_.notify_one();
}

}  // namespace m2mvault::hsm::pkcs11
