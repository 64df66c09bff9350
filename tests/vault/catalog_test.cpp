// The catalog against a real SQLite file in a temp directory.
#include "vault/catalog.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <latch>
#include <random>
#include <set>
#include <thread>

#include "api/error.h"
#include "tests/vault/sync_counting_vfs.h"

namespace m2mvault::vault {
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

ErrorCode code_of(const std::function<void()>& f, std::string* message = nullptr) {
  try {
    f();
  } catch (const Error& e) {
    if (message) *message = e.what();
    return e.code();
  }
  ADD_FAILURE() << "no error";
  return ErrorCode::internal;
}

struct SqliteCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
using RawDb = std::unique_ptr<sqlite3, SqliteCloser>;

RawDb open_raw(const std::filesystem::path& path) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  return RawDb(db);
}

TEST_F(CatalogTest, AKeysNameMayNotBeAnotherKeysIdentifier) {
  auto catalog = Catalog::open(path_);
  auto a = kpsa("AE10-Lock@in.provider.com");
  a.name = "AE9-Lock@in.provider.com";  // a name shaped like a KpsaID
  catalog->insert(a);
  // Key B's identifier equals key A's name (FQDN case differs): one namespace.
  std::string message;
  EXPECT_EQ(code_of([&] { catalog->insert(kpsa("AE9-Lock@In.Provider.com")); }, &message),
            ErrorCode::conflict);
  EXPECT_EQ(message, "key name or identifier 'AE9-Lock@In.Provider.com' already exists");
  // And the other way round: a name equal to A's identifier.
  auto c = kpsa("AE11-Lock@in.provider.com");
  c.name = "AE10-Lock@IN.provider.com";
  EXPECT_EQ(code_of([&] { catalog->insert(c); }, &message), ErrorCode::conflict);
  EXPECT_EQ(message, "key name or identifier 'AE10-Lock@IN.provider.com' already exists");
  // The failed inserts left nothing behind: their other entries are free.
  EXPECT_EQ(catalog->count(), 1u);
  EXPECT_FALSE(catalog->find("AE11-Lock@in.provider.com"));
  catalog->insert(kpsa("AE11-Lock@in.provider.com"));
  EXPECT_EQ(catalog->list().size(), 2u);
}

TEST_F(CatalogTest, HexIdentifiersMatchInAnyCaseBase64OnlyExactly) {
  auto catalog = Catalog::open(path_);
  auto kc = kpsa("FF15D84E3E38D6974B0EB3E5606C85FE@MAF.example.com");
  kc.kind = KeyKind::kc;
  catalog->insert(kc);
  auto ke = kpsa("/xXYTj441pdLDrPlYGyF/g==@mef.example.com");
  ke.kind = KeyKind::ke;
  ke.storage = Storage::token;
  catalog->insert(ke);
  EXPECT_TRUE(catalog->find("ff15d84e3e38d6974b0eb3e5606c85fe@maf.example.com"));
  EXPECT_TRUE(catalog->find("Ff15D84e3E38d6974b0eb3e5606c85fe@Maf.Example.Com"));
  EXPECT_TRUE(catalog->find("/xXYTj441pdLDrPlYGyF/g==@MEF.example.com"));
  EXPECT_FALSE(catalog->find("/XXYTj441pdLDrPlYGyF/g==@mef.example.com"));
  // The stored name and identifier are as given.
  EXPECT_EQ(catalog->find("ff15d84e3e38d6974b0eb3e5606c85fe@maf.example.com")->identifier,
            "FF15D84E3E38D6974B0EB3E5606C85FE@MAF.example.com");
  // The same KcId in the other hex case is the same identifier.
  auto again = kpsa("ff15d84e3e38d6974b0eb3e5606c85fe@maf.example.com");
  again.kind = KeyKind::kc;
  again.name = "another-name";
  EXPECT_EQ(code_of([&] { catalog->insert(again); }), ErrorCode::conflict);
}

