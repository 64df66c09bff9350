#include "policies/rate_limiter.h"

#include <algorithm>
#include <iterator>

namespace m2mvault::policies {

RateLimiter::RateLimiter(double requests_per_second, double burst, std::size_t max_buckets)
    : rate_(std::max(requests_per_second, 0.0)),
      burst_(burst >= 1 ? burst : std::max(1.0, requests_per_second)),
      max_buckets_(std::max<std::size_t>(max_buckets, 1)) {}

bool RateLimiter::refill(Bucket& bucket, Clock::time_point now) const {
  // A time before the last one (an injected clock) adds nothing.
  if (now > bucket.last) {
    const double elapsed = std::chrono::duration<double>(now - bucket.last).count();
    bucket.tokens = std::min(burst_, bucket.tokens + elapsed * rate_);
    bucket.last = now;
  }
  return bucket.tokens >= burst_;
}

void RateLimiter::make_room(Clock::time_point now) {
  for (auto it = buckets_.begin(); it != buckets_.end();) {
    it = refill(it->second, now) ? buckets_.erase(it) : std::next(it);
  }
  if (buckets_.size() < max_buckets_) return;
  // Every bucket is in use: forgetting the stalest one at worst gives that
  // uid a fresh burst, which only happens with more active uids than slots.
  auto stalest = std::min_element(buckets_.begin(), buckets_.end(),
                                  [](auto& a, auto& b) { return a.second.last < b.second.last; });
  buckets_.erase(stalest);
}

bool RateLimiter::allow(uid_t uid, Clock::time_point now) {
  if (rate_ <= 0) return true;
  std::lock_guard lock(mutex_);
  auto it = buckets_.find(uid);
  if (it == buckets_.end()) {
    if (buckets_.size() >= max_buckets_) make_room(now);
    it = buckets_.emplace(uid, Bucket{burst_, now}).first;
  } else {
    refill(it->second, now);
  }
  if (it->second.tokens < 1) return false;
  it->second.tokens -= 1;
  return true;
}

std::size_t RateLimiter::tracked() const {
  std::lock_guard lock(mutex_);
  return buckets_.size();
}

}  // namespace m2mvault::policies
