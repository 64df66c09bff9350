// SecureBuffer: the only type that holds key bytes outside the token.
// Its memory is locked (mlock, so it is never swapped out), excluded from core
// dumps (MADV_DONTDUMP), and wiped with OPENSSL_cleanse when released.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace m2mvault::hsm {

class SecureBuffer {
 public:
  SecureBuffer() = default;
  // A zero-filled buffer of `size` bytes. Throws std::bad_alloc on failure.
  explicit SecureBuffer(std::size_t size);
  // Copies `bytes` in; the caller remains responsible for wiping its source.
  static SecureBuffer copy_of(std::span<const std::uint8_t> bytes);

  SecureBuffer(SecureBuffer&& other) noexcept;
  SecureBuffer& operator=(SecureBuffer&& other) noexcept;
  SecureBuffer(const SecureBuffer&) = delete;
  SecureBuffer& operator=(const SecureBuffer&) = delete;
  ~SecureBuffer();

  std::uint8_t* data() noexcept { return data_; }
  const std::uint8_t* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  std::span<std::uint8_t> span() noexcept { return {data_, size_}; }
  std::span<const std::uint8_t> span() const noexcept { return {data_, size_}; }

  // Shrinks the logical size (the tail is wiped); never grows.
  void truncate(std::size_t new_size) noexcept;

 private:
  void release() noexcept;

  std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
  std::size_t capacity_ = 0;
};

}  // namespace m2mvault::hsm