TEST_F(CatalogTest, AKeyNeedsANameOrAValidIdentifier) {
  auto catalog = Catalog::open(path_);
  KeyRecord nameless = kpsa("x@in.provider.com");
  nameless.identifier.reset();
  EXPECT_EQ(code_of([&] { catalog->insert(nameless); }), ErrorCode::invalid_argument);
  nameless.identifier = "";
  EXPECT_EQ(code_of([&] { catalog->insert(nameless); }), ErrorCode::invalid_argument);
  EXPECT_EQ(code_of([&] { catalog->insert(kpsa("x@")); }), ErrorCode::invalid_argument);
  auto bad_name = kpsa("x@in.provider.com");
  bad_name.name = "-rf";
  EXPECT_EQ(code_of([&] { catalog->insert(bad_name); }), ErrorCode::invalid_argument);
  auto ke_with_kpsa_id = kpsa("AE1-Lock@mef.example.com");
  ke_with_kpsa_id.kind = KeyKind::ke;
  EXPECT_EQ(code_of([&] { catalog->insert(ke_with_kpsa_id); }), ErrorCode::invalid_argument);
  EXPECT_EQ(catalog->count(), 0u);
}

TEST_F(CatalogTest, EveryFieldSurvivesReopen) {
  KeyRecord r;
  r.name = "mn-cse-signing";
  r.kind = KeyKind::signing;
  r.entity = "/mn-cse-123456";
  r.created = 1'800'000'001;
  r.expires = 1'900'000'000;
  r.storage = Storage::adopted;
  r.object_id = {0x00, 0x01, 0xfe, 0xff};
  r.token_label = "factory";
  r.object_label = "device-key";
  r.public_key = {0x30, 0x59, 0x30, 0x13};
  r.algorithm = "ec-p256";
  r.parent = "some-ke";
  r.peer = "my.m2mprovider.org/in-cse";
  r.certificate = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
  std::int64_t row = 0;
  KeyRecord psk = kpsa("AE1-Lock@in.provider.com");
  psk.blob = std::vector<std::uint8_t>(40, 0xa5);
  psk.length = 32;
  {
    auto catalog = Catalog::open(path_);
    row = catalog->insert(r).row;
    catalog->insert(psk);
  }
  auto catalog = Catalog::open(path_);
  auto f = catalog->find("mn-cse-signing");
  ASSERT_TRUE(f);
  EXPECT_EQ(f->row, row);
  EXPECT_EQ(f->name, r.name);
  EXPECT_EQ(f->kind, r.kind);
  EXPECT_FALSE(f->identifier);
  EXPECT_EQ(f->entity, r.entity);
  EXPECT_EQ(f->created, r.created);
  EXPECT_EQ(f->expires, r.expires);
  EXPECT_EQ(f->storage, r.storage);
  EXPECT_TRUE(f->blob.empty());
  EXPECT_EQ(f->object_id, r.object_id);
  EXPECT_EQ(f->token_label, r.token_label);
  EXPECT_EQ(f->object_label, r.object_label);
  EXPECT_EQ(f->public_key, r.public_key);
  EXPECT_EQ(f->algorithm, r.algorithm);
  EXPECT_EQ(f->length, 0u);
  EXPECT_FALSE(f->check_value);
  EXPECT_EQ(f->parent, r.parent);
  EXPECT_EQ(f->peer, r.peer);
  EXPECT_EQ(f->certificate, r.certificate);
  auto p = catalog->find("AE1-Lock@in.provider.com");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->identifier, "AE1-Lock@in.provider.com");
  EXPECT_EQ(p->blob, psk.blob);
  EXPECT_EQ(p->length, 32u);
  EXPECT_FALSE(p->expires);
  EXPECT_FALSE(p->parent);
  EXPECT_FALSE(p->peer);
  EXPECT_FALSE(p->certificate);
  // The catalog file is the daemon's alone.
  EXPECT_EQ(std::filesystem::status(path_).permissions() & std::filesystem::perms::all,
            std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
}

