// Key kinds and storage classes as the CLI, the wire and the catalog write them.
#include "vault/key_model.h"

#include <gtest/gtest.h>

#include "api/error.h"

namespace m2mvault::vault {
namespace {

TEST(KeyModel, EveryKindRoundTripsThroughItsName) {
  const std::pair<KeyKind, const char*> kinds[] = {
      {KeyKind::kpsa, "kpsa"},   {KeyKind::kpm, "kpm"},        {KeyKind::ke, "ke"},
      {KeyKind::km, "km"},       {KeyKind::kc, "kc"},          {KeyKind::e2e, "e2e"},
      {KeyKind::usage, "usage"}, {KeyKind::signing, "signing"}};
  for (const auto& [kind, name] : kinds) {
    EXPECT_EQ(to_string(kind), name);
    EXPECT_EQ(parse_key_kind(name), kind);
  }
}

TEST(KeyModel, UnknownKindIsInvalidArgumentNamingIt) {
  for (const char* bad : {"", "KPSA", "kpsa ", "psk"}) {
    try {
      parse_key_kind(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::invalid_argument);
      EXPECT_NE(std::string(e.what()).find(std::string("unknown key kind '") + bad + "'"),
                std::string::npos)
          << e.what();
      EXPECT_NE(std::string(e.what()).find("expected"), std::string::npos);
    }
  }
}

TEST(KeyModel, StorageRoundTripsAndRejectsUnknownNames) {
  for (auto s : {Storage::wrapped, Storage::token, Storage::adopted}) {
    EXPECT_EQ(parse_storage(to_string(s)), s);
  }
  EXPECT_EQ(to_string(Storage::adopted), "adopted");
  try {
    parse_storage("sealed");
    ADD_FAILURE() << "accepted 'sealed'";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::invalid_argument);
    EXPECT_NE(std::string(e.what()).find("'sealed'"), std::string::npos);
  }
}

TEST(KeyModel, OnlyKeAndSigningKeysLiveInTheToken) {
  EXPECT_TRUE(is_psk_kind(KeyKind::kpsa));
  EXPECT_TRUE(is_psk_kind(KeyKind::kc));
  EXPECT_TRUE(is_psk_kind(KeyKind::e2e));
  EXPECT_FALSE(is_psk_kind(KeyKind::ke));
  EXPECT_FALSE(is_psk_kind(KeyKind::signing));
  EXPECT_FALSE(is_symmetric(KeyKind::signing));
}

}  // namespace
}  // namespace m2mvault::vault
