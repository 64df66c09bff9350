#include "policies/audit_log.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#include "api/error.h"

namespace m2mvault::policies {
namespace {

namespace fs = std::filesystem;
using Tag = std::array<std::uint8_t, 32>;

Tag hmac_with_test_key(std::span<const std::uint8_t> data) {
  static constexpr unsigned char kKey[] = "m2mvault audit log test key, 32b";
  Tag out{};
  unsigned int length = 0;
  HMAC(EVP_sha256(), kKey, 32, data.data(), data.size(), out.data(), &length);
  return out;
}

const AuditMac kMac = hmac_with_test_key;

AuditRecord sign_request(std::string key = "sensor-key") {
  AuditRecord r;
  r.time_ms = 1'800'000'000'123;
  r.uid = 1000;
  r.gid = 1000;
  r.pid = 4242;
  r.exe = "/usr/bin/agent";
  r.op = "sign";
  r.key = std::move(key);
  r.key_id = "C-sensor";
  r.result = "ok";
  return r;
}

AuditRecord denial(uid_t uid) {
  AuditRecord r = sign_request("other-key");
  r.uid = uid;
  r.result = "denied";
  r.error = "denied";
  return r;
}

class AuditLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::random_device random;
    dir_ = fs::temp_directory_path() /
           ("m2mvault-audit-" + std::to_string(::getpid()) + "-" + std::to_string(random()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  AuditLogOptions options() const {
    AuditLogOptions o;
    o.directory = dir_ / "audit";
    o.free_space_reserve_bytes = 0;
    return o;
  }

  fs::path current() const { return dir_ / "audit" / "audit.log"; }

  std::vector<AuditCheckpoint> write_records(int n, AuditLogOptions o) {
    AuditLog log(std::move(o), kMac);
    std::vector<AuditCheckpoint> written;
    for (int i = 0; i < n; ++i) written.push_back(log.append(sign_request()));
    return written;
  }

  static std::vector<std::string> lines_of(const fs::path& file) {
    std::ifstream in(file);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
  }

  static void write_lines(const fs::path& file, const std::vector<std::string>& lines) {
    std::ofstream out(file, std::ios::trunc);
    for (const auto& line : lines) out << line << '\n';
  }

  AuditVerifyReport verify(std::optional<AuditCheckpoint> checkpoint = std::nullopt) const {
    return verify_audit_log(dir_ / "audit", kMac, checkpoint);
  }

  fs::path dir_;
};

TEST_F(AuditLogTest, FirstRecordStartsTheChainWithZeros) {
  write_records(1, options());
  auto lines = lines_of(current());
  ASSERT_EQ(lines.size(), 1u);
  auto record = nlohmann::ordered_json::parse(lines[0]);
  std::vector<std::string> keys;
  for (auto& [key, value] : record.items()) keys.push_back(key);
  EXPECT_EQ(keys, (std::vector<std::string>{"seq", "time", "uid", "gid", "pid", "exe", "op", "key",
                                            "key_id", "result", "error", "count", "prev", "tag"}));
  EXPECT_EQ(record["seq"], 1);
  EXPECT_EQ(record["time"], "2027-01-15T08:00:00.123Z");
  EXPECT_EQ(record["prev"], std::string(64, '0'));
  EXPECT_EQ(record["count"], 1);
  EXPECT_EQ(fs::status(dir_ / "audit").permissions() & fs::perms::all, fs::perms::owner_all);
  EXPECT_EQ(fs::status(current()).permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
}

TEST_F(AuditLogTest, AwkwardTextIsWrittenAsJsonAndVerifies) {
  // Names come from clients and /proc: quotes, backslashes, control
  // characters, non-ASCII and invalid UTF-8 must all give valid JSON lines
  // that verification, which re-serializes each parsed line, accepts.
  const std::vector<std::string> texts{
      "a\"b", "back\\slash", "new\nline\ttab\x01", "caf\xc3\xa9", "bad\xff\xfeutf8", "", "\x7f"};
  {
    AuditLog log(options(), kMac);
    for (const auto& text : texts) {
      AuditRecord r = sign_request();
      r.exe = text;
      r.key = text;
      r.key_id = text;
      log.append(r);
    }
  }
  auto report = verify();
  EXPECT_TRUE(report.intact) << report.problem->detail;
  EXPECT_EQ(report.records, texts.size());
  auto lines = lines_of(current());
  ASSERT_EQ(lines.size(), texts.size());
  for (std::size_t i = 0; i < texts.size(); ++i) {
    auto record = nlohmann::ordered_json::parse(lines[i]);
    if (i != 4) {  // invalid UTF-8 is replaced
      EXPECT_EQ(record["key"], texts[i]);
    }
  }
  EXPECT_EQ(nlohmann::ordered_json::parse(lines[4])["exe"], "bad\ufffd\ufffdutf8");
}

TEST_F(AuditLogTest, ChainContinuesAcrossReopen) {
  auto first = write_records(3, options());
  {
    AuditLog log(options(), kMac);
    EXPECT_EQ(log.last().seq, 3u);
    EXPECT_EQ(log.last().tag, first.back().tag);
    EXPECT_EQ(log.append(sign_request()).seq, 4u);
  }
  auto report = verify();
  EXPECT_TRUE(report.intact) << report.problem->detail;
  EXPECT_EQ(report.records, 4u);
  EXPECT_EQ(report.first_seq, 1u);
  EXPECT_EQ(report.last_seq, 4u);
}

TEST_F(AuditLogTest, ChainContinuesAcrossRotatedFiles) {
  auto o = options();
  o.rotate_bytes = 700;  // about two records per file
  write_records(9, o);
  write_records(3, o);
  std::size_t rotated = 0;
  for (auto& entry : fs::directory_iterator(dir_ / "audit")) {
    auto name = entry.path().filename().string();
    if (name != "audit.log") {
      ++rotated;
      EXPECT_EQ(name.size(), std::string("audit-00000000000000000001.log").size()) << name;
    }
  }
  EXPECT_GE(rotated, 4u);
  EXPECT_TRUE(fs::exists(dir_ / "audit" / "audit-00000000000000000001.log"));
  auto report = verify();
  EXPECT_TRUE(report.intact) << report.problem->detail;
  EXPECT_EQ(report.records, 12u);

  std::uint64_t expected = 1;
  read_audit_log(dir_ / "audit", [&](const nlohmann::json& record) {
    EXPECT_EQ(record["seq"], expected++);
    return true;
  });
  EXPECT_EQ(expected, 13u);
}

TEST_F(AuditLogTest, VerifyNamesAModifiedRecord) {
  write_records(5, options());
  auto lines = lines_of(current());
  auto at = lines[2].find("\"sign\"");
  ASSERT_NE(at, std::string::npos);
  lines[2][at + 4] = 'N';  // "sigN"
  write_lines(current(), lines);
  auto report = verify();
  ASSERT_FALSE(report.intact);
  EXPECT_EQ(report.problem->kind, "modified");
  EXPECT_EQ(report.problem->seq, 3u);
  EXPECT_EQ(report.problem->line, 3u);
  EXPECT_EQ(report.records, 2u);
}

TEST_F(AuditLogTest, VerifyNamesADeletedRecord) {
  write_records(10, options());
  auto lines = lines_of(current());
  lines.erase(lines.begin() + 5);  // seq 6
  write_lines(current(), lines);
  auto report = verify();
  ASSERT_FALSE(report.intact);
  EXPECT_EQ(report.problem->kind, "deleted");
  EXPECT_EQ(report.problem->seq, 6u);
}

TEST_F(AuditLogTest, VerifyNamesSwappedRecordsReordered) {
  write_records(10, options());
  auto lines = lines_of(current());
  std::swap(lines[3], lines[4]);  // seq 4 and 5
  write_lines(current(), lines);
  auto report = verify();
  ASSERT_FALSE(report.intact);
  EXPECT_EQ(report.problem->kind, "reordered");
  EXPECT_EQ(report.problem->seq, 4u);
}

TEST_F(AuditLogTest, VerifyNamesACutTailAgainstTheCheckpoint) {
  auto o = options();
  o.checkpoint_every = 5;
  std::vector<AuditCheckpoint> checkpoints;
  o.on_checkpoint = [&](const AuditCheckpoint& c) { checkpoints.push_back(c); };
  write_records(10, o);
  ASSERT_EQ(checkpoints.size(), 2u);
  EXPECT_TRUE(verify(checkpoints.back()).intact);

  auto lines = lines_of(current());
  lines.resize(7);
  write_lines(current(), lines);
  EXPECT_TRUE(verify().intact);  // without a checkpoint a cut tail is invisible
  auto report = verify(checkpoints.back());
  ASSERT_FALSE(report.intact);
  EXPECT_EQ(report.problem->kind, "truncated");
  EXPECT_EQ(report.problem->seq, 8u);
  EXPECT_NE(report.problem->detail.find("last record is 7"), std::string::npos);
  EXPECT_NE(report.problem->detail.find("at least 10"), std::string::npos);
}

TEST_F(AuditLogTest, VerifyNamesALogCutAndRegrownTruncated) {
  auto o = options();
  o.checkpoint_every = 5;
  std::vector<AuditCheckpoint> checkpoints;
  o.on_checkpoint = [&](const AuditCheckpoint& c) { checkpoints.push_back(c); };
  write_records(5, o);
  auto lines = lines_of(current());
  lines.resize(3);
  write_lines(current(), lines);
  o.on_checkpoint = nullptr;
  {
    AuditLog log(o, kMac);
    for (int i = 0; i < 4; ++i) log.append(sign_request("regrown"));  // seq 4..7
  }
  auto report = verify(checkpoints.back());
  ASSERT_FALSE(report.intact);
  EXPECT_EQ(report.problem->kind, "truncated");
  EXPECT_EQ(report.problem->seq, 5u);
}

TEST_F(AuditLogTest, VerifyRejectsAChainRebuiltWithPlainSha256) {
  write_records(4, options());
  // An attacker without the audit key rewrites every record's content and
  // recomputes the chain with SHA-256.
  auto lines = lines_of(current());
  std::string prev(64, '0');
  for (auto& line : lines) {
    auto record = nlohmann::ordered_json::parse(line);
    record.erase("tag");
    record["key"] = "innocent";
    record["prev"] = prev;
    auto canonical = record.dump();
    std::vector<std::uint8_t> input(32, 0);
    for (std::size_t i = 0; i < 32; ++i) input[i] = std::stoi(prev.substr(2 * i, 2), nullptr, 16);
    input.insert(input.end(), canonical.begin(), canonical.end());
    Tag digest{};
    SHA256(input.data(), input.size(), digest.data());
    std::ostringstream hex;
    for (auto b : digest) hex << std::hex << (b >> 4) << (b & 0xf);
    prev = hex.str();
    record["tag"] = prev;
    line = record.dump();
  }
  write_lines(current(), lines);
  auto report = verify();
  ASSERT_FALSE(report.intact);
  EXPECT_EQ(report.problem->seq, 1u);
  EXPECT_EQ(report.problem->kind, "modified");
}

TEST_F(AuditLogTest, VerifyNamesAnUnparsableLine) {
  write_records(3, options());
  auto lines = lines_of(current());
  lines[1] = "not json";
  write_lines(current(), lines);
  auto report = verify();
  ASSERT_FALSE(report.intact);
  EXPECT_EQ(report.problem->kind, "unparsable");
  EXPECT_EQ(report.problem->seq, 2u);
}

TEST_F(AuditLogTest, OpeningRefusesALogWhoseLastRecordDoesNotVerify) {
  write_records(2, options());
  auto lines = lines_of(current());
  lines[1].replace(lines[1].find("sensor-key"), 10, "sensor-kez");
  write_lines(current(), lines);
  try {
    AuditLog log(options(), kMac);
    FAIL() << "opened";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::backend_unavailable);
    EXPECT_NE(std::string(e.what()).find("seq 2"), std::string::npos) << e.what();
  }
}

TEST_F(AuditLogTest, AppendFailsClosedWhenTheDiskIsFull) {
  AuditLogOptions o;
  o.file = "/dev/full";
  AuditLog log(o, kMac);
  for (int attempt = 0; attempt < 2; ++attempt) {
    try {
      log.append(sign_request());
      FAIL() << "appended to /dev/full";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::backend_unavailable);
      EXPECT_NE(std::string(e.what()).find("audit log /dev/full"), std::string::npos);
    }
  }
  EXPECT_EQ(log.last().seq, 0u);  // nothing written, no seq used
}

TEST_F(AuditLogTest, AppendFailsClosedBelowTheFreeSpaceReserve) {
  auto o = options();
  o.free_space_reserve_bytes = std::uint64_t{1} << 62;
  AuditLog log(o, kMac);
  try {
    log.append(sign_request());
    FAIL() << "appended below the reserve";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::backend_unavailable);
  }
}

TEST_F(AuditLogTest, UnlinkedFileFailsUntilAFileIsAtThePathAgain) {
  auto o = options();
  o.checkpoint_every = 1;
  AuditCheckpoint checkpoint;
  o.on_checkpoint = [&](const AuditCheckpoint& c) { checkpoint = c; };
  AuditLog log(o, kMac);
  for (int i = 0; i < 3; ++i) log.append(sign_request());
  fs::remove(current());
  for (int attempt = 0; attempt < 2; ++attempt) {
    try {
      log.append(sign_request());
      FAIL() << "appended to an unlinked file";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::backend_unavailable);
      EXPECT_NE(std::string(e.what()).find("unlinked"), std::string::npos) << e.what();
    }
  }
  // A file with someone else's records is not taken up.
  write_lines(current(), {"{\"seq\":1}"});
  EXPECT_THROW(log.append(sign_request()), Error);
  // An empty file is: the chain continues where it stopped.
  write_lines(current(), {});
  auto resumed = log.append(sign_request());
  EXPECT_EQ(resumed.seq, 4u);
  auto line = nlohmann::json::parse(lines_of(current()).at(0));
  EXPECT_EQ(line["seq"], 4);