TEST_F(CatalogTest, PendingRowsAreNotListedOrCountedAndRemoveFreesEveryName) {
  auto catalog = Catalog::open(path_);
  auto ke = kpsa("AAECAwQFBgcICQoLDA0ODw==@mef.example.com");
  ke.kind = KeyKind::ke;
  ke.name = "enrolment-key";
  ke.storage = Storage::token;
  KeyRecord pending = catalog->insert_pending(ke);
  EXPECT_EQ(catalog->count(), 0u);
  EXPECT_TRUE(catalog->list().empty());
  EXPECT_FALSE(catalog->find("AAECAwQFBgcICQoLDA0ODw==@mef.example.com"));
  // Its identifier is reserved too.
  auto other = kpsa("AAECAwQFBgcICQoLDA0ODw==@mef.example.com");
  other.kind = KeyKind::ke;
  EXPECT_EQ(code_of([&] { catalog->insert(other); }), ErrorCode::conflict);
  catalog->activate(pending.row);
  EXPECT_EQ(catalog->count(), 1u);
  EXPECT_TRUE(catalog->find("enrolment-key"));
  EXPECT_TRUE(catalog->find("AAECAwQFBgcICQoLDA0ODw==@MEF.example.com"));
  catalog->remove(pending.row);
  EXPECT_FALSE(catalog->find("enrolment-key"));
  EXPECT_FALSE(catalog->find("AAECAwQFBgcICQoLDA0ODw==@mef.example.com"));
  EXPECT_EQ(code_of([&] { catalog->remove(pending.row); }), ErrorCode::not_found);
  EXPECT_EQ(code_of([&] { catalog->activate(pending.row); }), ErrorCode::not_found);
  catalog->insert(other);  // name and identifier are both free again
}

TEST_F(CatalogTest, SetIdentifierReplacesTheOldOneButKeepsTheName) {
  auto catalog = Catalog::open(path_);
  auto km = kpsa("local-km-1@maf.example.com");
  km.kind = KeyKind::km;
  km.name = "my-km";
  KeyRecord stored = catalog->insert(km);
  catalog->set_identifier(stored.row, KeyKind::km, "KM-assigned-7@MAF.example.com");
  EXPECT_FALSE(catalog->find("local-km-1@maf.example.com"));
  auto found = catalog->find("KM-assigned-7@maf.example.com");
  ASSERT_TRUE(found);
  EXPECT_EQ(found->identifier, "KM-assigned-7@MAF.example.com");
  EXPECT_EQ(found->name, "my-km");
  EXPECT_TRUE(catalog->find("my-km"));
  // The freed identifier can be used again; a taken one cannot.
  auto other = kpsa("local-km-1@maf.example.com");
  other.kind = KeyKind::km;
  KeyRecord second = catalog->insert(other);
  EXPECT_EQ(code_of([&] {
              catalog->set_identifier(second.row, KeyKind::km, "KM-assigned-7@maf.example.com");
            }),
            ErrorCode::conflict);
  EXPECT_EQ(
      code_of([&] { catalog->set_identifier(second.row, KeyKind::km, "bad id@maf.example.com"); }),
      ErrorCode::invalid_argument);
  // An identifier that is also the name stays as the name.
  catalog->set_identifier(second.row, KeyKind::km, "KM-8@maf.example.com");
  EXPECT_TRUE(catalog->find("local-km-1@maf.example.com"));  // its name
  EXPECT_TRUE(catalog->find("KM-8@maf.example.com"));
  EXPECT_EQ(code_of([&] { catalog->set_identifier(999, KeyKind::km, "KM-9@maf.example.com"); }),
            ErrorCode::not_found);
}

