// One connection to a TPM: the TCTI, the ESAPI context on it, and the
// housekeeping done when it opens. Not thread-safe: Tpm2 serializes use.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "hsm/tpm2/swtpm_tcti.h"
#include "hsm/tpm2/tss.h"

namespace m2mvault::hsm::tpm2 {

// A loaded TPM object or session, flushed from the TPM when destroyed.
class LoadedHandle {
 public:
  LoadedHandle() = default;
  LoadedHandle(ESYS_CONTEXT* esys, ESYS_TR handle) noexcept : esys_(esys), handle_(handle) {}
  LoadedHandle(LoadedHandle&& other) noexcept;
  LoadedHandle& operator=(LoadedHandle&& other) noexcept;
  LoadedHandle(const LoadedHandle&) = delete;
  LoadedHandle& operator=(const LoadedHandle&) = delete;
  ~LoadedHandle() { flush(); }

  ESYS_TR get() const noexcept { return handle_; }
  explicit operator bool() const noexcept { return handle_ != ESYS_TR_NONE; }

  // TPM2_FlushContext; errors are ignored (the object may be gone already).
  void flush() noexcept;
  // Forgets the handle without a TPM command, for a connection about to be
  // dropped: after a TPM reset it names nothing, and Esys_Finalize frees the
  // ESAPI's record of it.
  void abandon() noexcept;

 private:
  ESYS_CONTEXT* esys_ = nullptr;
  ESYS_TR handle_ = ESYS_TR_NONE;
};

// The ESAPI's record of a TPM resource that is never flushed (an NV index),
// made by Esys_TR_FromTPMPublic: closed (Esys_TR_Close, no TPM command) when
// destroyed.
class ResourceRecord {
 public:
  ResourceRecord() = default;
  ResourceRecord(ESYS_CONTEXT* esys, ESYS_TR handle) noexcept : esys_(esys), handle_(handle) {}
  ResourceRecord(ResourceRecord&& other) noexcept;
  ResourceRecord& operator=(ResourceRecord&& other) noexcept;
  ResourceRecord(const ResourceRecord&) = delete;
  ResourceRecord& operator=(const ResourceRecord&) = delete;
  ~ResourceRecord() { close(); }

  ESYS_TR get() const noexcept { return handle_; }

 private:
  void close() noexcept;

  ESYS_CONTEXT* esys_ = nullptr;
  ESYS_TR handle_ = ESYS_TR_NONE;
};

class Connection {
 public:
  // Opens the TCTI named by `tcti` and an ESAPI context on it. "swtpm" and
  // "swtpm:..." ("swtpm:port=N", "swtpm:host=H,port=N", "swtpm:path=P") are
  // the vault's own swtpm TCTI (swtpm_tcti.h); anything else ("device:/dev/tpmrm0",
  // "tabrmd:...", "libtss2-tcti-swtpm.so.0:port=N" for tpm2-tss's swtpm
  // TCTI) goes to Tss2_TctiLdr_Initialize. Throws TpmError(unavailable).
  explicit Connection(const std::string& tcti);
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection();

  ESYS_CONTEXT* esys() const noexcept { return esys_.get(); }

  // Connections the vault's swtpm TCTI opened for this connection; 0
  // on any other TCTI.
  std::uint64_t swtpm_connects() const noexcept { return swtpm_ ? swtpm_->connects() : 0; }

  // TPM2_Startup(CLEAR) for a TPM that was reset and not started again (a
  // bare simulator); TPM_RC_INITIALIZE (already started) is success.
  void startup();

  // Flushes every transient object, loaded session and saved session the
  // TPM holds: a process killed without cleaning up leaves them, and
  // without a resource manager they fill the TPM's few slots. Returns how
  // many were flushed. Only for a TPM this process uses exclusively.
  std::size_t flush_everything();

  // TPM2_GetCapability(TPM_CAP_HANDLES) from `first` within its handle range.
  std::vector<TPM2_HANDLE> handles(TPM2_HANDLE first);

  // True when the TPM holds `handle` (an NV index, a persistent object):
  // TPM2_GetCapability, which, unlike reading its public area, does not
  // fail (and make tpm2-tss log an error) when there is none.
  bool holds(TPM2_HANDLE handle);

  // An ESAPI record of the NV index or persistent object `handle`
  // (Esys_TR_FromTPMPublic: reads its public area from the TPM).
  ResourceRecord record_of(TPM2_HANDLE handle);

  // A fixed TPM property (TPM2_CAP_TPM_PROPERTIES), e.g. TPM2_PT_HR_TRANSIENT_MIN.
  std::uint32_t fixed_property(TPM2_PT property);

 private:
  // One of the two is set: the TCTI is ours, or tpm2-tss's through TctiLdr
  // (finalized by it; ours must not be).
  std::unique_ptr<SwtpmTcti> swtpm_;
  TctiPtr loaded_tcti_;
  EsysContextPtr esys_;  // last: finalized before the TCTI it uses
};

// True when `tcti` names a resource manager (the kernel's /dev/tpmrm*, or
// tpm2-abrmd), which gives each connection its own object space.
bool is_resource_manager(const std::string& tcti);

}  // namespace m2mvault::hsm::tpm2