  // As documented: the records of the unlinked file are a gap that the
  // checkpoint exposes; the log alone verifies, starting at seq 4.
  auto alone = verify();
  EXPECT_TRUE(alone.intact);
  EXPECT_EQ(alone.first_seq, 4u);
  auto against_checkpoint = verify(AuditCheckpoint{3, {}});
  ASSERT_FALSE(against_checkpoint.intact);
  EXPECT_EQ(against_checkpoint.problem->kind, "deleted");
  EXPECT_EQ(against_checkpoint.problem->seq, 3u);
  EXPECT_TRUE(verify(checkpoint).intact);  // the newest checkpoint is record 4
}

TEST_F(AuditLogTest, RestoredCopyOfAnUnlinkedFileContinuesIntact) {
  AuditLog log(options(), kMac);
  for (int i = 0; i < 3; ++i) log.append(sign_request());
  log.sync();
  fs::copy_file(current(), dir_ / "backup.log");
  fs::remove(current());
  EXPECT_THROW(log.append(sign_request()), Error);
  fs::copy_file(dir_ / "backup.log", current());
  EXPECT_EQ(log.append(sign_request()).seq, 4u);
  auto report = verify();
  EXPECT_TRUE(report.intact) << report.problem->detail;
  EXPECT_EQ(report.records, 4u);
}