TEST_F(CatalogTest, ListPagesWalkTheKeysInNameOrder) {
  auto catalog = Catalog::open(path_);
  for (int i = 9; i >= 0; --i) catalog->insert(kpsa("k" + std::to_string(i) + "@in.provider.com"));
  KeyRecord km = kpsa("m@maf.example.com");
  km.kind = KeyKind::km;
  catalog->insert(km);
  std::vector<std::string> seen;
  std::string after;
  for (;;) {
    auto page = catalog->list_page(KeyKind::kpsa, after, 3);
    if (page.empty()) break;
    EXPECT_LE(page.size(), 3u);
    for (const auto& r : page) seen.push_back(r.name);
    after = page.back().name;
  }
  ASSERT_EQ(seen.size(), 10u);
  EXPECT_TRUE(std::is_sorted(seen.begin(), seen.end()));
  EXPECT_EQ(catalog->list_page(std::nullopt, "", 100).size(), 11u);
}

TEST_F(CatalogTest, FindOfTextThatIsNoNameFindsNothing) {
  auto catalog = Catalog::open(path_);
  EXPECT_FALSE(catalog->find(""));
  EXPECT_FALSE(catalog->find("-rf"));
  EXPECT_FALSE(catalog->find(std::string(300, 'a')));
  EXPECT_FALSE(catalog->find("a\nb"));
}

TEST_F(CatalogTest, SixteenConcurrentInsertsShareTransactions) {
  auto catalog = Catalog::open(path_);
  const auto before = catalog_commit_count(*catalog);
  constexpr int kThreads = 16;
  std::latch start(kThreads);
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      catalog->insert(kpsa("g" + std::to_string(t) + "@in.provider.com"));
      ++ok;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), kThreads);
  EXPECT_EQ(catalog->count(), std::size_t{kThreads});
  const auto commits = catalog_commit_count(*catalog) - before;
  EXPECT_LT(commits, std::uint64_t{kThreads});
  std::printf("%d concurrent inserts in %llu transactions\n", kThreads,
              static_cast<unsigned long long>(commits));
}

TEST_F(CatalogTest, EveryAcknowledgedWriteWasSyncedAndGroupsShareTheSync) {
  testing::SyncCountingVfs vfs;  // the catalog's connections go through it
  auto catalog = Catalog::open(path_);
  {
    auto raw = open_raw(path_);
    sqlite3_stmt* s = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(raw.get(), "PRAGMA journal_mode", -1, &s, nullptr), SQLITE_OK);
    ASSERT_EQ(sqlite3_step(s), SQLITE_ROW);
    EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(s, 0)), "wal");
    sqlite3_finalize(s);
  }
  for (int i = 0; i < 5; ++i) {
    const auto before = vfs.wal_syncs();
    KeyRecord stored = catalog->insert(kpsa("s" + std::to_string(i) + "@in.provider.com"));
    // synchronous=FULL: the commit fsynced the WAL before insert() returned
    // (with NORMAL it would not, until a checkpoint).
    EXPECT_GE(vfs.wal_syncs(), before + 1) << "insert " << i << " was not synced";
    const auto before_remove = vfs.wal_syncs();
    catalog->remove(stored.row);
    EXPECT_GE(vfs.wal_syncs(), before_remove + 1) << "remove " << i << " was not synced";
  }
  const auto before = vfs.wal_syncs();
  const auto commits_before = catalog_commit_count(*catalog);
  constexpr int kThreads = 16, kEach = 20;
  std::latch start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      for (int i = 0; i < kEach; ++i) {
        catalog->insert(
            kpsa("g" + std::to_string(t) + "-" + std::to_string(i) + "@in.provider.com"));
      }
    });
  }
  for (auto& t : threads) t.join();
  const auto syncs = vfs.wal_syncs() - before;
  const auto commits = catalog_commit_count(*catalog) - commits_before;
  EXPECT_GE(syncs, commits);
  EXPECT_LT(syncs, std::uint64_t{kThreads * kEach}) << "no two inserts shared an fsync";
  std::printf("%d inserts, %llu transactions, %llu WAL fsyncs\n", kThreads * kEach,
              static_cast<unsigned long long>(commits), static_cast<unsigned long long>(syncs));
}

