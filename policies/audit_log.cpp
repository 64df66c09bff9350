#include "policies/audit_log.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <exception>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "api/error.h"

namespace m2mvault::policies {
namespace {

namespace fs = std::filesystem;
using ordered_json = nlohmann::ordered_json;
using Tag = std::array<std::uint8_t, 32>;
using SteadyClock = std::chrono::steady_clock;

constexpr std::string_view kCurrentName = "audit.log";
constexpr std::string_view kRotatedPrefix = "audit-";
constexpr std::string_view kRotatedSuffix = ".log";
constexpr std::size_t kSeqDigits = 20;
constexpr std::size_t kMaxLineBytes = 1 << 20;
constexpr std::size_t kMaxCoalescedKeys = 256;
constexpr auto kSpaceWarningInterval = std::chrono::minutes(1);
// Pause before the background thread retries a failed sync or summary, so a
// broken disk does not turn it into a busy loop.
constexpr auto kRetryDelay = std::chrono::milliseconds(100);

// Why a log file cannot be used; callers add the file and the error code.
class LogFileError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

std::string errno_text(int err) {
  return std::strerror(err);
}

[[noreturn]] void unavailable(const fs::path& path, const std::string& why) {
  throw Error(ErrorCode::backend_unavailable, "audit log " + path.string() + ": " + why);
}

std::string hex(std::span<const std::uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (auto b : bytes) {
    out += kDigits[b >> 4];
    out += kDigits[b & 0xf];
  }
  return out;
}

// 64 lowercase hex digits, as hex() writes them.
std::optional<Tag> parse_tag(std::string_view text) {
  if (text.size() != 64) return std::nullopt;
  auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  Tag tag{};
  for (std::size_t i = 0; i < tag.size(); ++i) {
    int hi = digit(text[2 * i]);
    int lo = digit(text[2 * i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    tag[i] = static_cast<std::uint8_t>(hi << 4 | lo);
  }
  return tag;
}

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// "2027-01-31T12:00:00.123Z".
std::string format_time_ms(std::int64_t ms) {
  std::int64_t seconds = ms / 1000;
  std::int64_t millis = ms % 1000;
  if (millis < 0) {
    millis += 1000;
    --seconds;
  }
  auto t = static_cast<std::time_t>(seconds);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char text[64];
  std::snprintf(text, sizeof text, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(millis));
  return text;
}

std::string dump(const ordered_json& j) {
  return j.dump(-1, ' ', false, ordered_json::error_handler_t::replace);
}

// A JSON string exactly as dump() writes it: printable ASCII without quotes
// or backslashes as is (the common case, without nlohmann's allocations),
// anything else through nlohmann itself, so that verification, which
// re-dumps each parsed line, always agrees.
void append_json_string(std::string& out, std::string_view text) {
  const bool plain = std::all_of(text.begin(), text.end(), [](char c) {
    return c >= 0x20 && c < 0x7f && c != '"' && c != '\\';
  });
  if (plain) {
    out += '"';
    out += text;
    out += '"';
  } else {
    out += dump(ordered_json(std::string(text)));
  }
}

// The members of a record between "seq" and "prev"'s value, as dump()
// writes them: everything of the line that does not depend on the chain,
// so it is built before the log's lock is taken.
std::string record_body(const AuditRecord& r) {
  std::string out;
  out.reserve(256 + r.exe.size() + r.key.size() + r.key_id.size());
  out += ",\"time\":\"";
  out += format_time_ms(r.time_ms);
  out += "\",\"uid\":" + std::to_string(r.uid);
  out += ",\"gid\":" + std::to_string(r.gid);
  out += ",\"pid\":" + std::to_string(r.pid);
  out += ",\"exe\":";
  append_json_string(out, r.exe);
  out += ",\"op\":";
  append_json_string(out, r.op);
  out += ",\"key\":";
  append_json_string(out, r.key);
  out += ",\"key_id\":";
  append_json_string(out, r.key_id);
  out += ",\"result\":";
  append_json_string(out, r.result);
  out += ",\"error\":";
  append_json_string(out, r.error);
  out += ",\"count\":" + std::to_string(r.count);
  out += ",\"prev\":\"";
  return out;
}

// The record line without its tag: what the tag authenticates.
std::string canonical_record(std::uint64_t seq, const std::string& body, const Tag& prev) {
  return "{\"seq\":" + std::to_string(seq) + body + hex(prev) + "\"}";
}

// The canonical text with "tag" as its last member: the line append() writes.
std::string with_tag(const std::string& canonical, const Tag& tag) {
  return canonical.substr(0, canonical.size() - 1) + ",\"tag\":\"" + hex(tag) + "\"}";
}

Tag chain_tag(const AuditMac& mac, const Tag& prev, std::string_view canonical) {
  std::vector<std::uint8_t> input(prev.begin(), prev.end());
  input.insert(input.end(), canonical.begin(), canonical.end());
  return mac(input);
}

// One line of a log file, taken apart for the chain checks.
struct ParsedLine {
  std::string error;       // non-empty: not a record, and why
  bool canonical = false;  // byte for byte what append() writes
  std::uint64_t seq = 0;
  Tag prev{};
  Tag tag{};
  std::string canonical_text;
};

ParsedLine parse_line(const std::string& line) {
  ParsedLine p;
  auto j = ordered_json::parse(line, nullptr, false);
  if (j.is_discarded() || !j.is_object() || j.empty()) {
    p.error = "not a JSON object";
    return p;
  }
  auto seq = j.find("seq");
  if (seq == j.end() || !seq->is_number_unsigned() || seq->get<std::uint64_t>() == 0) {
    p.error = "no positive integer \"seq\"";
    return p;
  }
  p.seq = seq->get<std::uint64_t>();
  for (auto [name, out] : {std::pair{"prev", &p.prev}, std::pair{"tag", &p.tag}}) {
    auto field = j.find(name);
    std::optional<Tag> value;
    if (field != j.end() && field->is_string()) value = parse_tag(field->get<std::string>());
    if (!value) {
      p.error = std::string("no 64-hex-digit \"") + name + "\"";
      return p;
    }
    *out = *value;
  }
  bool tag_last = std::prev(j.end()).key() == "tag";
  j.erase("tag");
  if (j.empty()) {
    p.error = "a record needs more than a tag";
    return p;
  }
  p.canonical_text = dump(j);
  p.canonical = tag_last && line == with_tag(p.canonical_text, p.tag);
  return p;
}

std::string rotated_name(std::uint64_t first_seq) {
  std::string digits = std::to_string(first_seq);
  return std::string(kRotatedPrefix) + std::string(kSeqDigits - digits.size(), '0') + digits +
         std::string(kRotatedSuffix);
}

// The first seq in a rotated file's name, nullopt for any other name.
std::optional<std::uint64_t> rotated_seq(std::string_view name) {
  if (name.size() != kRotatedPrefix.size() + kSeqDigits + kRotatedSuffix.size() ||
      !name.starts_with(kRotatedPrefix) || !name.ends_with(kRotatedSuffix)) {
    return std::nullopt;
  }
  auto digits = name.substr(kRotatedPrefix.size(), kSeqDigits);
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  return std::stoull(std::string(digits));
}

// Rotated files of a log directory, oldest first.
std::vector<fs::path> rotated_files(const fs::path& directory) {
  std::error_code ec;
  std::vector<std::pair<std::uint64_t, fs::path>> found;
  for (fs::directory_iterator it(directory, ec), end; !ec && it != end; it.increment(ec)) {
    if (auto seq = rotated_seq(it->path().filename().string())) {
      found.emplace_back(*seq, it->path());
    }
  }
  if (ec) unavailable(directory, "cannot list the directory: " + ec.message());
  std::sort(found.begin(), found.end());
  std::vector<fs::path> files;
  for (auto& f : found) files.push_back(std::move(f.second));
  return files;
}

// The files of a log, in seq order: the rotated files, then audit.log.
std::vector<fs::path> log_files(const fs::path& directory_or_file) {
  std::error_code ec;
  auto status = fs::status(directory_or_file, ec);
  if (!fs::exists(status)) {
    throw Error(ErrorCode::not_found,
                "audit log " + directory_or_file.string() + " does not exist");
  }
  if (!fs::is_directory(status)) return {directory_or_file};
  auto files = rotated_files(directory_or_file);
  auto current = directory_or_file / kCurrentName;
  if (fs::exists(current, ec)) files.push_back(current);
  return files;
}

void pread_exactly(int fd, char* out, std::size_t size, off_t offset) {
  while (size > 0) {
    ssize_t n = ::pread(fd, out, size, offset);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw LogFileError("cannot read: " + errno_text(errno));
    if (n == 0) throw LogFileError("the file shrank while being read");
    out += n;
    size -= static_cast<std::size_t>(n);
    offset += n;
  }
}

std::string read_first_line(int fd, off_t size) {
  std::string line;
  for (off_t offset = 0; offset < size;) {
    std::string chunk(static_cast<std::size_t>(std::min<off_t>(4096, size - offset)), '\0');
    pread_exactly(fd, chunk.data(), chunk.size(), offset);
    auto newline = chunk.find('\n');
    line += chunk.substr(0, newline);
    if (newline != std::string::npos) return line;
    if (line.size() > kMaxLineBytes) throw LogFileError("the first line is implausibly long");
    offset += static_cast<off_t>(chunk.size());
  }
  throw LogFileError("the first line is incomplete (a torn write?)");
}

// The last line of a non-empty file, which must end with a newline.
std::string read_last_line(int fd, off_t size) {
  char last = 0;
  pread_exactly(fd, &last, 1, size - 1);
  if (last != '\n') throw LogFileError("the last line is incomplete (a torn write?)");
  std::string line;
  for (off_t end = size - 1; end > 0;) {
    off_t start = std::max<off_t>(0, end - 4096);
    std::string chunk(static_cast<std::size_t>(end - start), '\0');
    pread_exactly(fd, chunk.data(), chunk.size(), start);
    auto newline = chunk.rfind('\n');
    if (newline != std::string::npos) return chunk.substr(newline + 1) + line;
    line.insert(0, chunk);
    if (line.size() > kMaxLineBytes) throw LogFileError("the last line is implausibly long");
    end = start;
  }
  return line;
}

struct ChainEnd {
  std::uint64_t first_seq;
  std::uint64_t last_seq;
  Tag last_tag;
};

// First seq and last record of a non-empty log file; the last record's tag
// must verify, as the chain continues from it.
ChainEnd read_chain_end(int fd, off_t size, const AuditMac& mac) {
  auto last = parse_line(read_last_line(fd, size));
  if (!last.error.empty()) throw LogFileError("the last line is not a record: " + last.error);
  if (!last.canonical || chain_tag(mac, last.prev, last.canonical_text) != last.tag) {
    throw LogFileError("the last record (seq " + std::to_string(last.seq) +
                       ") does not verify with the audit key; run `m2mvault audit verify`");
  }
  auto first = parse_line(read_first_line(fd, size));
  if (!first.error.empty()) throw LogFileError("the first line is not a record: " + first.error);
  return {first.seq, last.seq, last.tag};
}

void fsync_directory(const fs::path& directory) {
  int fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw LogFileError("cannot open its directory: " + errno_text(errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) throw LogFileError("cannot fsync its directory: " + errno_text(err));
}

struct FileHandle {
  explicit FileHandle(int descriptor) : fd(descriptor) {}
  ~FileHandle() { ::close(fd); }
  FileHandle(const FileHandle&) = delete;
  FileHandle& operator=(const FileHandle&) = delete;
  int fd;
};

// Reads the files of a log line by line, in order.
class LineReader {
 public:
  struct Line {
    std::size_t file_index = 0;
    std::size_t number = 0;  // 1-based within the file
    std::string text;
    bool terminated = false;  // ended by a newline
  };

  explicit LineReader(const std::vector<fs::path>& files) : files_(files) {}

  bool next(Line& out) {
    for (;;) {
      if (!stream_.is_open()) {
        if (index_ >= files_.size()) return false;
        stream_.open(files_[index_], std::ios::binary);
        if (!stream_) unavailable(files_[index_], "cannot read: " + errno_text(errno));
        number_ = 0;
      }
      if (std::getline(stream_, out.text)) {
        out.file_index = index_;
        out.number = ++number_;
        out.terminated = !stream_.eof();
        return true;
      }
      stream_.close();
      stream_.clear();
      ++index_;
    }
  }

 private:
  const std::vector<fs::path>& files_;
  std::ifstream stream_;
  std::size_t index_ = 0;
  std::size_t number_ = 0;
};

enum class Failure { none, io, space, stale };

// Counted identical denials of one principal, written as one record.
struct Coalesced {
  AuditRecord summary;  // the first denial's fields; time of the last
  std::uint64_t count = 0;
};

struct FloodWindow {
  SteadyClock::time_point start;
  SteadyClock::time_point retry_at{};  // after a summary failed to be written
  std::size_t denials = 0;
  std::map<std::pair<std::string, std::string>, Coalesced> pending;  // by (op, key)
};

}  // namespace

struct AuditLog::State {
  AuditLogOptions options;
  AuditMac mac;
  fs::path path;          // the current file
  bool rotating = false;  // directory mode
  bool regular = true;    // the current file is a regular file (not /dev/full)

  mutable std::mutex mu;
  std::condition_variable wake;    // the background thread
  std::condition_variable synced;  // durable appenders waiting for a group fdatasync

  std::shared_ptr<FileHandle> file;
  dev_t dev = 0;
  ino_t ino = 0;
  std::uint64_t size = 0;                    // bytes of the current file as written here
  std::optional<std::uint64_t> cut_back_to;  // a short write left a partial line past this
  std::uint64_t first_seq = 0;               // of the current file; 0 while it is empty
  std::uint64_t last_seq = 0;
  Tag last_tag{};

  // Group write: appenders queue their record; the first one that finds no
  // writer at work takes the whole queue, chains it, writes it with one
  // write() (the lock released around it, so that more records queue
  // meanwhile) and wakes the others. Only the writer changes the file,
  // size, last_seq and last_tag.
  struct Queued {
    const std::string* body;  // record_body() of the record
    bool durable;
    AuditCheckpoint written{};
    std::exception_ptr error;
    bool done = false;
  };
  std::vector<Queued*> queue;
  bool writing = false;
  std::condition_variable batch_done;

  std::uint64_t synced_seq = 0;
  bool syncing = false;  // a group fdatasync runs without the lock
  bool dirty = false;    // records await the background sync
  SteadyClock::time_point sync_due;
  std::uint64_t syncs = 0;
  std::uint64_t writes = 0;

  Failure failure = Failure::none;
  std::string failure_message;
  std::string failure_why;      // failure_message without the file
  bool create_allowed = false;  // a rotation renamed audit.log but could not create the next
  bool space_warned = false;
  SteadyClock::time_point space_ok_until{};  // no fstatvfs needed before this
  SteadyClock::time_point last_space_warning;

  std::map<uid_t, FloodWindow> floods;
  bool stop = false;
  std::thread thread;

  State(AuditLogOptions o, AuditMac m) : options(std::move(o)), mac(std::move(m)) {}

  // --- opening ------------------------------------------------------------

  void open() {
    if (!mac) throw Error(ErrorCode::backend_unavailable, "audit log: no MAC function given");
    if (!options.file.empty()) {
      // Absolute: every append stat()s the path, whatever the daemon's cwd.
      path = fs::absolute(options.file);
    } else if (!options.directory.empty()) {
      rotating = true;
      options.directory = fs::absolute(options.directory);
      path = options.directory / kCurrentName;
      create_directory();
    } else {
      throw Error(ErrorCode::backend_unavailable, "audit log: no directory or file configured");
    }
    int fd = ::open(path.c_str(), open_flags() | O_CREAT, 0600);
    if (fd < 0) unavailable(path, "cannot open: " + errno_text(errno));
    auto handle = std::make_shared<FileHandle>(fd);
    struct stat st {};
    if (::fstat(fd, &st) != 0) unavailable(path, "cannot fstat: " + errno_text(errno));
    try {
      if (S_ISREG(st.st_mode) && st.st_size > 0) {
        auto end = read_chain_end(fd, st.st_size, mac);
        first_seq = end.first_seq;
        last_seq = end.last_seq;
        last_tag = end.last_tag;
      } else if (rotating) {
        // audit.log is new or empty: continue from the newest rotated file.
        auto rotated = rotated_files(options.directory);
        if (!rotated.empty()) continue_from(rotated.back());
      }
      if (rotating) fsync_directory(options.directory);
    } catch (const LogFileError& e) {
      unavailable(path, e.what());
    }
    install(std::move(handle), st);
    synced_seq = last_seq;
  }

  int open_flags() const { return O_RDWR | O_APPEND | O_CLOEXEC | (rotating ? O_NOFOLLOW : 0); }

  void create_directory() {
    const auto& dir = options.directory;
    std::error_code ec;
    if (!fs::exists(dir, ec)) {
      if (dir.has_parent_path()) fs::create_directories(dir.parent_path(), ec);
      if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
        unavailable(dir, "cannot create the directory: " + errno_text(errno));
      }
    }
    if (!fs::is_directory(dir, ec)) unavailable(dir, "not a directory");
  }

  void continue_from(const fs::path& rotated) {
    int fd = ::open(rotated.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) unavailable(rotated, "cannot open: " + errno_text(errno));
    FileHandle handle(fd);
    struct stat st {};
    if (::fstat(fd, &st) != 0) unavailable(rotated, "cannot fstat: " + errno_text(errno));
    if (st.st_size == 0) return;
    try {
      auto end = read_chain_end(fd, st.st_size, mac);
      last_seq = end.last_seq;
      last_tag = end.last_tag;
    } catch (const LogFileError& e) {
      unavailable(rotated, e.what());
    }
  }

  void install(std::shared_ptr<FileHandle> handle, const struct stat& st) {
    file = std::move(handle);
    dev = st.st_dev;
    ino = st.st_ino;
    regular = S_ISREG(st.st_mode);
    size = regular ? static_cast<std::uint64_t>(st.st_size) : 0;
    cut_back_to.reset();
  }

  // --- failure states -----------------------------------------------------

  [[noreturn]] void fail(Failure kind, const std::string& why) {
    auto message = "audit log " + path.string() + ": " + why;
    if (kind != failure || message != failure_message) spdlog::error("{}", message);
    failure = kind;
    failure_message = message;
    failure_why = why;
    throw Error(ErrorCode::backend_unavailable, message);
  }

  [[noreturn]] void fail_stale(const std::string& why) {
    fail(Failure::stale, why +
                             "; appends resume once a file is at the path again (empty, or "
                             "ending with seq " +
                             std::to_string(last_seq) + ")");
  }

  void recovered() {
    if (failure == Failure::none) return;
    spdlog::warn("audit log {}: appending again after: {}", path.string(), failure_why);
    failure = Failure::none;
    failure_message.clear();
    failure_why.clear();
  }

  // Reopens the file at the path after the open one was unlinked or replaced,
  // if it is empty or ends with the last record written here.
  void reopen() {
    int fd = ::open(path.c_str(), open_flags());
    if (fd < 0 && errno == ENOENT && create_allowed) {
      fd = ::open(path.c_str(), open_flags() | O_CREAT | O_EXCL, 0600);
    }
    if (fd < 0 && errno == ENOENT) throw Error(ErrorCode::backend_unavailable, failure_message);
    if (fd < 0) fail_stale("cannot reopen: " + errno_text(errno));
    auto handle = std::make_shared<FileHandle>(fd);
    struct stat st {};
    if (::fstat(fd, &st) != 0)
      fail_stale("cannot fstat the file at the path: " + errno_text(errno));
    std::uint64_t first = 0;
    if (st.st_size > 0) {
      ChainEnd end{};
      try {
        end = read_chain_end(fd, st.st_size, mac);
      } catch (const LogFileError& e) {
        fail_stale(std::string("the file at the path: ") + e.what());
      }
      if (end.last_seq != last_seq || end.last_tag != last_tag) {
        fail_stale("the file at the path ends with seq " + std::to_string(end.last_seq) +
                   ", not with the last record written here");
      }
      first = end.first_seq;
    }
    if (create_allowed) {
      try {
        fsync_directory(path.parent_path());
      } catch (const LogFileError& e) {
        fail_stale(e.what());
      }
    }
    install(std::move(handle), st);
    first_seq = first;
    create_allowed = false;
    // The records of the old file were synced or went with it.
    synced_seq = last_seq;
    dirty = false;
    synced.notify_all();
  }

  // The open file must still be the file at the path, unchanged by others.
  void check_identity() {
    struct stat open_st {};
    if (::fstat(file->fd, &open_st) != 0) fail(Failure::io, "cannot fstat: " + errno_text(errno));
    if (open_st.st_nlink == 0) fail_stale("the file was unlinked");
    struct stat path_st {};
    if (::stat(path.c_str(), &path_st) != 0) {
      if (errno == ENOENT) fail_stale("the file was removed from its path");
      fail(Failure::io, "cannot stat the path: " + errno_text(errno));
    }
    if (path_st.st_dev != dev || path_st.st_ino != ino) {
      fail_stale("another file replaced it at the path");
    }
    if (regular && static_cast<std::uint64_t>(open_st.st_size) != size) {
      fail_stale("it changed size behind the daemon's back (" + std::to_string(size) +
                 " bytes expected, " + std::to_string(open_st.st_size) + " found)");
    }
  }

  void check_space() {
    if (!regular || options.free_space_reserve_bytes == 0) return;
    // At most every 20 ms, while above twice the reserve: between two
    // looks, far fewer records than the reserve holds can be written.
    const auto checked_now = SteadyClock::now();
    if (space_ok_until > checked_now) return;
    struct statvfs vfs {};
    if (::fstatvfs(file->fd, &vfs) != 0) fail(Failure::io, "fstatvfs failed: " + errno_text(errno));
    std::uint64_t available = static_cast<std::uint64_t>(vfs.f_bavail) * vfs.f_frsize;
    const auto reserve = options.free_space_reserve_bytes;
    if (available < reserve) {
      fail(Failure::space, std::to_string(available) +
                               " bytes free on its volume, below the reserve of " +
                               std::to_string(reserve));
    }
    space_ok_until = available / 2 >= reserve ? checked_now + std::chrono::milliseconds(20)
                                              : SteadyClock::time_point{};
    if (available / 2 < reserve) {
      auto now = SteadyClock::now();
      if (!space_warned || now - last_space_warning >= kSpaceWarningInterval) {
        spdlog::warn("audit log {}: {} bytes free on its volume, less than twice the reserve of {}",
                     path.string(), available, reserve);
        space_warned = true;
        last_space_warning = now;
      }
    }
  }

  void ensure_writable() {
    if (failure == Failure::stale) reopen();
    check_identity();
    if (cut_back_to) {
      if (::ftruncate(file->fd, static_cast<off_t>(*cut_back_to)) != 0) {
        fail(Failure::io, "cannot cut off a partial record: " + errno_text(errno));
      }
      size = *cut_back_to;
      cut_back_to.reset();
    }
    check_space();
  }

  // --- writing ------------------------------------------------------------

  void rotate_if_needed(std::size_t line_size) {
    if (!rotating || !regular || size == 0 || size + line_size <= options.rotate_bytes) return;
    sync_holding_lock();
    auto target = options.directory / rotated_name(first_seq);
    if (::renameat2(AT_FDCWD, path.c_str(), AT_FDCWD, target.c_str(), RENAME_NOREPLACE) != 0) {
      fail(Failure::io,
           "cannot rotate it to " + target.filename().string() + ": " + errno_text(errno));
    }
    create_allowed = true;
    int fd = ::open(path.c_str(), open_flags() | O_CREAT | O_EXCL, 0600);
    if (fd < 0) fail_stale("rotated, but cannot create the next file: " + errno_text(errno));
    auto handle = std::make_shared<FileHandle>(fd);
    struct stat st {};
    if (::fstat(fd, &st) != 0) fail(Failure::io, "cannot fstat: " + errno_text(errno));
    install(std::move(handle), st);
    first_seq = 0;
    create_allowed = false;
    try {
      fsync_directory(options.directory);
    } catch (const LogFileError& e) {
      fail(Failure::io, e.what());
    }
  }

  // One write() of the whole batch, without the lock (the caller is the
  // writer, so nothing else touches the file meanwhile); anything less is
  // a failure.
  void write_batch(const std::string& lines, std::unique_lock<std::mutex>& lock) {
    const auto handle = file;
    ssize_t n;
    ++writes;
    lock.unlock();
    do {
      n = ::write(handle->fd, lines.data(), lines.size());
    } while (n < 0 && errno == EINTR);
    const int err = errno;
    lock.lock();
    if (n < 0) fail(Failure::io, "write failed: " + errno_text(err));
    if (static_cast<std::size_t>(n) < lines.size()) {
      if (regular) {
        cut_back_to = size;
        size += static_cast<std::uint64_t>(n);
        if (::ftruncate(file->fd, static_cast<off_t>(*cut_back_to)) == 0) {
          size = *cut_back_to;
          cut_back_to.reset();
        }
      }
      fail(Failure::io,
           "short write (" + std::to_string(n) + " of " + std::to_string(lines.size()) + " bytes)");
    }
    size += lines.size();
  }

  // `body` is record_body(record) when the caller built it before locking.
  AuditCheckpoint append(AuditRecord record, std::unique_lock<std::mutex>& lock,
                         const std::string* body = nullptr) {
    std::string built;
    if (!body) {
      if (record.time_ms == 0) record.time_ms = now_ms();
      built = record_body(record);
      body = &built;
    }
    Queued me{.body = body, .durable = record.durable, .written = {}, .error = {}, .done = false};
    queue.push_back(&me);
    while (!me.done) {
      if (writing) {
        batch_done.wait(lock);
      } else {
        write_queued(lock);
      }
    }
    if (me.error) std::rethrow_exception(me.error);
    if (me.durable) sync_through(me.written.seq, lock);
    return me.written;
  }

  // Writes every queued record as the writer; each gets its seq and tag or,
  // when the batch cannot be written, the error (and no seq is used).
  void write_queued(std::unique_lock<std::mutex>& lock) {
    writing = true;
    std::vector<Queued*> batch;
    batch.swap(queue);
    try {
      ensure_writable();
      std::uint64_t seq = last_seq;
      Tag tag = last_tag;
      std::string lines;
      for (auto* record : batch) {
        ++seq;
        auto canonical = canonical_record(seq, *record->body, tag);
        try {
          tag = chain_tag(mac, tag, canonical);
        } catch (const std::exception& e) {
          fail(Failure::io, std::string("the audit key's MAC failed: ") + e.what());
        }
        lines += with_tag(canonical, tag);
        lines += '\n';
        record->written = {seq, tag};
      }
      rotate_if_needed(lines.size());
      write_batch(lines, lock);
      if (first_seq == 0) first_seq = last_seq + 1;
      last_seq = seq;
      last_tag = tag;
      recovered();
      bool lazy = false;
      for (auto* record : batch) {
        record->done = true;
        lazy = lazy || !record->durable;
        if (options.checkpoint_every != 0 && record->written.seq % options.checkpoint_every == 0) {
          checkpoint(record->written);
        }
      }
      if (lazy && !dirty) {
        dirty = true;
        sync_due = SteadyClock::now() + options.sync_interval;
        wake.notify_one();
      }
    } catch (...) {
      const auto error = std::current_exception();
      for (auto* record : batch) {
        record->error = error;
        record->done = true;
      }
    }
    writing = false;
    batch_done.notify_all();
  }

  // Under the lock, so that callbacks arrive in seq order and name only
  // records on disk.
  void checkpoint(const AuditCheckpoint& written) {
    try {
      sync_holding_lock();
    } catch (const Error&) {
      return;  // fail() logged it; durable appenders get the error from their own sync
    }
    if (!options.on_checkpoint) return;
    try {
      options.on_checkpoint(written);
    } catch (const std::exception& e) {
      spdlog::error("audit log {}: storing checkpoint {} failed: {}", path.string(), written.seq,
                    e.what());
    }
  }

  // --- syncing ------------------------------------------------------------

  void synced_through(std::uint64_t target, SteadyClock::time_point started) {
    synced_seq = std::max(synced_seq, target);
    if (last_seq > synced_seq) {
      sync_due = started + options.sync_interval;
    } else {
      dirty = false;
    }
    synced.notify_all();
  }

  void sync_holding_lock() {
    if (synced_seq >= last_seq) return;
    auto started = SteadyClock::now();
    if (regular) {
      ++syncs;
      if (::fdatasync(file->fd) != 0) fail(Failure::io, "fdatasync failed: " + errno_text(errno));
    }
    synced_through(last_seq, started);
  }

  // Returns once records up to `seq` are on disk. One caller at a time runs
  // fdatasync without the lock, covering everything written until it began;
  // the others wait for it (group commit).
  void sync_through(std::uint64_t seq, std::unique_lock<std::mutex>& lock) {
    while (synced_seq < seq) {
      if (syncing) {
        synced.wait(lock);
        continue;
      }
      const std::uint64_t target = last_seq;
      auto handle = file;
      auto started = SteadyClock::now();
      int rc = 0;
      int err = 0;
      if (regular) {
        syncing = true;
        ++syncs;
        lock.unlock();
        rc = ::fdatasync(handle->fd);
        err = errno;
        lock.lock();
        syncing = false;
      }
      if (rc != 0) {
        sync_due = SteadyClock::now() +
                   std::max<SteadyClock::duration>(options.sync_interval, kRetryDelay);
        synced.notify_all();
        fail(Failure::io, "fdatasync failed: " + errno_text(err));
      }
      synced_through(target, started);
    }
    if (synced_seq >= last_seq) dirty = false;
  }

  // --- denial coalescing --------------------------------------------------

  // Writes the principal's counted denials, one record per (op, key).
  void write_summaries(uid_t uid, std::unique_lock<std::mutex>& lock) {
    auto window = floods.find(uid);
    if (window == floods.end() || window->second.pending.empty()) return;
    auto pending = std::move(window->second.pending);
    window->second.pending.clear();
    bool durable = false;
    for (auto it = pending.begin(); it != pending.end(); it = pending.erase(it)) {
      AuditRecord summary = it->second.summary;
      summary.count = it->second.count;
      durable = durable || summary.durable;
      summary.durable = false;  // one sync below; a non-durable append keeps the lock
      try {
        append(std::move(summary), lock);
      } catch (...) {
        auto now = SteadyClock::now();
        auto [back, fresh] = floods.try_emplace(uid);
        if (fresh) back->second.start = now;
        back->second.retry_at = now + kRetryDelay;
        back->second.pending.merge(pending);
        throw;
      }
    }
    if (durable) sync_through(last_seq, lock);
  }

  SteadyClock::time_point window_end(const FloodWindow& w) const {
    return std::max(w.start + options.flood_window, w.retry_at);
  }

  bool note_denial(AuditRecord record, std::unique_lock<std::mutex>& lock) {
    const auto now = SteadyClock::now();
    const uid_t uid = record.uid;
    if (auto old = floods.find(uid); old != floods.end() && now >= window_end(old->second)) {
      write_summaries(uid, lock);
      floods.erase(uid);
    }
    auto [it, fresh] = floods.try_emplace(uid);
    FloodWindow& window = it->second;
    if (fresh) {
      window.start = now;
      wake.notify_one();
    }
    ++window.denials;
    if (window.denials <= options.flood_threshold) {
      append(std::move(record), lock);
      return true;
    }
    auto key = std::make_pair(record.op, record.key);
    auto counted = window.pending.find(key);
    if (counted == window.pending.end()) {
      if (window.pending.size() >= kMaxCoalescedKeys) {
        append(std::move(record), lock);
        return true;
      }
      counted = window.pending.emplace(std::move(key), Coalesced{record, 0}).first;
    }
    counted->second.count += record.count;
    counted->second.summary.time_ms = record.time_ms != 0 ? record.time_ms : now_ms();
    counted->second.summary.durable = counted->second.summary.durable || record.durable;
    return false;
  }

  void flush_expired_windows(SteadyClock::time_point now, std::unique_lock<std::mutex>& lock) {
    std::vector<uid_t> due;
    for (const auto& [uid, window] : floods) {
      if (now >= window_end(window)) due.push_back(uid);
    }
    for (auto uid : due) {
      try {
        write_summaries(uid, lock);
      } catch (const std::exception&) {
        continue;  // logged by fail(); retried after kRetryDelay
      }
      auto window = floods.find(uid);
      if (window != floods.end() && window->second.pending.empty() &&
          now >= window->second.start + options.flood_window) {
        floods.erase(window);
      }
    }
  }

  void flush_all_windows(std::unique_lock<std::mutex>& lock) {
    std::vector<uid_t> uids;
    for (const auto& entry : floods) uids.push_back(entry.first);
    for (auto uid : uids) {
      try {
        write_summaries(uid, lock);
      } catch (const std::exception&) {
        std::uint64_t lost = 0;
        for (const auto& entry : floods[uid].pending) lost += entry.second.count;
        spdlog::error("audit log {}: {} coalesced denials of uid {} could not be written",
                      path.string(), lost, uid);
      }
    }
  }

  // --- background thread --------------------------------------------------

  std::optional<SteadyClock::time_point> next_deadline() const {
    std::optional<SteadyClock::time_point> deadline;
    if (dirty) deadline = sync_due;
    for (const auto& entry : floods) {
      auto end = window_end(entry.second);
      if (!deadline || end < *deadline) deadline = end;
    }
    return deadline;
  }

  void run() {
    std::unique_lock lock(mu);
    while (!stop) {
      if (auto deadline = next_deadline()) {
        wake.wait_until(lock, *deadline);
      } else {
        wake.wait(lock);
      }
      if (stop) break;
      auto now = SteadyClock::now();
      flush_expired_windows(now, lock);
      if (dirty && now >= sync_due) {
        try {
          sync_through(last_seq, lock);
        } catch (const std::exception&) {
          // fail() logged it; sync_due was pushed back.
        }
      }
    }
  }
};

AuditLog::AuditLog(AuditLogOptions options, AuditMac mac)
    : state_(std::make_unique<State>(std::move(options), std::move(mac))) {
  state_->open();
  state_->thread = std::thread([state = state_.get()] { state->run(); });
}

AuditLog::~AuditLog() {
  {
    std::unique_lock lock(state_->mu);
    state_->flush_all_windows(lock);
    state_->stop = true;
  }
  state_->wake.notify_all();
  state_->thread.join();
  std::unique_lock lock(state_->mu);
  try {
    state_->sync_through(state_->last_seq, lock);
  } catch (const std::exception&) {
    // fail() logged it; nothing more can be done at shutdown.
  }
}

AuditCheckpoint AuditLog::append(AuditRecord record) {
  if (record.time_ms == 0) record.time_ms = now_ms();
  const std::string body = record_body(record);
  std::unique_lock lock(state_->mu);
  state_->write_summaries(record.uid, lock);
  return state_->append(std::move(record), lock, &body);
}

void AuditLog::sync() {
  std::unique_lock lock(state_->mu);
  state_->sync_through(state_->last_seq, lock);
}

void AuditLog::set_flood_limits(std::size_t threshold, std::chrono::seconds window) {
  std::lock_guard lock(state_->mu);
  state_->options.flood_threshold = threshold;
  state_->options.flood_window = window;
}

AuditCheckpoint AuditLog::last() const {
  std::lock_guard lock(state_->mu);
  return {state_->last_seq, state_->last_tag};
}

bool AuditLog::note_denial(AuditRecord record) {
  std::unique_lock lock(state_->mu);
  return state_->note_denial(std::move(record), lock);
}

std::uint64_t AuditLog::sync_count() const {
  std::lock_guard lock(state_->mu);
  return state_->syncs;
}

std::uint64_t AuditLog::write_count() const {
  std::lock_guard lock(state_->mu);
  return state_->writes;
}

// --- verification -----------------------------------------------------------

namespace {

struct Location {
  std::size_t file_index;
  std::size_t number;
};

// Where the line holding `seq` is, looking only after `after`.
std::optional<Location> find_seq_after(const std::vector<fs::path>& files, Location after,
                                       std::uint64_t seq) {
  LineReader reader(files);
  LineReader::Line line;
  while (reader.next(line)) {
    if (line.file_index < after.file_index ||
        (line.file_index == after.file_index && line.number <= after.number)) {
      continue;
    }
    auto record = parse_line(line.text);
    if (record.error.empty() && record.seq == seq) return Location{line.file_index, line.number};
  }
  return std::nullopt;
}

}  // namespace

AuditVerifyReport verify_audit_log(const std::filesystem::path& directory_or_file,
                                   const AuditMac& mac, std::optional<AuditCheckpoint> checkpoint) {
  const auto files = log_files(directory_or_file);
  const std::uint64_t checkpoint_seq = checkpoint ? checkpoint->seq : 0;
  AuditVerifyReport report{true, 0, 0, 0, std::nullopt};
  const Tag zeros{};
  std::optional<std::uint64_t> prev_seq;
  Tag prev_tag{};
  Location last_location{0, 0};

  LineReader reader(files);
  LineReader::Line line;
  auto broken = [&](std::uint64_t seq, std::string kind, std::string detail) {
    report.intact = false;
    report.problem = AuditProblem{seq, files[line.file_index].string(), line.number,
                                  std::move(kind), std::move(detail)};
    return report;
  };
  while (reader.next(line)) {
    const std::uint64_t expected = prev_seq ? *prev_seq + 1 : 1;
    const auto s = [](std::uint64_t n) { return std::to_string(n); };
    if (!line.terminated) {
      return broken(expected, "unparsable", "the last line is incomplete (a torn write?)");
    }
    auto record = parse_line(line.text);
    if (!record.error.empty()) return broken(expected, "unparsable", record.error);

    if (!prev_seq) {
      if (record.seq == 1 && record.prev != zeros) {
        return broken(1, "forged", "record 1 must have a prev of zeros");
      }
      if (checkpoint_seq != 0 && record.seq > checkpoint_seq) {
        return broken(checkpoint_seq, "deleted",
                      "the log starts at seq " + s(record.seq) +
                          ", after the checkpoint's record " + s(checkpoint_seq) +
                          ": the records before it are missing");
      }
      report.first_seq = record.seq;
    } else if (record.seq <= *prev_seq) {
      return broken(
          expected, "reordered",
          "seq " + s(record.seq) + " follows seq " + s(*prev_seq) + " (moved or duplicated)");
    } else if (record.seq > expected) {
      if (record.prev == prev_tag) {
        return broken(expected, "modified",
                      "it reads seq " + s(record.seq) + " but links to record " + s(*prev_seq));
      }
      if (auto later = find_seq_after(files, {line.file_index, line.number}, expected)) {
        return broken(expected, "reordered",
                      "seq " + s(record.seq) + " stands where seq " + s(expected) +
                          " belongs; seq " + s(expected) + " appears later, at " +
                          files[later->file_index].filename().string() + " line " +
                          s(later->number));
      }
      return broken(expected, "deleted",
                    "records " + s(expected) + ".." + s(record.seq - 1) + " are missing (seq " +
                        s(record.seq) + " follows seq " + s(*prev_seq) + ")");
    } else if (record.prev != prev_tag) {
      return broken(expected, "forged",
                    "its prev is not the tag of record " + s(*prev_seq) + " before it");
    }

    if (!record.canonical) {
      return broken(record.seq, "modified", "the line is not in the form the daemon writes");
    }
    if (chain_tag(mac, record.prev, record.canonical_text) != record.tag) {
      return broken(record.seq, "modified", "its tag does not verify with the audit key");
    }
    if (checkpoint_seq == record.seq && record.tag != checkpoint->tag) {
      return broken(record.seq, "truncated",
                    "record " + s(record.seq) +
                        " differs from the checkpoint's: the log was cut at or before it and "
                        "regrown");
    }
    ++report.records;
    prev_seq = record.seq;
    prev_tag = record.tag;
    report.last_seq = record.seq;
    last_location = {line.file_index, line.number};
  }
  if (checkpoint_seq > report.last_seq) {
    report.intact = false;
    std::string file =
        files.empty() ? directory_or_file.string() : files[last_location.file_index].string();
    std::string last = report.records == 0
                           ? "the log holds no record"
                           : "the last record is " + std::to_string(report.last_seq);
    report.problem =
        AuditProblem{report.last_seq + 1, std::move(file), last_location.number, "truncated",
                     last + ", the checkpoint says at least " + std::to_string(checkpoint_seq)};
  }
  return report;
}

void read_audit_log(const std::filesystem::path& directory_or_file,
                    const std::function<bool(const nlohmann::json&)>& visit) {
  const auto files = log_files(directory_or_file);
  LineReader reader(files);
  LineReader::Line line;
  while (reader.next(line)) {
    auto record = nlohmann::json::parse(line.text, nullptr, false);
    if (record.is_discarded() || !record.is_object()) {
      throw Error(ErrorCode::invalid_argument, "audit log " + files[line.file_index].string() +
                                                   " line " + std::to_string(line.number) +
                                                   " is not a JSON record");
    }
    if (!visit(record)) return;
  }
}

}  // namespace m2mvault::policies
