#include "hsm/tpm2/connection.h"

#include <utility>

namespace m2mvault::hsm::tpm2 {

LoadedHandle::LoadedHandle(LoadedHandle&& other) noexcept
    : esys_(std::exchange(other.esys_, nullptr)),
      handle_(std::exchange(other.handle_, ESYS_TR_NONE)) {}

LoadedHandle& LoadedHandle::operator=(LoadedHandle&& other) noexcept {
  if (this != &other) {
    flush();
    esys_ = std::exchange(other.esys_, nullptr);
    handle_ = std::exchange(other.handle_, ESYS_TR_NONE);
  }
  return *this;
}

void LoadedHandle::flush() noexcept {
  if (handle_ == ESYS_TR_NONE) return;
  // On success ESAPI drops its record; on failure the record stays, so close it.
  if (Esys_FlushContext(esys_, handle_) != TSS2_RC_SUCCESS) Esys_TR_Close(esys_, &handle_);
  handle_ = ESYS_TR_NONE;
}

void LoadedHandle::abandon() noexcept {
  handle_ = ESYS_TR_NONE;
}

ResourceRecord::ResourceRecord(ResourceRecord&& other) noexcept
    : esys_(std::exchange(other.esys_, nullptr)),
      handle_(std::exchange(other.handle_, ESYS_TR_NONE)) {}

ResourceRecord& ResourceRecord::operator=(ResourceRecord&& other) noexcept {
  if (this != &other) {
    close();
    esys_ = std::exchange(other.esys_, nullptr);
    handle_ = std::exchange(other.handle_, ESYS_TR_NONE);
  }
  return *this;
}

void ResourceRecord::close() noexcept {
  if (handle_ != ESYS_TR_NONE) Esys_TR_Close(esys_, &handle_);
  handle_ = ESYS_TR_NONE;
}

Connection::Connection(const std::string& tcti) {
  TSS2_TCTI_CONTEXT* opened = nullptr;
  if (is_swtpm_tcti(tcti)) {
    swtpm_ = std::make_unique<SwtpmTcti>(tcti);
    opened = swtpm_->context();
  } else {
    check(Tss2_TctiLdr_Initialize(tcti.c_str(), &opened),
          ("Tss2_TctiLdr_Initialize(\"" + tcti + "\")").c_str(), Failure::unavailable);
    loaded_tcti_.reset(opened);
  }
  ESYS_CONTEXT* raw_esys = nullptr;
  check(Esys_Initialize(&raw_esys, opened, nullptr), "Esys_Initialize", Failure::unavailable);
  esys_.reset(raw_esys);
}

Connection::~Connection() {
  esys_.reset();  // before the TCTI it uses
  loaded_tcti_.reset();
  swtpm_.reset();
}

void Connection::startup() {
  const TSS2_RC rc = Esys_Startup(esys(), TPM2_SU_CLEAR);
  if (rc != TSS2_RC_SUCCESS && tpm_error_number(rc) != TPM2_RC_INITIALIZE) {
    fail(rc, "TPM2_Startup", Failure::unavailable);
  }
}

std::vector<TPM2_HANDLE> Connection::handles(TPM2_HANDLE first) {
  std::vector<TPM2_HANDLE> found;
  const TPM2_HANDLE range = first & TPM2_HR_RANGE_MASK;
  TPMI_YES_NO more = TPM2_YES;
  TPM2_HANDLE next = first;
  while (more == TPM2_YES) {
    TPMS_CAPABILITY_DATA* raw = nullptr;
    const TSS2_RC rc =
        Esys_GetCapability(esys(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_HANDLES, next,
                           TPM2_MAX_CAP_HANDLES, &more, &raw);
    const EsysPtr<TPMS_CAPABILITY_DATA> data(raw);
    check(rc, "TPM2_GetCapability(TPM_CAP_HANDLES)");
    const TPML_HANDLE& list = data->data.handles;
    for (std::uint32_t i = 0; i < list.count; ++i) {
      if ((list.handle[i] & TPM2_HR_RANGE_MASK) != range) {
        more = TPM2_NO;
        break;
      }
      found.push_back(list.handle[i]);
    }
    if (list.count == 0) break;
    next = list.handle[list.count - 1] + 1;
  }
  return found;
}

std::size_t Connection::flush_everything() {
  std::size_t flushed = 0;
  for (const TPM2_HANDLE first :
       {TPM2_TRANSIENT_FIRST, TPM2_LOADED_SESSION_FIRST, TPM2_ACTIVE_SESSION_FIRST}) {
    for (const TPM2_HANDLE handle : handles(first)) {
      ESYS_TR object = ESYS_TR_NONE;
      TSS2_RC rc =
          Esys_TR_FromTPMPublic(esys(), handle, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &object);
      check(rc, "Esys_TR_FromTPMPublic (flush at start)");
      rc = Esys_FlushContext(esys(), object);
      if (rc != TSS2_RC_SUCCESS) {
        Esys_TR_Close(esys(), &object);
        // A saved session listed a moment ago may have been flushed with its
        // loaded twin; anything else is a real failure.
        if (tpm_error_number(rc) != TPM2_RC_HANDLE) check(rc, "TPM2_FlushContext (flush at start)");
        continue;
      }
      ++flushed;
    }
  }
  return flushed;
}

bool Connection::holds(TPM2_HANDLE handle) {
  TPMI_YES_NO more = TPM2_NO;
  TPMS_CAPABILITY_DATA* raw = nullptr;
  const TSS2_RC rc = Esys_GetCapability(esys(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                        TPM2_CAP_HANDLES, handle, 1, &more, &raw);
  const EsysPtr<TPMS_CAPABILITY_DATA> data(raw);
  check(rc, "TPM2_GetCapability(TPM_CAP_HANDLES)");
  // The list starts at the first handle >= `handle`.
  return data->data.handles.count > 0 && data->data.handles.handle[0] == handle;
}

ResourceRecord Connection::record_of(TPM2_HANDLE handle) {
  ESYS_TR record = ESYS_TR_NONE;
  check(Esys_TR_FromTPMPublic(esys(), handle, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &record),
        "Esys_TR_FromTPMPublic");
  return ResourceRecord(esys(), record);
}

std::uint32_t Connection::fixed_property(TPM2_PT property) {
  TPMI_YES_NO more = TPM2_NO;
  TPMS_CAPABILITY_DATA* raw = nullptr;
  const TSS2_RC rc = Esys_GetCapability(esys(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                        TPM2_CAP_TPM_PROPERTIES, property, 1, &more, &raw);
  const EsysPtr<TPMS_CAPABILITY_DATA> data(raw);
  check(rc, "TPM2_GetCapability(TPM_CAP_TPM_PROPERTIES)");
  const TPML_TAGGED_TPM_PROPERTY& list = data->data.tpmProperties;
  if (list.count == 0 || list.tpmProperty[0].property != property) {
    throw Error(Failure::unsupported,
                "the TPM does not report property " + std::to_string(property));
  }
  return list.tpmProperty[0].value;
}

bool is_resource_manager(const std::string& tcti) {
  if (tcti.rfind("tabrmd", 0) == 0) return true;
  return tcti.rfind("device:", 0) == 0 && tcti.find("tpmrm") != std::string::npos;
}

}  // namespace m2mvault::hsm::tpm2