TEST_F(CatalogTest, ANameAndAnIdentifierRacingForOneSpellingHaveOneWinner) {
  for (int round = 0; round < 20; ++round) {
    auto catalog = Catalog::open(dir_ / ("race" + std::to_string(round) + ".db"));
    const std::string contested = "R" + std::to_string(round) + "@in.provider.com";
    std::latch start(8);
    std::atomic<int> wins{0}, conflicts{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&, t] {
        // Half claim the spelling as a name, half as an identifier, FQDN case varied.
        KeyRecord r = kpsa(t % 2 ? contested : "own" + std::to_string(t) + "@in.provider.com");
        if (t % 2 == 0) r.name = "R" + std::to_string(round) + "@IN.provider.com";
        start.arrive_and_wait();
        try {
          catalog->insert(r);
          ++wins;
        } catch (const Error& e) {
          if (e.code() == ErrorCode::conflict) ++conflicts;
        }
      });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(wins.load(), 1) << "round " << round;
    EXPECT_EQ(conflicts.load(), 7) << "round " << round;
    EXPECT_EQ(catalog->count(), 1u);
  }
}

TEST_F(CatalogTest, ReadsDoNotWaitForAWriteTransaction) {
  auto catalog = Catalog::open(path_);
  catalog->insert(kpsa("AE1-Lock@in.provider.com"));
  // Another connection holds the write lock (and has uncommitted changes).
  auto raw = open_raw(path_);
  ASSERT_EQ(
      sqlite3_exec(raw.get(), "BEGIN IMMEDIATE; DELETE FROM keys;", nullptr, nullptr, nullptr),
      SQLITE_OK);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(catalog->find("AE1-Lock@in.provider.com"));
  EXPECT_EQ(catalog->count(), 1u);
  EXPECT_EQ(catalog->list().size(), 1u);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(500));
  ASSERT_EQ(sqlite3_exec(raw.get(), "ROLLBACK", nullptr, nullptr, nullptr), SQLITE_OK);
}

TEST_F(CatalogTest, ANewerSchemaOrAForeignFileIsRefusedNamingTheFile) {
  { Catalog::open(path_)->insert(kpsa("a@in.provider.com")); }
  {
    auto raw = open_raw(path_);
    ASSERT_EQ(sqlite3_exec(raw.get(), "PRAGMA user_version = 99", nullptr, nullptr, nullptr),
              SQLITE_OK);
  }
  std::string message;
  EXPECT_EQ(code_of([&] { Catalog::open(path_); }, &message), ErrorCode::internal);
  EXPECT_NE(message.find(path_.string()), std::string::npos) << message;
  EXPECT_NE(message.find("99"), std::string::npos) << message;

  const auto junk = dir_ / "junk.db";
  {
    std::FILE* f = std::fopen(junk.c_str(), "w");
    ASSERT_TRUE(f);
    std::fputs("this is not an SQLite database, just text long enough to have a header....\n", f);
    std::fclose(f);
  }
  EXPECT_EQ(code_of([&] { Catalog::open(junk); }, &message), ErrorCode::internal);
  EXPECT_NE(message.find(junk.string()), std::string::npos) << message;
  EXPECT_EQ(code_of([&] { Catalog::open(dir_ / "no" / "such" / "dir.db"); }, &message),
            ErrorCode::internal);
  EXPECT_NE(message.find("dir.db"), std::string::npos) << message;
}

