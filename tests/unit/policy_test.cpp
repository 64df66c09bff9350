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

TEST(OperationTable, EveryGrantButNoneIsAPolicyFileGrant) {
  for (auto op : known_operations()) {
    const Grant grant = *grant_for_operation(op);
    EXPECT_EQ(as_policy_grant(grant).has_value(), grant != Grant::none) << op;
  }
  EXPECT_EQ(as_policy_grant(Grant::audit_read), PolicyGrant::audit_read);
  for (auto op : known_operations()) {
    const Grant grant = *grant_for_operation(op);
    if (grant != Grant::none) {
      EXPECT_EQ(grant_named(to_string(grant)), grant) << op;
    }
  }
  EXPECT_FALSE(grant_named("none"));
  EXPECT_FALSE(grant_named("key.raed"));
}

TEST(PolicyStore, WithoutAFileOnlyTheDaemonUidAndRootAdminister) {
  PolicyStore store(std::nullopt, 1000);
  auto policy = store.current();
  EXPECT_TRUE(policy->authorize({0, 0, {}}, PolicyGrant::key_create, nullptr).allowed);
  EXPECT_TRUE(policy->authorize({1000, 1000, {}}, PolicyGrant::sign, nullptr).allowed);
  auto denied = policy->authorize({1001, 1000, {1000}}, PolicyGrant::key_read, nullptr);
  EXPECT_FALSE(denied.allowed);
  EXPECT_NE(denied.reason.find("1001"), std::string::npos);
}

}  // namespace
}  // namespace m2mvault::policies
