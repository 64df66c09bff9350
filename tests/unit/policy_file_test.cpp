#include "policies/policy_file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "api/error.h"
#include "policies/rate_limiter.h"

namespace m2mvault::policies {
namespace {

constexpr uid_t kDaemonUid = 4242;
constexpr uid_t kNobody = 65534;   // "nobody" on Debian
constexpr gid_t kNogroup = 65534;  // "nogroup" on Debian

PolicyFile parse(const std::string& text) {
  return PolicyFile::parse(text, "policy.toml", kDaemonUid);
}

// The message of the Error parsing `text` throws, after checking its code.
std::string parse_error(const std::string& text) {
  try {
    parse(text);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::invalid_argument);
    return e.what();
  }
  ADD_FAILURE() << "no error for:\n" << text;
  return "";
}

bool starts_with(const std::string& text, const std::string& prefix) {
  return text.rfind(prefix, 0) == 0;
}

Principal user(uid_t uid, gid_t gid = 5000, std::vector<gid_t> groups = {}) {
  return {uid, gid, std::move(groups)};
}

KeyFacts key(std::string name, std::optional<std::string> identifier = std::nullopt,
             std::string kind = "kpsa") {
  return {std::move(name), std::move(identifier), std::move(kind)};
}

// --- Grants ---------------------------------------------------------------

TEST(PolicyGrants, EveryGrantRoundTripsThroughItsFileSpelling) {
  for (auto text : {"key.read", "key.create", "key.delete", "sign", "psk.release", "derive",
                    "handshake", "audit.read", "policy.admin"}) {
    auto grant = parse_grant(text);
    ASSERT_TRUE(grant) << text;
    EXPECT_EQ(to_string(*grant), text);
  }
  EXPECT_FALSE(parse_grant("key.steal"));
  EXPECT_FALSE(parse_grant("Sign"));
}

// --- Parse errors name the file and line ---------------------------------

TEST(PolicyFileErrors, BadTomlNamesTheLine) {
  auto message = parse_error("[[rule]]\nname = \"a\"\nuids = [1001\n");
  EXPECT_TRUE(starts_with(message, "policy.toml:3:") || starts_with(message, "policy.toml:4:"))
      << message;
}

TEST(PolicyFileErrors, UnknownKeysNameTheLine) {
  EXPECT_TRUE(
      starts_with(parse_error("\n[limit]\nburst = 1\n"), "policy.toml:2: unknown key 'limit'"))
      << parse_error("\n[limit]\nburst = 1\n");
  auto in_limits = parse_error("[limits]\nburst = 10\nrequests_per_sec = 5\n");
  EXPECT_TRUE(starts_with(in_limits, "policy.toml:3: unknown key 'limits.requests_per_sec'"))
      << in_limits;
  auto in_rule = parse_error("[[rule]]\nuids = [1001]\ngrants = [\"sign\"]\nkey = [\"a\"]\n");
  EXPECT_TRUE(starts_with(in_rule, "policy.toml:4: unknown key 'rule.key'")) << in_rule;
}

TEST(PolicyFileErrors, UnknownGrantNamesTheLine) {
  auto message = parse_error(
      "[[rule]]\nname = \"gw\"\nuids = [1001]\ngrants = [\n  \"sign\",\n  \"key.raed\",\n]\n");
  EXPECT_TRUE(starts_with(message, "policy.toml:6: rule 'gw': unknown grant 'key.raed'"))
      << message;
}

TEST(PolicyFileErrors, UnknownKindNamesTheLine) {
  auto message =
      parse_error("[[rule]]\nuids = [1001]\ngrants = [\"sign\"]\nkinds = [\"signature\"]\n");
  EXPECT_TRUE(starts_with(message, "policy.toml:4: rule '#1': unknown key kind 'signature'"))
      << message;
}

TEST(PolicyFileErrors, UnknownUserOrGroupNameNamesTheLine) {
  auto user_message = parse_error(
      "[[rule]]\nname = \"gw\"\nusers = [\"no-such-user-m2mvault\"]\ngrants = [\"sign\"]\n");
  EXPECT_TRUE(
      starts_with(user_message, "policy.toml:3: rule 'gw': unknown user 'no-such-user-m2mvault'"))
      << user_message;
  auto group_message = parse_error(
      "[[rule]]\nname = \"gw\"\ngrants = [\"sign\"]\ngroups = [\"no-such-group-m2mvault\"]\n");
  EXPECT_TRUE(starts_with(group_message,
                          "policy.toml:4: rule 'gw': unknown group 'no-such-group-m2mvault'"))
      << group_message;
}

TEST(PolicyFileErrors, RuleWithoutGrantsIsRejected) {
  auto missing = parse_error("[[rule]]\nname = \"a\"\nuids = [1001]\n\n[[rule]]\nname = \"b\"\n");
  EXPECT_TRUE(starts_with(missing, "policy.toml:1: rule 'a' grants nothing")) << missing;
  auto empty = parse_error("[[rule]]\nuids = [1001]\ngrants = []\n");
  EXPECT_TRUE(starts_with(empty, "policy.toml:3: 'grants' must not be empty")) << empty;
}

TEST(PolicyFileErrors, RuleWithoutPrincipalIsRejected) {
  auto message = parse_error("[[rule]]\nname = \"anyone\"\ngrants = [\"key.read\"]\n");
  EXPECT_TRUE(starts_with(message, "policy.toml:1: rule 'anyone' names no principal")) << message;
}

TEST(PolicyFileErrors, WrongShapesAreRejected) {
  EXPECT_NE(parse_error("[rule]\nuids = [1]\ngrants = [\"sign\"]\n").find("write [[rule]]"),
            std::string::npos);
  EXPECT_NE(
      parse_error("[[rule]]\nuids = 1001\ngrants = [\"sign\"]\n").find("'uids' must be an array"),
      std::string::npos);
  EXPECT_NE(
      parse_error("[[rule]]\nuids = [-1]\ngrants = [\"sign\"]\n").find("'uids' must hold ids"),
      std::string::npos);
  EXPECT_NE(parse_error("[[rule]]\nusers = [1001]\ngrants = [\"sign\"]\n")
                .find("'users' must hold non-empty strings"),
            std::string::npos);
  EXPECT_NE(parse_error("[limits]\nrequests_per_second = \"fast\"\n").find("must be a number"),
            std::string::npos);
  EXPECT_NE(parse_error("[limits]\nburst = 0.5\n").find("'burst' must be a number of at least 1"),
            std::string::npos);
  EXPECT_NE(parse_error("[limits]\ndenial_flood_window_s = 0\n").find("at least 1"),
            std::string::npos);
  EXPECT_NE(parse_error("[[rule]]\nname = \"a\"\nuids = [1]\ngrants = [\"sign\"]\n"
                        "[[rule]]\nname = \"a\"\nuids = [2]\ngrants = [\"sign\"]\n")
                .find("policy.toml:6: another rule is already named 'a'"),
            std::string::npos);
}

// --- Principals -----------------------------------------------------------

TEST(PolicyFilePrincipals, RuleMatchesByUid) {
  auto policy = parse("[[rule]]\nname = \"gw\"\nuids = [1001]\ngrants = [\"sign\"]\n");
  EXPECT_TRUE(policy.authorize(user(1001), PolicyGrant::sign, nullptr).allowed);
  EXPECT_FALSE(policy.authorize(user(1002), PolicyGrant::sign, nullptr).allowed);
}

TEST(PolicyFilePrincipals, RuleMatchesByPrimaryOrSupplementaryGid) {
  auto policy = parse("[[rule]]\ngids = [7000]\ngrants = [\"sign\"]\n");
  EXPECT_TRUE(policy.authorize(user(1001, 7000), PolicyGrant::sign, nullptr).allowed);
  EXPECT_TRUE(policy.authorize(user(1001, 5000, {6000, 7000}), PolicyGrant::sign, nullptr).allowed);
  EXPECT_FALSE(policy.authorize(user(1001, 5000, {6000}), PolicyGrant::sign, nullptr).allowed);
}

TEST(PolicyFilePrincipals, UserAndGroupNamesResolveAtLoad) {
  auto policy = parse(
      "[[rule]]\nname = \"nobody\"\nusers = [\"nobody\"]\ngrants = [\"key.read\"]\n"
      "[[rule]]\nname = \"wheel\"\ngroups = [\"root\"]\ngrants = [\"derive\"]\n"
      "[[rule]]\nname = \"nogroup\"\ngroups = [\"nogroup\"]\ngrants = [\"handshake\"]\n");
  EXPECT_TRUE(policy.authorize(user(kNobody), PolicyGrant::key_read, nullptr).allowed);
  EXPECT_FALSE(policy.authorize(user(1001), PolicyGrant::key_read, nullptr).allowed);
  // Group "root" (gid 0) for a principal that is not uid 0.
  EXPECT_TRUE(policy.authorize(user(1001, 0), PolicyGrant::derive, nullptr).allowed);
  EXPECT_TRUE(policy.authorize(user(1001, 5000, {0}), PolicyGrant::derive, nullptr).allowed);
  EXPECT_FALSE(policy.authorize(user(1001), PolicyGrant::derive, nullptr).allowed);
  EXPECT_TRUE(policy.authorize(user(1001, kNogroup), PolicyGrant::handshake, nullptr).allowed);
  EXPECT_FALSE(policy.authorize(user(kNobody, 5000), PolicyGrant::handshake, nullptr).allowed);
}

TEST(PolicyFilePrincipals, AnySelectorOfARuleSuffices) {
  auto policy = parse("[[rule]]\nuids = [1001]\ngids = [7000]\ngrants = [\"sign\"]\n");
  EXPECT_TRUE(policy.authorize(user(1001), PolicyGrant::sign, nullptr).allowed);
  EXPECT_TRUE(policy.authorize(user(1002, 7000), PolicyGrant::sign, nullptr).allowed);
}

// --- Keys -----------------------------------------------------------------

TEST(PolicyFileKeys, GlobsMatchTheKeyNameCaseSensitively) {
  auto policy =
      parse("[[rule]]\nuids = [1001]\ngrants = [\"psk.release\"]\nkeys = [\"mn-cse-*\"]\n");
  auto gateway = user(1001);
  auto ok = key("mn-cse-7");
  auto other = key("asn-ae-1");
  auto upper = key("MN-CSE-7");
  EXPECT_TRUE(policy.authorize(gateway, PolicyGrant::psk_release, &ok).allowed);
  EXPECT_FALSE(policy.authorize(gateway, PolicyGrant::psk_release, &other).allowed);
  EXPECT_FALSE(policy.authorize(gateway, PolicyGrant::psk_release, &upper).allowed);
}

TEST(PolicyFileKeys, GlobsMatchTheIdentifierWithCaseInsensitiveFqdn) {
  auto policy = parse(
      "[[rule]]\nuids = [1001]\ngrants = [\"key.read\"]\n"
      "keys = [\"*@IN.Provider.com\", \"Cae1/x@mef.example.com\"]\n");
  auto gateway = user(1001);
  auto lower = key("kc-1", "C0ffee+/=@in.provider.com", "kc");
  auto shouting = key("kc-2", "C0ffee@IN.PROVIDER.COM", "kc");
  auto elsewhere = key("kc-3", "C0ffee@in.other.com", "kc");
  auto exact = key("ke-1", "Cae1/x@MEF.example.COM", "ke");
  auto wrong_case_before_at = key("ke-2", "cae1/x@mef.example.com", "ke");
  auto no_identifier = key("in.provider.com");
  EXPECT_TRUE(policy.authorize(gateway, PolicyGrant::key_read, &lower).allowed);
  EXPECT_TRUE(policy.authorize(gateway, PolicyGrant::key_read, &shouting).allowed);
  EXPECT_FALSE(policy.authorize(gateway, PolicyGrant::key_read, &elsewhere).allowed);
  EXPECT_TRUE(policy.authorize(gateway, PolicyGrant::key_read, &exact).allowed);
  EXPECT_FALSE(policy.authorize(gateway, PolicyGrant::key_read, &wrong_case_before_at).allowed);
  EXPECT_FALSE(policy.authorize(gateway, PolicyGrant::key_read, &no_identifier).allowed);
  EXPECT_TRUE(policy.may_read_key(gateway, lower));
  EXPECT_FALSE(policy.may_read_key(gateway, elsewhere));
}

TEST(PolicyFileKeys, KindsFilterNarrowsTheKeys) {
  auto policy =
      parse("[[rule]]\nuids = [1001]\ngrants = [\"sign\", \"key.read\"]\nkinds = [\"signing\"]\n");
  auto gateway = user(1001);
  auto signing = key("cert-key", std::nullopt, "signing");
  auto psk = key("kpsa-1", std::nullopt, "kpsa");
  EXPECT_TRUE(policy.authorize(gateway, PolicyGrant::sign, &signing).allowed);
  EXPECT_FALSE(policy.authorize(gateway, PolicyGrant::key_read, &psk).allowed);
}

TEST(PolicyFileKeys, KeysDefaultToEveryKey) {
  auto policy = parse("[[rule]]\nuids = [1001]\ngrants = [\"key.read\"]\n");
  auto any = key("whatever", "X@y.z", "usage");
  EXPECT_TRUE(policy.authorize(user(1001), PolicyGrant::key_read, &any).allowed);
}

TEST(PolicyFileKeys, NonKeyScopedRequestsNeedOnlyTheGrant) {
  auto policy = parse(
      "[[rule]]\nname = \"auditor\"\nuids = [1003]\ngrants = [\"audit.read\", \"key.read\"]\n"
      "keys = [\"nothing-matches-this\"]\nkinds = [\"ke\"]\n");
  auto auditor = user(1003);
  EXPECT_TRUE(policy.authorize(auditor, PolicyGrant::audit_read, nullptr).allowed);
  EXPECT_TRUE(policy.authorize(auditor, PolicyGrant::key_read, nullptr).allowed);  // key.list
  EXPECT_FALSE(policy.authorize(auditor, PolicyGrant::policy_admin, nullptr).allowed);
  auto some_key = key("kpsa-1");
  EXPECT_FALSE(policy.authorize(auditor, PolicyGrant::key_read, &some_key).allowed);
}

TEST(PolicyFileKeys, TheFirstMatchingRuleIsNamed) {
  auto policy = parse(
      "[[rule]]\nname = \"psk-only\"\nuids = [1001]\ngrants = [\"key.read\"]\nkinds = [\"kpsa\"]\n"
      "[[rule]]\nname = \"signers\"\nuids = [1001]\ngrants = [\"key.read\", \"sign\"]\n"
      "kinds = [\"signing\"]\n");
  auto signing = key("cert-key", std::nullopt, "signing");
  auto decision = policy.authorize(user(1001), PolicyGrant::key_read, &signing);
  EXPECT_TRUE(decision.allowed);
  EXPECT_EQ(decision.reason,
            "uid 1001 holds 'key.read' on key 'cert-key' of kind signing by rule 'signers'");
}

// --- Administrators and default deny --------------------------------------

TEST(PolicyFileAdministrators, RootAndTheDaemonUidHoldEveryGrantOnEveryKey) {
  auto policy = parse("[[rule]]\nuids = [1001]\ngrants = [\"key.read\"]\nkeys = [\"x\"]\n");
  auto any = key("anything", "Z@q.r", "ke");
  for (auto p : {user(0, 0), user(kDaemonUid, 9)}) {
    for (auto grant : {PolicyGrant::key_delete, PolicyGrant::psk_release, PolicyGrant::policy_admin,
                       PolicyGrant::audit_read}) {
      auto decision = policy.authorize(p, grant, &any);
      EXPECT_TRUE(decision.allowed);
      EXPECT_NE(decision.reason.find("is an administrator"), std::string::npos);
      EXPECT_TRUE(policy.authorize(p, grant, nullptr).allowed);
    }
  }
  EXPECT_TRUE(policy.is_administrator(user(0)));
  EXPECT_FALSE(policy.is_administrator(user(1001)));
}

TEST(PolicyFileAdministrators, WithoutAFileOnlyAdministratorsAreAllowed) {
  auto policy = PolicyFile::defaults(kDaemonUid);
  EXPECT_TRUE(policy.authorize(user(kDaemonUid), PolicyGrant::sign, nullptr).allowed);
  EXPECT_TRUE(policy.authorize(user(0), PolicyGrant::sign, nullptr).allowed);
  EXPECT_FALSE(policy.authorize(user(1001, 0, {0}), PolicyGrant::key_read, nullptr).allowed);
  EXPECT_EQ(policy.describe(), "no policy file: administrators only");
  EXPECT_EQ(policy.limits().requests_per_second, 0);
}

TEST(PolicyFileDefaultDeny, ReasonNamesUidGrantAndKey) {
  auto policy = parse("[[rule]]\nuids = [1001]\ngrants = [\"key.read\"]\n");
  auto k = key("mn-cse-1", "C1@in.provider.com", "kpsa");
  auto denied = policy.authorize(user(1001), PolicyGrant::psk_release, &k);
  EXPECT_FALSE(denied.allowed);
  EXPECT_EQ(denied.reason,
            "no rule grants uid 1001 'psk.release' on key 'mn-cse-1' (C1@in.provider.com) of kind "
            "kpsa (default deny)");
  auto no_key = policy.authorize(user(1002), PolicyGrant::audit_read, nullptr);
  EXPECT_EQ(no_key.reason, "no rule grants uid 1002 'audit.read' (default deny)");
}

TEST(PolicyFileDefaultDeny, ReasonStaysOnOneLine) {
  auto policy = parse("");
  auto k = key("evil\nname", std::nullopt, "kpsa");
  auto denied = policy.authorize(user(1001), PolicyGrant::sign, &k);
  EXPECT_EQ(denied.reason.find('\n'), std::string::npos);
}

// --- Limits ---------------------------------------------------------------

TEST(PolicyFileLimits, DefaultsAndValuesAreRead) {
  auto none = parse("");
  EXPECT_EQ(none.limits().requests_per_second, 0);
  EXPECT_EQ(none.limits().connections_per_principal, 0u);
  EXPECT_EQ(none.limits().denial_flood_threshold, 50u);
  EXPECT_EQ(none.limits().denial_flood_window, std::chrono::seconds(10));

  auto set = parse(
      "[limits]\nrequests_per_second = 500\nburst = 1000\nconnections_per_principal = 64\n"
      "denial_flood_threshold = 20\ndenial_flood_window_s = 30\n");
  EXPECT_EQ(set.limits().requests_per_second, 500);
  EXPECT_EQ(set.limits().burst, 1000);
  EXPECT_EQ(set.limits().connections_per_principal, 64u);
  EXPECT_EQ(set.limits().denial_flood_threshold, 20u);
  EXPECT_EQ(set.limits().denial_flood_window, std::chrono::seconds(30));
  EXPECT_EQ(set.describe(),
            "policy policy.toml: 0 rules, 500 requests/s per uid (burst 1000), 64 connections per "
            "uid");

  auto rate_only = parse("[limits]\nrequests_per_second = 2.5\n");
  EXPECT_EQ(rate_only.limits().burst, 2.5);
}

// --- Loading from disk ----------------------------------------------------

class PolicyFileLoad : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = std::filesystem::temp_directory_path() /
            ("m2mvault-policy-" + std::to_string(::getpid()) + ".toml");
  }
  void TearDown() override { std::filesystem::remove(path_); }
  void write(const std::string& text, mode_t mode) {
    std::ofstream(path_) << text;
    ::chmod(path_.c_str(), mode);
  }
  std::string load_error() {
    try {
      PolicyFile::load(path_, ::geteuid());
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }
  std::filesystem::path path_;
};

