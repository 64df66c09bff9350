#include "policies/policy.h"

#include <gtest/gtest.h>

namespace m2mvault::policies {
namespace {

TEST(OperationTable, EveryOperationHasExactlyOneGrant) {
  for (auto op : known_operations()) EXPECT_TRUE(grant_for_operation(op)) << op;
  EXPECT_EQ(grant_for_operation("sign"), Grant::sign);
  EXPECT_EQ(grant_for_operation("key.import"), Grant::key_create);
  EXPECT_EQ(grant_for_operation("key.public"), Grant::key_read);
  EXPECT_FALSE(grant_for_operation("key.steal"));
}

TEST(DefaultPolicy, OnlyTheDaemonUidAndRootAdminister) {
  Policy policy(1000);
  EXPECT_TRUE(policy.authorize({0, 0, {}}, Grant::key_create).allowed);
  EXPECT_TRUE(policy.authorize({1000, 1000, {}}, Grant::sign).allowed);
  auto denied = policy.authorize({1001, 1000, {1000}}, Grant::key_read);
  EXPECT_FALSE(denied.allowed);
  EXPECT_NE(denied.reason.find("1001"), std::string::npos);
  EXPECT_TRUE(policy.authorize({1001, 1001, {}}, Grant::none).allowed);
}

}  // namespace
}  // namespace m2mvault::policies