TEST_F(CatalogTest, EveryAcknowledgedGroupInsertSurvivesSigkill) {
  const unsigned seed = std::random_device{}();
  std::printf("seed %u\n", seed);
  std::mt19937 rng(seed);
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  constexpr int kWriters = 8;
  pid_t child = ::fork();
  if (child == 0) {
    ::close(pipe_fds[0]);
    auto catalog = Catalog::open(path_);
    std::vector<std::thread> writers;
    for (int w = 0; w < kWriters; ++w) {
      writers.emplace_back([&, w] {
        for (std::int32_t i = w;; i += kWriters) {
          catalog->insert(kpsa("k" + std::to_string(i) + "@in.provider.com"));
          // Acknowledged: 4 bytes, written atomically to the pipe.
          if (::write(pipe_fds[1], &i, sizeof i) != sizeof i) ::_exit(1);
        }
      });
    }
    for (auto& w : writers) w.join();
    ::_exit(0);
  }
  ::close(pipe_fds[1]);
  ::usleep(100'000 + rng() % 400'000);
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  std::vector<std::int32_t> acknowledged;
  std::int32_t i = 0;
  while (::read(pipe_fds[0], &i, sizeof i) == sizeof i) acknowledged.push_back(i);
  ::close(pipe_fds[0]);
  ASSERT_FALSE(acknowledged.empty()) << "seed " << seed;
  std::printf("%zu acknowledged inserts before SIGKILL\n", acknowledged.size());
  {
    auto raw = open_raw(path_);
    sqlite3_stmt* s = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(raw.get(), "PRAGMA integrity_check", -1, &s, nullptr), SQLITE_OK);
    ASSERT_EQ(sqlite3_step(s), SQLITE_ROW);
    EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(s, 0)), "ok");
    sqlite3_finalize(s);
  }
  auto catalog = Catalog::open(path_);
  for (auto k : acknowledged) {
    ASSERT_TRUE(catalog->find("k" + std::to_string(k) + "@in.provider.com"))
        << "lost k" << k << ", seed " << seed;
  }
  EXPECT_GE(catalog->count(), acknowledged.size());
  // The catalog takes writes again after the crash.
  catalog->insert(kpsa("after-crash@in.provider.com"));
}

}  // namespace
}  // namespace m2mvault::vault

namespace m2mvault::vault {
namespace {

TEST_F(CatalogTest, SetCertificateReplacesTheChainAndNeedsTheRow) {
  auto catalog = Catalog::open(path_);
  KeyRecord r;
  r.name = "mn-cse";
  r.kind = KeyKind::signing;
  r.storage = Storage::token;
  r.object_id = {1, 2};
  const auto row = catalog->insert(r).row;
  catalog->set_certificate(row, "first");
  catalog->set_certificate(row, "second");
  EXPECT_EQ(catalog->find("mn-cse")->certificate, "second");
  catalog->remove(row);
  try {
    catalog->set_certificate(row, "third");
    FAIL() << "set_certificate on a removed row";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::not_found);
  }
}

// A catalog written by schema 1 (the walking skeleton) keeps its keys and
// gains the new columns in place.
TEST_F(CatalogTest, SchemaOneCatalogIsUpgradedInPlace) {
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    const char* v1 = R"sql(
      PRAGMA journal_mode = WAL;
      CREATE TABLE keys(
        key_id INTEGER PRIMARY KEY, state TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL,
        identifier TEXT, entity TEXT, created INTEGER NOT NULL, expires INTEGER,
        storage TEXT NOT NULL, blob BLOB, object_id BLOB, token_label TEXT, object_label TEXT,
        public_key BLOB, algorithm TEXT, length INTEGER NOT NULL DEFAULT 0, check_value TEXT,
        parent TEXT);
      CREATE TABLE names(canonical TEXT PRIMARY KEY, key_id INTEGER NOT NULL
        REFERENCES keys(key_id) ON DELETE CASCADE) WITHOUT ROWID;
      INSERT INTO keys(key_id, state, name, kind, identifier, created, storage, blob, length,
                       check_value)
        VALUES (1, 'active', 'AE1-Lock@in.provider.com', 'kpsa', 'AE1-Lock@in.provider.com',
                1800000000, 'wrapped', x'01020304', 8, '0011223344556677');
      INSERT INTO names VALUES ('AE1-Lock@in.provider.com', 1);
      PRAGMA user_version = 1;
    )sql";
    ASSERT_EQ(sqlite3_exec(db, v1, nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
    sqlite3_close(db);
  }
  {
    auto catalog = Catalog::open(path_);
    auto found = catalog->find("AE1-Lock@in.provider.com");
    ASSERT_TRUE(found);
    EXPECT_EQ(found->check_value, "0011223344556677");
    EXPECT_FALSE(found->peer);
    EXPECT_FALSE(found->certificate);
    KeyRecord kc = kpsa("AAECAwQFBgcICQoLDA0ODw==@mymaf.provider.org");
    kc.kind = KeyKind::kc;
    kc.peer = "CAE-device-42";
    catalog->insert(kc);
  }
  auto catalog = Catalog::open(path_);  // opening an upgraded catalog again changes nothing
  EXPECT_EQ(catalog->find("AAECAwQFBgcICQoLDA0ODw==@mymaf.provider.org")->peer, "CAE-device-42");
  EXPECT_EQ(catalog->count(), 2u);
  // Version 3's usage counters: an old key has no limit.
  EXPECT_FALSE(catalog->find("AE1-Lock@in.provider.com")->max_uses);
  EXPECT_FALSE(catalog->consume_use(catalog->find("AE1-Lock@in.provider.com")->row));
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* version = nullptr;
  sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &version, nullptr);
  ASSERT_EQ(sqlite3_step(version), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(version, 0), 3);
  sqlite3_finalize(version);
  sqlite3_close(db);
}