TEST_F(PolicyFileLoad, ErrorsNameTheFile) {
  write("[[rule]]\nuids = [1001]\ngrants = [\"sing\"]\n", 0600);
  EXPECT_TRUE(starts_with(load_error(), path_.string() + ":3: rule '#1': unknown grant 'sing'"))
      << load_error();
}

TEST_F(PolicyFileLoad, AFileOthersCanWriteIsRefused) {
  write("[[rule]]\nuids = [1001]\ngrants = [\"sign\"]\n", 0620);
  EXPECT_NE(load_error().find("writable by group or others"), std::string::npos);
  ::chmod(path_.c_str(), 0644);
  auto policy = PolicyFile::load(path_, ::geteuid());
  EXPECT_EQ(policy.describe(), "policy " + path_.string() + ": 1 rule");
}

TEST_F(PolicyFileLoad, AFileOwnedBySomeoneElseIsRefused) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to chown";
  write("", 0644);
  ASSERT_EQ(::chown(path_.c_str(), kNobody, kNogroup), 0);
  EXPECT_NE(load_error().find("owned by uid 65534"), std::string::npos);
}

TEST_F(PolicyFileLoad, AMissingFileIsAnError) {
  EXPECT_NE(load_error().find("cannot open policy file"), std::string::npos);
}

