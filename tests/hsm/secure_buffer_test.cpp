#include "hsm/secure_buffer.h"

#include <gtest/gtest.h>

#include <vector>

namespace m2mvault::hsm {
namespace {

TEST(SecureBuffer, StartsZeroedAndCopiesIn) {
  SecureBuffer zero(40);
  ASSERT_EQ(zero.size(), 40u);
  for (std::uint8_t b : zero.span()) EXPECT_EQ(b, 0);
  const std::vector<std::uint8_t> bytes{1, 2, 3, 4};
  SecureBuffer copy = SecureBuffer::copy_of(bytes);
  EXPECT_EQ(std::vector<std::uint8_t>(copy.data(), copy.data() + copy.size()), bytes);
}

TEST(SecureBuffer, TruncateWipesTheTailAndNeverGrows) {
  const std::vector<std::uint8_t> bytes{9, 9, 9, 9, 9, 9};
  SecureBuffer buffer = SecureBuffer::copy_of(bytes);
  buffer.truncate(2);
  EXPECT_EQ(buffer.size(), 2u);
  EXPECT_EQ(buffer.data()[2], 0);  // the capacity is still ours to look at
  buffer.truncate(10);
  EXPECT_EQ(buffer.size(), 2u);
}

TEST(SecureBuffer, MovesLeaveTheSourceEmpty) {
  SecureBuffer a(8);
  a.data()[0] = 7;
  SecureBuffer b(std::move(a));
  EXPECT_TRUE(a.empty());  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(a.data(), nullptr);
  EXPECT_EQ(b.data()[0], 7);
  SecureBuffer c;
  c = std::move(b);
  EXPECT_EQ(c.size(), 8u);
  EXPECT_TRUE(SecureBuffer().empty());
  EXPECT_TRUE(SecureBuffer(0).empty());
}

}  // namespace
}  // namespace m2mvault::hsm
