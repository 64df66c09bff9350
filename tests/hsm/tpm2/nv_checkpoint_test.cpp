// The audit checkpoint in TPM NV: it survives a TPM reset and a daemon
// restart, leaves no file, and a record written back or written without the
// audit key is reported, never returned. The attacker's moves are made with a
// bare ESAPI connection, as tpm2_nvwrite / tpm2_nvundefine would make them.
#include "hsm/tpm2/nv_checkpoint.h"

#include <tss2/tss2_esys.h>
#include <tss2/tss2_tctildr.h>

#include <fstream>
#include <memory>
#include <vector>

#include "hsm/tpm2/tpm2_backend.h"
#include "tests/hsm/tpm2/tpm2_test_support.h"

namespace m2mvault::hsm::tpm2::testing {
namespace {

namespace fs = std::filesystem;

constexpr std::uint32_t kRecord = kDefaultAuditNvIndex;
constexpr std::uint32_t kCounter = kDefaultAuditNvIndex + 1;

// A checkpoint as the vault encodes it: big-endian sequence number, tag.
Bytes checkpoint(std::uint64_t seq) {
  Bytes out;
  for (int shift = 56; shift >= 0; shift -= 8)
    out.push_back(static_cast<std::uint8_t>(seq >> shift));
  const Bytes tag = random_bytes(32);
  out.insert(out.end(), tag.begin(), tag.end());
  return out;
}

// Most tests here read and write NV from a second client (RawNv) while the
// backend is open, so the backend uses tpm2-tss's swtpm TCTI, which holds no
// connection between commands (swtpm serves one connection at a time).
std::unique_ptr<SecureElement> open_on(const Swtpm& swtpm, const TempDir& state,
                                       std::uint32_t nv_index = kDefaultAuditNvIndex) {
  return open(BackendConfig{swtpm.shared_config(), state.path(), nv_index});
}

// The Error an operation throws (failure and message); fails the test when
// it throws none.
template <typename Call>
Error error_of(Call&& call) {
  try {
    call();
  } catch (const Error& error) {
    return error;
  }
  ADD_FAILURE() << "no error";
  return Error(Failure::internal, "");
}

// A bare ESAPI connection to the TPM (tpm2-tss's swtpm TCTI): owner-authorized
// NV commands, nothing flushed, nothing loaded.
class RawNv {
 public:
  explicit RawNv(const std::string& tcti) {
    EXPECT_EQ(Tss2_TctiLdr_Initialize(tcti.c_str(), &tcti_), TSS2_RC_SUCCESS);
    EXPECT_EQ(Esys_Initialize(&esys_, tcti_, nullptr), TSS2_RC_SUCCESS);
  }
  ~RawNv() {
    Esys_Finalize(&esys_);
    Tss2_TctiLdr_Finalize(&tcti_);
  }
  RawNv(const RawNv&) = delete;
  RawNv& operator=(const RawNv&) = delete;

  bool defined(std::uint32_t handle) {
    TPMI_YES_NO more = TPM2_NO;
    TPMS_CAPABILITY_DATA* data = nullptr;
    EXPECT_EQ(Esys_GetCapability(esys_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_HANDLES,
                                 handle, 1, &more, &data),
              TSS2_RC_SUCCESS);
    const bool found =
        data && data->data.handles.count > 0 && data->data.handles.handle[0] == handle;
    Esys_Free(data);
    return found;
  }

  TPMS_NV_PUBLIC read_public(std::uint32_t handle) {
    const ESYS_TR index = record(handle);
    TPM2B_NV_PUBLIC* found = nullptr;
    EXPECT_EQ(
        Esys_NV_ReadPublic(esys_, index, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &found, nullptr),
        TSS2_RC_SUCCESS);
    TPMS_NV_PUBLIC out{};
    if (found) out = found->nvPublic;
    Esys_Free(found);
    close(index);
    return out;
  }

  Bytes read(std::uint32_t handle) {
    const std::uint16_t size = read_public(handle).dataSize;
    const ESYS_TR index = record(handle);
    TPM2B_MAX_NV_BUFFER* data = nullptr;
    EXPECT_EQ(Esys_NV_Read(esys_, index, index, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, size,
                           0, &data),
              TSS2_RC_SUCCESS);
    Bytes out;
    if (data) out.assign(data->buffer, data->buffer + data->size);
    Esys_Free(data);
    close(index);
    return out;
  }