// --- Rate limiter ---------------------------------------------------------

TEST(RateLimiter, BurstThenRefusalThenRefill) {
  RateLimiter limiter(2, 3);  // 2 tokens/s, bucket of 3
  const auto t0 = RateLimiter::Clock::time_point{} + std::chrono::hours(1);
  EXPECT_TRUE(limiter.allow(1001, t0));
  EXPECT_TRUE(limiter.allow(1001, t0));
  EXPECT_TRUE(limiter.allow(1001, t0));
  EXPECT_FALSE(limiter.allow(1001, t0));
  EXPECT_TRUE(limiter.allow(1002, t0));                                    // buckets are per uid
  EXPECT_FALSE(limiter.allow(1001, t0 + std::chrono::milliseconds(400)));  // 0.8 token
  EXPECT_TRUE(limiter.allow(1001, t0 + std::chrono::milliseconds(500)));   // 1 token
  EXPECT_FALSE(limiter.allow(1001, t0 + std::chrono::milliseconds(500)));
  // A long pause refills to the burst, not beyond.
  const auto later = t0 + std::chrono::seconds(60);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(limiter.allow(1001, later));
  EXPECT_FALSE(limiter.allow(1001, later));
}

TEST(RateLimiter, TimeGoingBackwardsAddsNothing) {
  RateLimiter limiter(1, 1);
  const auto t0 = RateLimiter::Clock::time_point{} + std::chrono::hours(1);
  EXPECT_TRUE(limiter.allow(7, t0));
  EXPECT_FALSE(limiter.allow(7, t0 - std::chrono::seconds(5)));
  EXPECT_FALSE(limiter.allow(7, t0));
}

TEST(RateLimiter, ZeroRateIsUnlimited) {
  RateLimiter limiter(0, 0);
  const auto t0 = RateLimiter::Clock::time_point{};
  for (int i = 0; i < 10000; ++i) ASSERT_TRUE(limiter.allow(1001, t0));
  EXPECT_EQ(limiter.tracked(), 0u);
}

TEST(RateLimiter, IdleBucketsAreDroppedAndMemoryIsBounded) {
  RateLimiter limiter(10, 10, 4);
  const auto t0 = RateLimiter::Clock::time_point{} + std::chrono::hours(1);
  for (uid_t uid = 0; uid < 4; ++uid) limiter.allow(uid, t0);
  EXPECT_EQ(limiter.tracked(), 4u);
  // A second later every bucket is full again: all are dropped for the new one.
  EXPECT_TRUE(limiter.allow(100, t0 + std::chrono::seconds(1)));
  EXPECT_EQ(limiter.tracked(), 1u);
  // With every bucket busy, the cap still holds.
  for (uid_t uid = 200; uid < 300; ++uid) limiter.allow(uid, t0 + std::chrono::seconds(2));
  EXPECT_LE(limiter.tracked(), 4u);
}

}  // namespace
}  // namespace m2mvault::policies
