// The catalog against a real SQLite file in a temp directory.
#include "vault/catalog.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <random>
#include <set>
#include <thread>

#include "api/error.h"

namespace m2mvault::vault {
// Test hook defined in catalog.cpp: transactions committed so far.
std::uint64_t catalog_commit_count(Catalog& catalog);

namespace {

class CatalogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/m2mvault-catalog-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    path_ = dir_ / "catalog.db";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  static KeyRecord kpsa(const std::string& id, const std::string& entity = "Clock-AE1") {
    KeyRecord r;
    r.kind = KeyKind::kpsa;
    r.identifier = id;
    r.entity = entity;
    r.created = 1'800'000'000;
    r.storage = Storage::wrapped;
    r.blob = {1, 2, 3, 4};
    r.length = 8;
    r.check_value = "0011223344556677";
    return r;
  }

  std::filesystem::path dir_;
  std::filesystem::path path_;
};

TEST_F(CatalogTest, InsertThenFindByNameOrIdentifierInAnyFqdnCase) {
  auto catalog = Catalog::open(path_);
  KeyRecord stored = catalog->insert(kpsa("AE123456789012-Lock@in.provider.com"));
  EXPECT_GT(stored.row, 0);
  EXPECT_EQ(stored.name, "AE123456789012-Lock@in.provider.com");  // name defaults to the identifier
  auto found = catalog->find("AE123456789012-Lock@IN.PROVIDER.com");
  ASSERT_TRUE(found);
  EXPECT_EQ(found->entity, "Clock-AE1");
  EXPECT_EQ(found->blob, (std::vector<std::uint8_t>{1, 2, 3, 4}));
  EXPECT_EQ(found->check_value, "0011223344556677");
  EXPECT_FALSE(catalog->find("ae123456789012-lock@in.provider.com"));
  EXPECT_FALSE(catalog->find("not a valid name"));
}

TEST_F(CatalogTest, NamesAndIdentifiersShareOneNamespace) {
  auto catalog = Catalog::open(path_);
  catalog->insert(kpsa("AE1-Lock@in.provider.com"));
  auto duplicate = kpsa("AE1-Lock@IN.provider.com");
  EXPECT_THROW(
      {
        try {
          catalog->insert(duplicate);
        } catch (const Error& e) {
          EXPECT_EQ(e.code(), ErrorCode::conflict);
          EXPECT_NE(std::string(e.what()).find("AE1-Lock@IN.provider.com"), std::string::npos);
          throw;
        }
      },
      Error);
  KeyRecord signing;
  signing.kind = KeyKind::signing;
  signing.name = "AE1-Lock@in.provider.com";  // a name equal to another key's identifier
  signing.storage = Storage::token;
  EXPECT_THROW(catalog->insert(signing), Error);
  auto named = kpsa("AE2-Lock@in.provider.com");
  named.name = "gateway-device-2";
  catalog->insert(named);
  EXPECT_TRUE(catalog->find("gateway-device-2"));
  EXPECT_TRUE(catalog->find("AE2-Lock@in.provider.com"));
  EXPECT_EQ(catalog->count(), 2u);
}

TEST_F(CatalogTest, PendingRowsAreInvisibleUntilActivated) {
  auto catalog = Catalog::open(path_);
  KeyRecord signing;
  signing.kind = KeyKind::signing;
  signing.name = "mn-cse-123456";
  signing.storage = Storage::token;
  signing.object_id = {9, 9, 9};
  KeyRecord pending = catalog->insert_pending(signing);
  EXPECT_FALSE(catalog->find("mn-cse-123456"));
  EXPECT_EQ(catalog->pending().size(), 1u);
  EXPECT_THROW(catalog->insert_pending(signing), Error);  // the name is reserved
  catalog->activate(pending.row, {0x30, 0x59});
  auto found = catalog->find("mn-cse-123456");
  ASSERT_TRUE(found);
  EXPECT_EQ(found->public_key, (std::vector<std::uint8_t>{0x30, 0x59}));
  EXPECT_TRUE(catalog->pending().empty());
  catalog->remove(found->row);
  EXPECT_FALSE(catalog->find("mn-cse-123456"));
  catalog->insert(signing);  // the name is free again
}

TEST_F(CatalogTest, ListsByKindAndSurvivesReopen) {
  {
    auto catalog = Catalog::open(path_);
    catalog->insert(kpsa("b@in.provider.com"));
    catalog->insert(kpsa("a@in.provider.com"));
    KeyRecord km = kpsa("km1@maf.example.com");
    km.kind = KeyKind::km;
    catalog->insert(km);
  }
  auto catalog = Catalog::open(path_);
  auto all = catalog->list();
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0].name, "a@in.provider.com");
  EXPECT_EQ(catalog->list(KeyKind::km).size(), 1u);
  EXPECT_EQ(catalog->list(KeyKind::kc).size(), 0u);
}

TEST_F(CatalogTest, ConcurrentInsertsAreCommittedInGroups) {
  auto catalog = Catalog::open(path_);
  const auto before = catalog_commit_count(*catalog);
  constexpr int kThreads = 16, kEach = 50;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        try {
          catalog->insert(
              kpsa("t" + std::to_string(t) + "-" + std::to_string(i) + "@in.provider.com"));
        } catch (...) {
          ++failures;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(catalog->count(), std::size_t{kThreads * kEach});
  const auto commits = catalog_commit_count(*catalog) - before;
  EXPECT_LT(commits, std::uint64_t{kThreads * kEach}) << "no two inserts shared a transaction";
  std::printf("%d inserts from %d threads in %llu transactions\n", kThreads * kEach, kThreads,
              static_cast<unsigned long long>(commits));
}

TEST_F(CatalogTest, ConcurrentConflictingInsertsHaveExactlyOneWinner) {
  auto catalog = Catalog::open(path_);
  std::atomic<int> wins{0}, conflicts{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      try {
        catalog->insert(kpsa("contested@in.provider.com"));
        ++wins;
      } catch (const Error& e) {
        if (e.code() == ErrorCode::conflict) ++conflicts;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wins.load(), 1);
  EXPECT_EQ(conflicts.load(), 7);
}

TEST_F(CatalogTest, EveryAcknowledgedInsertSurvivesSigkill) {
  const unsigned seed = std::random_device{}();
  std::printf("seed %u\n", seed);
  std::mt19937 rng(seed);
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  pid_t child = ::fork();
  if (child == 0) {
    ::close(pipe_fds[0]);
    auto catalog = Catalog::open(path_);
    for (int i = 0;; ++i) {
      catalog->insert(kpsa("k" + std::to_string(i) + "@in.provider.com"));
      if (::write(pipe_fds[1], &i, sizeof i) != sizeof i) ::_exit(1);
    }
  }
  ::close(pipe_fds[1]);
  ::usleep(50'000 + rng() % 400'000);
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  int last = -1, i = 0;
  while (::read(pipe_fds[0], &i, sizeof i) == sizeof i) last = i;
  ::close(pipe_fds[0]);
  ASSERT_GE(last, 0) << "seed " << seed;
  auto catalog = Catalog::open(path_);
  for (int k = 0; k <= last; ++k) {
    ASSERT_TRUE(catalog->find("k" + std::to_string(k) + "@in.provider.com"))
        << "lost k" << k << ", seed " << seed;
  }
}

}  // namespace
}  // namespace m2mvault::vault