TEST_F(AuditLogTest, ReplacedFileFailsTheNextAppend) {
  AuditLog log(options(), kMac);
  log.append(sign_request());
  fs::rename(current(), dir_ / "moved.log");
  write_lines(current(), {});
  try {
    log.append(sign_request());
    FAIL() << "appended after the file was replaced";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("replaced"), std::string::npos) << e.what();
  }
  EXPECT_EQ(log.append(sign_request()).seq, 2u);  // the empty replacement is taken up
}

TEST_F(AuditLogTest, DurableRecordIsSyncedBeforeAppendReturns) {
  auto o = options();
  o.sync_interval = std::chrono::hours(1);  // the background sync never comes first
  AuditLog log(o, kMac);
  log.append(sign_request());
  EXPECT_EQ(log.sync_count(), 0u);
  auto record = sign_request();
  record.durable = true;
  log.append(record);
  EXPECT_EQ(log.sync_count(), 1u);
}

TEST_F(AuditLogTest, ConcurrentAppendsMakeAGapFreeChain) {
  {
    AuditLog log(options(), kMac);
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&log, t] {
        for (int i = 0; i < 200; ++i) {
          auto record = sign_request("key-" + std::to_string(t));
          record.durable = i % 10 == 0;
          log.append(record);
        }
      });
    }
    for (auto& thread : threads) thread.join();
    EXPECT_EQ(log.last().seq, 1600u);
    EXPECT_LE(log.sync_count(), 1600u);
  }
  auto report = verify();
  EXPECT_TRUE(report.intact) << report.problem->detail;
  EXPECT_EQ(report.records, 1600u);
  EXPECT_EQ(report.last_seq, 1600u);
}