  std::uint64_t count(std::uint32_t handle) {
    std::uint64_t value = 0;
    for (const std::uint8_t byte : read(handle)) value = (value << 8) | byte;
    return value;
  }

  void write(std::uint32_t handle, std::span<const std::uint8_t> bytes) {
    const ESYS_TR index = record(handle);
    TPM2B_MAX_NV_BUFFER data{};
    data.size = static_cast<UINT16>(bytes.size());
    std::copy(bytes.begin(), bytes.end(), data.buffer);
    EXPECT_EQ(Esys_NV_Write(esys_, ESYS_TR_RH_OWNER, index, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                            ESYS_TR_NONE, &data, 0),
              TSS2_RC_SUCCESS);
    close(index);
  }

  void increment(std::uint32_t handle) {
    const ESYS_TR index = record(handle);
    EXPECT_EQ(Esys_NV_Increment(esys_, ESYS_TR_RH_OWNER, index, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                ESYS_TR_NONE),
              TSS2_RC_SUCCESS);
    close(index);
  }

  void define(std::uint32_t handle, TPMA_NV attributes, std::uint16_t size) {
    const TPM2B_AUTH no_auth{};
    TPM2B_NV_PUBLIC info{};
    info.nvPublic.nvIndex = handle;
    info.nvPublic.nameAlg = TPM2_ALG_SHA256;
    info.nvPublic.attributes = attributes;
    info.nvPublic.dataSize = size;
    ESYS_TR index = ESYS_TR_NONE;
    EXPECT_EQ(Esys_NV_DefineSpace(esys_, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                  ESYS_TR_NONE, &no_auth, &info, &index),
              TSS2_RC_SUCCESS);
    close(index);
  }

  // TPM2_NV_UndefineSpace with the owner's (empty) authorization: what
  // anyone who can send commands to a gateway's TPM can do.
  void undefine(std::uint32_t handle) {
    const ESYS_TR index = record(handle);
    EXPECT_EQ(Esys_NV_UndefineSpace(esys_, ESYS_TR_RH_OWNER, index, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                    ESYS_TR_NONE),
              TSS2_RC_SUCCESS);
  }

 private:
  ESYS_TR record(std::uint32_t handle) {
    ESYS_TR index = ESYS_TR_NONE;
    EXPECT_EQ(
        Esys_TR_FromTPMPublic(esys_, handle, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &index),
        TSS2_RC_SUCCESS);
    return index;
  }
  void close(ESYS_TR index) { Esys_TR_Close(esys_, &index); }