TEST_F(CatalogTest, UsesAreCountedUpToTheLimitAndSurviveReopening) {
  {
    auto catalog = Catalog::open(path_);
    KeyRecord limited = kpsa("AE1-Lock@in.provider.com");
    limited.max_uses = 2;
    const std::int64_t row = catalog->insert(limited).row;
    EXPECT_EQ(catalog->consume_use(row), 1);
    EXPECT_EQ(catalog->find("AE1-Lock@in.provider.com")->uses, 1);
  }
  auto catalog = Catalog::open(path_);
  const KeyRecord reopened = *catalog->find("AE1-Lock@in.provider.com");
  EXPECT_EQ(reopened.max_uses, 2);
  EXPECT_EQ(catalog->consume_use(reopened.row), 2);
  EXPECT_FALSE(catalog->consume_use(reopened.row));  // the limit is reached
  EXPECT_EQ(catalog->find("AE1-Lock@in.provider.com")->uses, 2);
}

// find() keeps what it read until the next write: each kind of write must
// show in the find() after it, with a find() before it to fill the cache.
TEST_F(CatalogTest, EveryKindOfWriteShowsInTheNextFind) {
  auto catalog = Catalog::open(path_);
  KeyRecord limited = kpsa("AE1-Lock@in.provider.com");
  limited.name = "lock";
  limited.max_uses = 5;
  const std::int64_t row = catalog->insert(limited).row;
  ASSERT_EQ(catalog->find("lock")->uses, 0);

  ASSERT_EQ(catalog->consume_use(row), 1);
  EXPECT_EQ(catalog->find("lock")->uses, 1);

  catalog->set_certificate(row, "chain");
  EXPECT_EQ(catalog->find("lock")->certificate, "chain");

  ASSERT_TRUE(catalog->find("AE1-Lock@in.provider.com"));
  catalog->set_identifier(row, KeyKind::kpsa, "AE2-Lock@in.provider.com");
  EXPECT_FALSE(catalog->find("AE1-Lock@in.provider.com"));
  EXPECT_EQ(catalog->find("AE2-Lock@in.provider.com")->row, row);
  EXPECT_EQ(catalog->find("lock")->identifier, "AE2-Lock@in.provider.com");

  // A write to another key ends what was kept too (nothing tracks which rows
  // a write touched), and the kept key reads back unchanged.
  catalog->insert(kpsa("AE3-Lock@in.provider.com"));
  EXPECT_EQ(catalog->find("lock")->uses, 1);

  catalog->remove(row);
  EXPECT_FALSE(catalog->find("lock"));
  EXPECT_FALSE(catalog->find("AE2-Lock@in.provider.com"));

  // A pending key is not found, and found once activated.
  KeyRecord signing;
  signing.name = "mn-cse";
  signing.kind = KeyKind::signing;
  signing.storage = Storage::token;
  signing.object_id = {1, 2};
  const std::int64_t pending = catalog->insert_pending(signing).row;
  EXPECT_FALSE(catalog->find("mn-cse"));
  catalog->activate(pending, {4, 5});
  ASSERT_TRUE(catalog->find("mn-cse"));
  EXPECT_EQ(catalog->find("mn-cse")->public_key, (std::vector<std::uint8_t>{4, 5}));
}

