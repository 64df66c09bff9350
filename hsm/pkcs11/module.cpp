#include "hsm/pkcs11/module.h"

#include <map>
#include <mutex>
#include <vector>

#include "hsm/pkcs11/ck_util.h"

namespace m2mvault::hsm::pkcs11 {

Library load_library(const std::filesystem::path& path, CK_FUNCTION_LIST** functions) {
  Library library(dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL));
  if (!library) {
    throw Error(Failure::unavailable, "cannot load PKCS#11 module " + path.string());
  }
  auto get_function_list =
      reinterpret_cast<CK_C_GetFunctionList>(dlsym(library.get(), "C_GetFunctionList"));
  if (get_function_list == nullptr) {
    throw Error(Failure::unavailable,
                "PKCS#11 module " + path.string() + " has no C_GetFunctionList");
  }
  const CK_RV rv = get_function_list(functions);
  if (rv != CKR_OK || *functions == nullptr) {
    throw Error(Failure::unavailable,
                "C_GetFunctionList of " + path.string() + " failed: " + rv_name(rv));
  }
  return library;
}

CK_RV initialize(CK_FUNCTION_LIST* functions) {
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  const CK_RV rv = functions->C_Initialize(&args);
  return rv == CKR_CRYPTOKI_ALREADY_INITIALIZED ? CKR_OK : rv;
}

std::shared_ptr<Module> Module::shared(const std::filesystem::path& path) {
  static std::mutex mutex;
  static std::map<std::filesystem::path, std::shared_ptr<Module>> modules;
  std::lock_guard lock(mutex);
  if (auto found = modules.find(path); found != modules.end()) return found->second;

  CK_FUNCTION_LIST* functions = nullptr;
  Library library = load_library(path, &functions);
  if (const CK_RV rv = initialize(functions); rv != CKR_OK) {
    throw Error(Failure::unavailable,
                "C_Initialize of PKCS#11 module " + path.string() + " failed: " + rv_name(rv));
  }
  // Never dlclosed: see the contract in module.h.
  (void)library.release();
  auto module = std::make_shared<Module>(path, functions);
  modules.emplace(path, module);
  return module;
}

std::optional<CK_SLOT_ID> Module::find_token(std::string_view label) const {
  CK_ULONG count = 0;
  check(functions_->C_GetSlotList(CK_TRUE, nullptr, &count), "C_GetSlotList", Failure::unavailable);
  std::vector<CK_SLOT_ID> slots(count);
  check(functions_->C_GetSlotList(CK_TRUE, slots.data(), &count), "C_GetSlotList",
        Failure::unavailable);
  slots.resize(count);
  for (CK_SLOT_ID slot : slots) {
    CK_TOKEN_INFO info{};
    if (functions_->C_GetTokenInfo(slot, &info) != CKR_OK) continue;
    if ((info.flags & CKF_TOKEN_INITIALIZED) != 0 && token_label(info) == label) return slot;
  }
  return std::nullopt;
}

CK_TOKEN_INFO Module::token_info(CK_SLOT_ID slot) const {
  CK_TOKEN_INFO info{};
  check(functions_->C_GetTokenInfo(slot, &info), "C_GetTokenInfo", Failure::unavailable);
  return info;
}

}  // namespace m2mvault::hsm::pkcs11