TEST_F(AuditLogTest, RecordsQueuedDuringAWriteGoOutInOneWrite) {
  // The log on a FIFO whose pipe holds less than the first record: that
  // record's write() blocks until the test reads, and the records appended
  // meanwhile must queue and then leave in a single write().
  const auto fifo = dir_ / "audit.fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const int reader = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  ASSERT_GE(reader, 0);
  ASSERT_GE(::fcntl(reader, F_SETPIPE_SZ, 4096), 4096);
  AuditLogOptions o;
  o.file = fifo;
  std::string received;
  auto drain = [&] {
    char buffer[65536];
    for (ssize_t n; (n = ::read(reader, buffer, sizeof buffer)) > 0;) received.append(buffer, n);
  };
  {
    AuditLog log(o, kMac);
    auto big = sign_request();
    big.exe = std::string(3 * 65536, 'x');  // more than the pipe can ever hold
    std::thread first([&] { log.append(big); });
    while (log.write_count() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    std::vector<std::thread> queued;
    for (int t = 0; t < 4; ++t) {
      queued.emplace_back([&log, t] { log.append(sign_request("key-" + std::to_string(t))); });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // let them queue
    EXPECT_EQ(log.write_count(), 1u);
    while (log.last().seq < 5) {
      drain();
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    first.join();
    for (auto& thread : queued) thread.join();
    EXPECT_EQ(log.write_count(), 2u);  // the big record, then the four together
  }
  drain();
  ::close(reader);
  // The five records form one chain, seq 1 to 5, the big one first.
  std::istringstream lines(received);
  std::uint64_t expected = 1;
  for (std::string line; std::getline(lines, line); ++expected) {
    EXPECT_EQ(nlohmann::json::parse(line)["seq"], expected);
  }
  EXPECT_EQ(expected, 6u);
  const auto copy = dir_ / "copy.log";
  std::ofstream(copy) << received;
  auto report = verify_audit_log(copy, kMac, std::nullopt);
  EXPECT_TRUE(report.intact) << report.problem->detail;
  EXPECT_EQ(report.records, 5u);
}

TEST_F(AuditLogTest, AFailedGroupWriteFailsEveryRecordInIt) {
  AuditLogOptions o;
  o.file = "/dev/full";
  AuditLog log(o, kMac);
  std::atomic<int> failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        try {
          log.append(sign_request());
        } catch (const Error& e) {
          if (e.code() == ErrorCode::backend_unavailable) ++failed;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failed.load(), 400);
  EXPECT_EQ(log.last().seq, 0u);  // no seq used by any of them
}

TEST_F(AuditLogTest, DenialFloodIsCoalescedIntoOneSummary) {
  auto o = options();
  o.flood_threshold = 50;
  {
    AuditLog log(o, kMac);
    int written_now = 0;
    for (int i = 0; i < 200; ++i) written_now += log.note_denial(denial(1001)) ? 1 : 0;
    EXPECT_EQ(written_now, 50);
  }
  std::uint64_t records = 0;
  std::uint64_t denials = 0;
  std::uint64_t last_count = 0;
  read_audit_log(dir_ / "audit", [&](const nlohmann::json& record) {
    ++records;
    denials += record["count"].get<std::uint64_t>();
    last_count = record["count"];
    EXPECT_EQ(record["result"], "denied");
    return true;
  });
  EXPECT_LT(records, o.flood_threshold + 2);
  EXPECT_EQ(denials, 200u);
  EXPECT_EQ(last_count, 150u);
  EXPECT_TRUE(verify().intact);
}

TEST_F(AuditLogTest, CoalescedDenialsAreWrittenBeforeThePrincipalsNextRecord) {
  auto o = options();
  o.flood_threshold = 2;
  AuditLog log(o, kMac);
  for (int i = 0; i < 10; ++i) log.note_denial(denial(1001));
  log.note_denial(denial(1002));  // another principal: its own budget
  auto allowed = sign_request();
  allowed.uid = 1001;
  log.append(allowed);
  log.sync();
  std::vector<std::pair<std::uint64_t, std::uint64_t>> uid_count;
  read_audit_log(dir_ / "audit", [&](const nlohmann::json& record) {
    uid_count.emplace_back(record["uid"], record["count"]);
    return true;
  });
  EXPECT_EQ(uid_count, (std::vector<std::pair<std::uint64_t, std::uint64_t>>{
                           {1001, 1}, {1001, 1}, {1002, 1}, {1001, 8}, {1001, 1}}));
}

TEST_F(AuditLogTest, CoalescedDenialsAreWrittenWhenTheWindowEnds) {
  auto o = options();
  o.flood_threshold = 1;
  o.flood_window = std::chrono::seconds(1);
  AuditLog log(o, kMac);
  for (int i = 0; i < 5; ++i) log.note_denial(denial(1001));
  // Polls; asserts only that the summary comes, not when.
  for (int i = 0; i < 200 && log.last().seq < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(log.last().seq, 2u);
}

TEST_F(AuditLogTest, CheckpointCallbackComesEveryNRecords) {
  auto o = options();
  o.checkpoint_every = 5;
  o.sync_interval = std::chrono::hours(1);  // only the checkpoints sync
  std::vector<AuditCheckpoint> checkpoints;
  o.on_checkpoint = [&](const AuditCheckpoint& c) { checkpoints.push_back(c); };
  std::vector<AuditCheckpoint> written;
  {
    AuditLog log(o, kMac);
    for (int i = 0; i < 23; ++i) written.push_back(log.append(sign_request()));
    EXPECT_EQ(log.sync_count(), 4u);  // each checkpoint record is on disk first
  }
  ASSERT_EQ(checkpoints.size(), 4u);
  for (std::size_t i = 0; i < checkpoints.size(); ++i) {
    EXPECT_EQ(checkpoints[i].seq, 5 * (i + 1));
    EXPECT_EQ(checkpoints[i].tag, written[5 * (i + 1) - 1].tag);
  }
}

}  // namespace
}  // namespace m2mvault::policies
