// An SQLite VFS that forwards to the default one and counts xSync calls, so a
// test can see that a commit reached the disk (fsync) without cutting power.
#pragma once

#include <sqlite3.h>

#include <atomic>
#include <cstring>

namespace m2mvault::vault::testing {

class SyncCountingVfs {
 public:
  // Registers itself as the default VFS until destroyed.
  SyncCountingVfs() {
    real_ = sqlite3_vfs_find(nullptr);
    vfs_ = *real_;
    vfs_.szOsFile = static_cast<int>(sizeof(File)) + real_->szOsFile;
    vfs_.zName = "m2mvault-sync-counting";
    vfs_.pAppData = this;
    vfs_.xOpen = &open;
    sqlite3_vfs_register(&vfs_, 1);
  }
  ~SyncCountingVfs() {
    sqlite3_vfs_unregister(&vfs_);
    sqlite3_vfs_register(real_, 1);
  }
  SyncCountingVfs(const SyncCountingVfs&) = delete;
  SyncCountingVfs& operator=(const SyncCountingVfs&) = delete;

  // xSync calls on write-ahead logs (the commit's fsync in WAL mode).
  std::uint64_t wal_syncs() const { return wal_syncs_.load(); }

 private:
  struct File {
    sqlite3_file base;  // must be first: SQLite sees a File as a sqlite3_file
    SyncCountingVfs* owner;
    bool wal;
    sqlite3_file* real() { return reinterpret_cast<sqlite3_file*>(this + 1); }
  };
  static File* self(sqlite3_file* f) { return reinterpret_cast<File*>(f); }
  static sqlite3_file* real(sqlite3_file* f) { return self(f)->real(); }

  static int open(sqlite3_vfs* vfs, sqlite3_filename name, sqlite3_file* f, int flags,
                  int* out_flags) {
    auto* owner = static_cast<SyncCountingVfs*>(vfs->pAppData);
    auto* file = self(f);
    std::memset(file, 0, sizeof(File));
    int rc = owner->real_->xOpen(owner->real_, name, file->real(), flags, out_flags);
    if (rc != SQLITE_OK || file->real()->pMethods == nullptr) return rc;
    file->owner = owner;
    file->wal = (flags & SQLITE_OPEN_WAL) != 0;
    file->base.pMethods = &kMethods;
    return SQLITE_OK;
  }

  static int close(sqlite3_file* f) { return real(f)->pMethods->xClose(real(f)); }
  static int read(sqlite3_file* f, void* p, int n, sqlite3_int64 o) {
    return real(f)->pMethods->xRead(real(f), p, n, o);
  }
  static int write(sqlite3_file* f, const void* p, int n, sqlite3_int64 o) {
    return real(f)->pMethods->xWrite(real(f), p, n, o);
  }
  static int truncate(sqlite3_file* f, sqlite3_int64 n) {
    return real(f)->pMethods->xTruncate(real(f), n);
  }
  static int sync(sqlite3_file* f, int flags) {
    if (self(f)->wal) ++self(f)->owner->wal_syncs_;
    return real(f)->pMethods->xSync(real(f), flags);
  }
  static int size(sqlite3_file* f, sqlite3_int64* n) {
    return real(f)->pMethods->xFileSize(real(f), n);
  }
  static int lock(sqlite3_file* f, int l) { return real(f)->pMethods->xLock(real(f), l); }
  static int unlock(sqlite3_file* f, int l) { return real(f)->pMethods->xUnlock(real(f), l); }
  static int check(sqlite3_file* f, int* out) {
    return real(f)->pMethods->xCheckReservedLock(real(f), out);
  }
  static int control(sqlite3_file* f, int op, void* arg) {
    return real(f)->pMethods->xFileControl(real(f), op, arg);
  }
  static int sector(sqlite3_file* f) { return real(f)->pMethods->xSectorSize(real(f)); }
  static int device(sqlite3_file* f) { return real(f)->pMethods->xDeviceCharacteristics(real(f)); }
  static int shm_map(sqlite3_file* f, int i, int n, int e, void volatile** p) {
    return real(f)->pMethods->xShmMap(real(f), i, n, e, p);
  }
  static int shm_lock(sqlite3_file* f, int o, int n, int flags) {
    return real(f)->pMethods->xShmLock(real(f), o, n, flags);
  }
  static void shm_barrier(sqlite3_file* f) { real(f)->pMethods->xShmBarrier(real(f)); }
  static int shm_unmap(sqlite3_file* f, int del) {
    return real(f)->pMethods->xShmUnmap(real(f), del);
  }

  // Version 2: no memory-mapped I/O (xFetch), which would bypass the counting.
  static constexpr sqlite3_io_methods kMethods = {
      2,         &close,       &read,      &write,   &truncate, &sync,   &size,
      &lock,     &unlock,      &check,     &control, &sector,   &device, &shm_map,
      &shm_lock, &shm_barrier, &shm_unmap, nullptr,  nullptr};

  sqlite3_vfs* real_;
  sqlite3_vfs vfs_;
  std::atomic<std::uint64_t> wal_syncs_{0};
};

}  // namespace m2mvault::vault::testing
