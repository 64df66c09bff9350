#include "hsm/secure_buffer.h"

#include <openssl/crypto.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <new>
#include <utility>

namespace m2mvault::hsm {
namespace {

std::size_t page_rounded(std::size_t size) {
  static const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  return (size + page - 1) / page * page;
}

}  // namespace

SecureBuffer::SecureBuffer(std::size_t size) {
  if (size == 0) return;
  // Whole pages of our own, so locking and the no-dump advice cover nothing else.
  const std::size_t capacity = page_rounded(size);
  void* memory =
      mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) throw std::bad_alloc();
  // mlock can fail under a small RLIMIT_MEMLOCK; the buffer is still wiped on
  // release and kept out of core dumps, so carry on.
  (void)mlock(memory, capacity);
  (void)madvise(memory, capacity, MADV_DONTDUMP);
  data_ = static_cast<std::uint8_t*>(memory);  // anonymous pages are zero-filled
  size_ = size;
  capacity_ = capacity;
}

SecureBuffer SecureBuffer::copy_of(std::span<const std::uint8_t> bytes) {
  SecureBuffer buffer(bytes.size());
  if (!bytes.empty()) std::memcpy(buffer.data_, bytes.data(), bytes.size());
  return buffer;
}

SecureBuffer::SecureBuffer(SecureBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      capacity_(std::exchange(other.capacity_, 0)) {}

SecureBuffer& SecureBuffer::operator=(SecureBuffer&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    capacity_ = std::exchange(other.capacity_, 0);
  }
  return *this;
}

SecureBuffer::~SecureBuffer() {
  release();
}

void SecureBuffer::truncate(std::size_t new_size) noexcept {
  if (new_size >= size_) return;
  OPENSSL_cleanse(data_ + new_size, size_ - new_size);
  size_ = new_size;
}

void SecureBuffer::release() noexcept {
  if (data_ == nullptr) return;
  OPENSSL_cleanse(data_, capacity_);
  (void)munlock(data_, capacity_);
  (void)munmap(data_, capacity_);
  data_ = nullptr;
  size_ = 0;
  capacity_ = 0;
}

}  // namespace m2mvault::hsm