// The property a revocation relies on: once remove() has returned, no find()
// that starts afterwards returns the key, however many readers race it.
TEST_F(CatalogTest, NoFindThatStartsAfterARemoveReturnedSeesTheKey) {
  auto catalog = Catalog::open(path_);
  constexpr int kRounds = 200;
  std::atomic<int> removed_round{-1};  // the last round whose remove() returned
  std::atomic<bool> stop{false};
  std::atomic<int> stale{0};
  std::atomic<long> finds{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 4; ++t) {
    readers.emplace_back([&] {
      while (!stop.load()) {
        const int before = removed_round.load();
        if (before < 0) continue;
        const auto found = catalog->find("key-" + std::to_string(before));
        finds.fetch_add(1);
        if (found) stale.fetch_add(1);
      }
    });
  }
  for (int round = 0; round < kRounds; ++round) {
    KeyRecord r = kpsa("AE" + std::to_string(round) + "-Lock@in.provider.com");
    r.name = "key-" + std::to_string(round);
    const std::int64_t row = catalog->insert(r).row;
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(catalog->find(r.name));  // in the cache now
    catalog->remove(row);
    removed_round.store(round);
  }
  stop.store(true);
  for (auto& reader : readers) reader.join();
  EXPECT_EQ(stale.load(), 0);
  EXPECT_GT(finds.load(), kRounds);  // the readers did race the writer
}

TEST_F(CatalogTest, ABatchGoesInWholeOrNotAtAll) {
  auto catalog = Catalog::open(path_);
  catalog->insert(kpsa("AE1-Lock@in.provider.com"));
  std::vector<KeyRecord> batch{kpsa("AE2-Lock@in.provider.com"), kpsa("AE1-Lock@IN.provider.com"),
                               kpsa("AE3-Lock@in.provider.com"), kpsa("AE2-Lock@in.provider.com")};
  KeyRecord unnamed = kpsa("x");
  unnamed.identifier.reset();
  batch.push_back(unnamed);
  auto problems = catalog->insert_pending_batch(batch);
  // Each bad record is named: a clash with a key, a clash inside the batch,
  // and a record with neither name nor identifier.
  ASSERT_EQ(problems.size(), 3u);
  EXPECT_EQ(problems[0].index, 1u);
  EXPECT_EQ(problems[1].index, 3u);
  EXPECT_EQ(problems[2].index, 4u);
  EXPECT_FALSE(catalog->find("AE2-Lock@in.provider.com"));
  EXPECT_EQ(catalog->count(), 1u);

  std::vector<KeyRecord> good{kpsa("AE2-Lock@in.provider.com"), kpsa("AE3-Lock@in.provider.com")};
  ASSERT_TRUE(catalog->insert_pending_batch(good).empty());
  // Staged rows reserve their names but are not keys yet.
  EXPECT_FALSE(catalog->find("AE2-Lock@in.provider.com"));
  auto clash = kpsa("AE3-Lock@in.provider.com");
  EXPECT_THROW(catalog->insert(clash), Error);
  EXPECT_EQ(catalog->pending().size(), 2u);
  catalog->activate_batch({good[0].row, good[1].row});
  EXPECT_TRUE(catalog->find("AE2-Lock@in.provider.com"));
  EXPECT_EQ(catalog->count(), 3u);

  std::vector<KeyRecord> dropped{kpsa("AE4-Lock@in.provider.com")};
  ASSERT_TRUE(catalog->insert_pending_batch(dropped).empty());
  catalog->remove_batch({dropped[0].row});
  EXPECT_TRUE(catalog->pending().empty());
  auto again = kpsa("AE4-Lock@in.provider.com");
  EXPECT_NO_THROW(catalog->insert(again));  // the name is free again
}

}  // namespace
}  // namespace m2mvault::vault
