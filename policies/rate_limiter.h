// Per-uid request rate limiting: one token bucket per uid, filled at
// `requests_per_second` up to `burst` tokens; a request takes one token.
//
// The caller decides who is exempt (administrators are). Thread-safe.
// Memory is bounded: a bucket that has refilled completely is no different
// from a new one and is dropped, and at most `max_buckets` are kept.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <mutex>
#include <unordered_map>

namespace m2mvault::policies {

class RateLimiter {
 public:
  using Clock = std::chrono::steady_clock;

  // requests_per_second 0 (or less) means unlimited: allow() is always true.
  // burst below 1 means max(1, requests_per_second).
  RateLimiter(double requests_per_second, double burst, std::size_t max_buckets = 4096);

  // Takes one token from `uid`'s bucket at time `now`; false when it is empty.
  bool allow(uid_t uid, Clock::time_point now);

  // Buckets currently held (for tests and status).
  std::size_t tracked() const;

 private:
  struct Bucket {
    double tokens;
    Clock::time_point last;  // when `tokens` was last brought up to date
  };

  // Brings `bucket` up to `now`; returns true if it is full.
  bool refill(Bucket& bucket, Clock::time_point now) const;
  // Drops full buckets; if all are busy, the least recently used one.
  void make_room(Clock::time_point now);

  double rate_;
  double burst_;
  std::size_t max_buckets_;
  mutable std::mutex mutex_;
  std::unordered_map<uid_t, Bucket> buckets_;
};

}  // namespace m2mvault::policies