  TSS2_TCTI_CONTEXT* tcti_ = nullptr;
  ESYS_CONTEXT* esys_ = nullptr;
};

constexpr TPMA_NV kVaultAttributes =
    TPMA_NV_OWNERWRITE | TPMA_NV_OWNERREAD | TPMA_NV_AUTHREAD | TPMA_NV_NO_DA;

TEST(NvCheckpoint, RecordEncodingRoundTripsAndRefusesWhatIsNoRecord) {
  NvCheckpointRecord record{7, checkpoint(1000), {}};
  record.mac[0] = 0xAB;
  const Bytes encoded = encode_nv_checkpoint(record);
  ASSERT_EQ(encoded.size(), kNvCheckpointSize);
  const auto decoded = decode_nv_checkpoint(encoded);
  ASSERT_TRUE(decoded);
  EXPECT_EQ(decoded->count, 7u);
  EXPECT_EQ(decoded->value, record.value);
  EXPECT_EQ(decoded->mac, record.mac);
  EXPECT_FALSE(decode_nv_checkpoint(Bytes(kNvCheckpointSize, 0)));
  Bytes too_long = encoded;
  too_long[12] = 0xFF;  // the value's length
  EXPECT_FALSE(decode_nv_checkpoint(too_long));
  // The vault's 40-byte checkpoint fits with room to spare; more does not.
  EXPECT_GE(kMaxCheckpointValue, 80u);
  EXPECT_EQ(failure_of_call([&] {
              encode_nv_checkpoint({1, Bytes(kMaxCheckpointValue + 1, 1), {}});
            }),
            Failure::invalid_argument);
}

TEST(NvCheckpoint, IndicesOutsideTheOwnerRangeAreRefused) {
  const auto mac = [](std::span<const std::uint8_t>) { return Hmac{}; };
  EXPECT_EQ(failure_of_call([&] { NvAuditCheckpoint(nullptr, 0x01C00002, mac); }),
            Failure::invalid_argument);  // the EK certificate range
  EXPECT_EQ(failure_of_call([&] { NvAuditCheckpoint(nullptr, kOwnerNvLast, mac); }),
            Failure::invalid_argument);  // its counter would fall outside
  EXPECT_NO_THROW(NvAuditCheckpoint(nullptr, kOwnerNvFirst, mac));
}

TEST(NvCheckpoint, NothingIsDefinedBeforeTheFirstStore) {
  Swtpm swtpm;
  TempDir state;
  const auto se = open_on(swtpm, state);
  EXPECT_FALSE(se->load_audit_checkpoint());
  RawNv raw(swtpm.tcti());
  EXPECT_FALSE(raw.defined(kRecord));
  EXPECT_FALSE(raw.defined(kCounter));
}

TEST(NvCheckpoint, StoreThenLoadRoundTripsInNvAndWritesNoFile) {
  Swtpm swtpm;
  TempDir state;
  const auto se = open_on(swtpm, state);
  const Bytes first = checkpoint(1000);
  se->store_audit_checkpoint(first);
  EXPECT_EQ(se->load_audit_checkpoint(), first);
  const Bytes second = checkpoint(2000);
  se->store_audit_checkpoint(second);
  EXPECT_EQ(se->load_audit_checkpoint(), second);

  RawNv raw(swtpm.tcti());
  const TPMS_NV_PUBLIC record = raw.read_public(kRecord);
  EXPECT_EQ(record.dataSize, kNvCheckpointSize);
  EXPECT_EQ(record.attributes & ~TPMA_NV_WRITTEN, kVaultAttributes);
  const TPMS_NV_PUBLIC counter = raw.read_public(kCounter);
  EXPECT_EQ(counter.dataSize, 8u);
  EXPECT_EQ(counter.attributes & ~TPMA_NV_WRITTEN,
            kVaultAttributes | (TPM2_NT_COUNTER << TPMA_NV_TPM2_NT_SHIFT));
  // The state directory holds the audit key's blob and nothing else.
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(state.path())) {
    files.push_back(entry.path().filename().string());
  }
  EXPECT_EQ(files, std::vector<std::string>{kAuditKeyFile});
}

TEST(NvCheckpoint, EveryStoreAdvancesTheCounterAndTheRecordIsBoundToIt) {
  Swtpm swtpm;
  TempDir state;
  const auto se = open_on(swtpm, state);
  RawNv raw(swtpm.tcti());
  se->store_audit_checkpoint(checkpoint(1000));
  const std::uint64_t after_first = raw.count(kCounter);
  for (std::uint64_t seq = 2000; seq <= 4000; seq += 1000) {
    const Bytes value = checkpoint(seq);
    se->store_audit_checkpoint(value);
    const auto record = decode_nv_checkpoint(raw.read(kRecord));
    ASSERT_TRUE(record);
    EXPECT_EQ(record->value, value);
    EXPECT_EQ(record->count, raw.count(kCounter));
  }
  EXPECT_EQ(raw.count(kCounter), after_first + 3);
}

TEST(NvCheckpoint, TheCheckpointAlreadyStoredCostsNoNvWrite) {
  Swtpm swtpm;
  TempDir state;
  const auto se = open_on(swtpm, state);
  RawNv raw(swtpm.tcti());
  const Bytes value = checkpoint(1000);
  se->store_audit_checkpoint(value);
  const std::uint64_t count = raw.count(kCounter);
  const Bytes record = raw.read(kRecord);
  se->store_audit_checkpoint(value);  // a shutdown right after a checkpoint
  EXPECT_EQ(raw.count(kCounter), count);
  EXPECT_EQ(raw.read(kRecord), record);
}

TEST(NvCheckpoint, SurvivesTpmResetsAndABackendReopen) {
  Swtpm swtpm;
  TempDir state;
  const Bytes first = checkpoint(1000);
  const Bytes second = checkpoint(2000);
  {
    const auto se = open_on(swtpm, state);
    se->store_audit_checkpoint(first);
    swtpm.restart();  // TPM reset: the backend reconnects
    EXPECT_EQ(se->load_audit_checkpoint(), first);
    se->store_audit_checkpoint(second);
  }
  swtpm.restart();
  const auto reopened = open_on(swtpm, state);  // a daemon restart
  EXPECT_EQ(reopened->load_audit_checkpoint(), second);
  reopened->store_audit_checkpoint(checkpoint(3000));
}

TEST(NvCheckpoint, TheCheckpointNeverMovesBack) {
  Swtpm swtpm;
  TempDir state;
  const auto se = open_on(swtpm, state);
  const Bytes later = checkpoint(2000);
  se->store_audit_checkpoint(later);
  // A daemon started on a log restored from an earlier copy: its checkpoints
  // would erase the evidence that records were lost.
  const Error refused = error_of([&] { se->store_audit_checkpoint(checkpoint(1500)); });
  EXPECT_EQ(refused.failure(), Failure::invalid_argument);
  EXPECT_NE(std::string(refused.what()).find("back to an earlier record"), std::string::npos)
      << refused.what();
  EXPECT_EQ(se->load_audit_checkpoint(), later);
}

TEST(NvCheckpoint, AnEarlierRecordWrittenBackIsReportedAsARollback) {
  Swtpm swtpm;
  TempDir state;
  const auto se = open_on(swtpm, state);
  RawNv raw(swtpm.tcti());
  se->store_audit_checkpoint(checkpoint(1000));
  const Bytes earlier = raw.read(kRecord);  // genuine, MAC'd by the audit key
  se->store_audit_checkpoint(checkpoint(2000));
  se->store_audit_checkpoint(checkpoint(3000));
  raw.write(kRecord, earlier);  // owner auth is empty: anyone can
  const Error error = error_of([&] { se->load_audit_checkpoint(); });
  EXPECT_EQ(error.failure(), Failure::unavailable);
  EXPECT_NE(std::string(error.what()).find("rolled back"), std::string::npos) << error.what();
  // Nor does the next store paper over it: the evidence stays.
  EXPECT_EQ(failure_of_call([&] { se->store_audit_checkpoint(checkpoint(4000)); }),
            Failure::unavailable);
  EXPECT_EQ(raw.read(kRecord), earlier);
}

TEST(NvCheckpoint, ARecordWrittenWithoutTheAuditKeyIsRefused) {
  Swtpm swtpm;
  TempDir state;
  const auto se = open_on(swtpm, state);
  RawNv raw(swtpm.tcti());
  se->store_audit_checkpoint(checkpoint(1000));
  // Bound to the right count, but with a MAC made without the audit key.
  NvCheckpointRecord forged{raw.count(kCounter), checkpoint(900), {}};
  forged.mac =
      openssl_hmac(random_bytes(32), nv_checkpoint_mac_input(kRecord, forged.count, forged.value));
  raw.write(kRecord, encode_nv_checkpoint(forged));
  const Error error = error_of([&] { se->load_audit_checkpoint(); });
  EXPECT_EQ(error.failure(), Failure::unavailable);
  EXPECT_NE(std::string(error.what()).find("not written with this vault's audit key"),
            std::string::npos)
      << error.what();
  // Garbage is refused alike.
  raw.write(kRecord, random_bytes(kNvCheckpointSize));
  EXPECT_EQ(failure_of_call([&] { se->load_audit_checkpoint(); }), Failure::unavailable);
}

// A crash between writing the record and advancing the counter leaves the
// record one count ahead: it is the newest, and no false alarm.
TEST(NvCheckpoint, ARecordOneAheadOfItsCounterIsTheNewest) {
  Swtpm swtpm;
  TempDir state;
  const auto se = open_on(swtpm, state);
  RawNv raw(swtpm.tcti());
  se->store_audit_checkpoint(checkpoint(1000));
  const std::uint64_t count = raw.count(kCounter);
  NvCheckpointRecord written{count + 1, checkpoint(2000), {}};
  written.mac = se->audit_mac(nv_checkpoint_mac_input(kRecord, written.count, written.value));
  raw.write(kRecord, encode_nv_checkpoint(written));
  EXPECT_EQ(se->load_audit_checkpoint(), written.value);
  const Bytes next = checkpoint(3000);
  se->store_audit_checkpoint(next);
  EXPECT_EQ(se->load_audit_checkpoint(), next);
  EXPECT_EQ(decode_nv_checkpoint(raw.read(kRecord))->count, raw.count(kCounter));
}

// What the owner can do (its authorization is empty on swtpm and most
// gateways): undefine both indices. The checkpoint is then gone — the one
// rollback this design cannot see — but a counter defined again starts
// above the old one, so an earlier record put back into new indices is
// still a rollback.
TEST(NvCheckpoint, UndefiningTheIndicesLosesTheCheckpointButNeverSetsTheCounterBack) {
  Swtpm swtpm;
  TempDir state;
  const auto se = open_on(swtpm, state);
  RawNv raw(swtpm.tcti());
  se->store_audit_checkpoint(checkpoint(1000));
  const Bytes earlier = raw.read(kRecord);
  se->store_audit_checkpoint(checkpoint(2000));
  const std::uint64_t count = raw.count(kCounter);

  raw.undefine(kRecord);
  raw.undefine(kCounter);
  EXPECT_FALSE(se->load_audit_checkpoint());

  raw.define(kCounter, kVaultAttributes | (TPM2_NT_COUNTER << TPMA_NV_TPM2_NT_SHIFT), 8);
  raw.increment(kCounter);
  EXPECT_GT(raw.count(kCounter), count);
  raw.define(kRecord, kVaultAttributes, kNvCheckpointSize);
  raw.write(kRecord, earlier);
  const Error error = error_of([&] { se->load_audit_checkpoint(); });
  EXPECT_NE(std::string(error.what()).find("rolled back"), std::string::npos) << error.what();

  // Only the counter undefined: the record cannot be checked.
  raw.undefine(kCounter);
  const Error gone = error_of([&] { se->load_audit_checkpoint(); });
  EXPECT_EQ(gone.failure(), Failure::unavailable);
  EXPECT_NE(std::string(gone.what()).find("is gone"), std::string::npos) << gone.what();
}

TEST(NvCheckpoint, TheVaultOfAnotherStateDirectoryOnTheSameTpmIsToldApart) {
  Swtpm swtpm;
  TempDir first_state;
  TempDir second_state;
  { open_on(swtpm, first_state)->store_audit_checkpoint(checkpoint(5000)); }
  {
    // A state directory initialized again: a new audit key, the old record.
    const auto se = open_on(swtpm, second_state);
    const Error error = error_of([&] { se->load_audit_checkpoint(); });
    EXPECT_EQ(error.failure(), Failure::unavailable);
    EXPECT_NE(std::string(error.what()).find("another state directory"), std::string::npos)
        << error.what();
    EXPECT_NE(std::string(error.what()).find("tpm2_nvundefine -C o 0x01834d30"), std::string::npos)
        << error.what();
    EXPECT_EQ(failure_of_call([&] { se->store_audit_checkpoint(checkpoint(1)); }),
              Failure::unavailable);
  }
  // Its own pair of indices, as [tpm2] audit_nv_index gives it.
  const auto se = open_on(swtpm, second_state, 0x01834D40);
  EXPECT_FALSE(se->load_audit_checkpoint());
  const Bytes value = checkpoint(1);
  se->store_audit_checkpoint(value);
  EXPECT_EQ(se->load_audit_checkpoint(), value);
}

TEST(NvCheckpoint, AnIndexSomethingElseDefinedIsLeftAlone) {
  Swtpm swtpm;
  TempDir state;
  RawNv raw(swtpm.tcti());
  raw.define(kRecord, TPMA_NV_OWNERWRITE | TPMA_NV_AUTHREAD, 64);
  const Bytes theirs = random_bytes(64);
  raw.write(kRecord, theirs);
  const auto se = open_on(swtpm, state);
  const Error error = error_of([&] { se->store_audit_checkpoint(checkpoint(1000)); });
  EXPECT_EQ(error.failure(), Failure::unavailable);
  EXPECT_NE(std::string(error.what()).find("defined by something else"), std::string::npos)
      << error.what();
  EXPECT_EQ(failure_of_call([&] { se->load_audit_checkpoint(); }), Failure::unavailable);
  EXPECT_EQ(raw.read(kRecord), theirs);
}

TEST(NvCheckpoint, TheCheckpointFileOfAnEarlierVersionMovesToNvAtTheFirstStore) {
  Swtpm swtpm;
  TempDir state;
  const fs::path legacy = state.path() / kLegacyAuditCheckpointFile;
  const Bytes old_value = checkpoint(1000);
  {
    std::ofstream out(legacy, std::ios::binary);
    out.write(reinterpret_cast<const char*>(old_value.data()),
              static_cast<std::streamsize>(old_value.size()));
  }
  const auto se = open_on(swtpm, state);
  EXPECT_EQ(se->load_audit_checkpoint(), old_value);  // read while NV holds none
  const Bytes value = checkpoint(1001);               // the daemon's next checkpoint
  se->store_audit_checkpoint(value);
  EXPECT_FALSE(fs::exists(legacy));
  EXPECT_EQ(se->load_audit_checkpoint(), value);
}

}  // namespace
}  // namespace m2mvault::hsm::tpm2::testing
