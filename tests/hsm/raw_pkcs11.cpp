#include "tests/hsm/raw_pkcs11.h"

#include <cstring>

namespace m2mvault::hsm::testing {

RawSession::RawSession(const std::string& module, const std::string& token_label,
                       const std::string& pin) {
  library_ = dlopen(module.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (library_ == nullptr) throw std::runtime_error("dlopen failed");
  auto get = reinterpret_cast<CK_C_GetFunctionList>(dlsym(library_, "C_GetFunctionList"));
  if (get == nullptr || get(&fn_) != CKR_OK) throw std::runtime_error("no function list");
  const CK_RV init = fn_->C_Initialize(nullptr);
  if (init != CKR_OK && init != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
    throw std::runtime_error("C_Initialize failed");
  }
  CK_ULONG count = 0;
  fn_->C_GetSlotList(CK_TRUE, nullptr, &count);
  std::vector<CK_SLOT_ID> slots(count);
  fn_->C_GetSlotList(CK_TRUE, slots.data(), &count);
  for (CK_SLOT_ID slot : slots) {
    CK_TOKEN_INFO info{};
    fn_->C_GetTokenInfo(slot, &info);
    std::string label(reinterpret_cast<const char*>(info.label), sizeof info.label);
    label.erase(label.find_last_not_of(' ') + 1);
    if (label != token_label) continue;
    if (fn_->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr,
                           &session_) != CKR_OK) {
      throw std::runtime_error("C_OpenSession failed");
    }
    login_rv_ =
        fn_->C_Login(session_, CKU_USER,
                     reinterpret_cast<CK_UTF8CHAR*>(const_cast<char*>(pin.data())), pin.size());
    return;
  }
  throw std::runtime_error("token not found: " + token_label);
}

RawSession::~RawSession() {
  if (session_ != CK_INVALID_HANDLE) fn_->C_CloseSession(session_);
  // The module stays loaded and initialized: the backend shares it.
}

std::vector<CK_OBJECT_HANDLE> RawSession::find(std::vector<CK_ATTRIBUTE> templ) {
  std::vector<CK_OBJECT_HANDLE> found;
  if (fn_->C_FindObjectsInit(session_, templ.data(), templ.size()) != CKR_OK) {
    throw std::runtime_error("C_FindObjectsInit failed");
  }
  CK_OBJECT_HANDLE batch[64];
  CK_ULONG n = 0;
  while (fn_->C_FindObjects(session_, batch, 64, &n) == CKR_OK && n > 0) {
    found.insert(found.end(), batch, batch + n);
  }
  fn_->C_FindObjectsFinal(session_);
  return found;
}

std::size_t RawSession::count_token_objects() {
  CK_BBOOL yes = CK_TRUE;
  return find({CK_ATTRIBUTE{CKA_TOKEN, &yes, sizeof yes}}).size();
}

CK_RV RawSession::read_value_rv(CK_OBJECT_HANDLE object) {
  std::vector<std::uint8_t> buffer(4096);
  CK_ATTRIBUTE query{CKA_VALUE, buffer.data(), buffer.size()};
  return fn_->C_GetAttributeValue(session_, object, &query, 1);
}

CK_OBJECT_HANDLE RawSession::make_wrapping_key() {
  CK_MECHANISM mechanism{CKM_AES_KEY_GEN, nullptr, 0};
  CK_ULONG length = 32;
  CK_BBOOL yes = CK_TRUE;
  CK_BBOOL no = CK_FALSE;
  std::vector<CK_ATTRIBUTE> templ{{CKA_VALUE_LEN, &length, sizeof length},
                                  {CKA_TOKEN, &no, sizeof no},
                                  {CKA_EXTRACTABLE, &yes, sizeof yes},
                                  {CKA_WRAP, &yes, sizeof yes},
                                  {CKA_UNWRAP, &yes, sizeof yes}};
  CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
  if (fn_->C_GenerateKey(session_, &mechanism, templ.data(), templ.size(), &key) != CKR_OK) {
    throw std::runtime_error("C_GenerateKey failed");
  }
  return key;
}

CK_RV RawSession::wrap_rv(CK_OBJECT_HANDLE wrapping_key, CK_OBJECT_HANDLE object) {
  CK_MECHANISM mechanism{CKM_AES_KEY_WRAP_PAD, nullptr, 0};
  std::vector<std::uint8_t> out(8192);
  CK_ULONG size = out.size();
  return fn_->C_WrapKey(session_, &mechanism, wrapping_key, object, out.data(), &size);
}

}  // namespace m2mvault::hsm::testing
