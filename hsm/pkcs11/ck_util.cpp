#include "hsm/pkcs11/ck_util.h"

#include <cstdio>

namespace m2mvault::hsm::pkcs11 {

std::string rv_name(CK_RV rv) {
  switch (rv) {
#define M2MVAULT_CKR(name) \
  case name:               \
    return #name;
    M2MVAULT_CKR(CKR_OK)
    M2MVAULT_CKR(CKR_CANCEL)
    M2MVAULT_CKR(CKR_HOST_MEMORY)
    M2MVAULT_CKR(CKR_SLOT_ID_INVALID)
    M2MVAULT_CKR(CKR_GENERAL_ERROR)
    M2MVAULT_CKR(CKR_FUNCTION_FAILED)
    M2MVAULT_CKR(CKR_ARGUMENTS_BAD)
    M2MVAULT_CKR(CKR_ATTRIBUTE_READ_ONLY)
    M2MVAULT_CKR(CKR_ATTRIBUTE_SENSITIVE)
    M2MVAULT_CKR(CKR_ATTRIBUTE_TYPE_INVALID)
    M2MVAULT_CKR(CKR_ATTRIBUTE_VALUE_INVALID)
    M2MVAULT_CKR(CKR_DATA_INVALID)
    M2MVAULT_CKR(CKR_DATA_LEN_RANGE)
    M2MVAULT_CKR(CKR_DEVICE_ERROR)
    M2MVAULT_CKR(CKR_DEVICE_MEMORY)
    M2MVAULT_CKR(CKR_DEVICE_REMOVED)
    M2MVAULT_CKR(CKR_ENCRYPTED_DATA_INVALID)
    M2MVAULT_CKR(CKR_ENCRYPTED_DATA_LEN_RANGE)
    M2MVAULT_CKR(CKR_FUNCTION_NOT_SUPPORTED)
    M2MVAULT_CKR(CKR_KEY_HANDLE_INVALID)
    M2MVAULT_CKR(CKR_KEY_SIZE_RANGE)
    M2MVAULT_CKR(CKR_KEY_TYPE_INCONSISTENT)
    M2MVAULT_CKR(CKR_KEY_FUNCTION_NOT_PERMITTED)
    M2MVAULT_CKR(CKR_KEY_NOT_WRAPPABLE)
    M2MVAULT_CKR(CKR_KEY_UNEXTRACTABLE)
    M2MVAULT_CKR(CKR_MECHANISM_INVALID)
    M2MVAULT_CKR(CKR_MECHANISM_PARAM_INVALID)
    M2MVAULT_CKR(CKR_OBJECT_HANDLE_INVALID)
    M2MVAULT_CKR(CKR_OPERATION_ACTIVE)
    M2MVAULT_CKR(CKR_OPERATION_NOT_INITIALIZED)
    M2MVAULT_CKR(CKR_PIN_INCORRECT)
    M2MVAULT_CKR(CKR_PIN_INVALID)
    M2MVAULT_CKR(CKR_PIN_LEN_RANGE)
    M2MVAULT_CKR(CKR_PIN_EXPIRED)
    M2MVAULT_CKR(CKR_PIN_LOCKED)
    M2MVAULT_CKR(CKR_SESSION_CLOSED)
    M2MVAULT_CKR(CKR_SESSION_COUNT)
    M2MVAULT_CKR(CKR_SESSION_HANDLE_INVALID)
    M2MVAULT_CKR(CKR_SESSION_READ_ONLY)
    M2MVAULT_CKR(CKR_SIGNATURE_INVALID)
    M2MVAULT_CKR(CKR_SIGNATURE_LEN_RANGE)
    M2MVAULT_CKR(CKR_TEMPLATE_INCOMPLETE)
    M2MVAULT_CKR(CKR_TEMPLATE_INCONSISTENT)
    M2MVAULT_CKR(CKR_TOKEN_NOT_PRESENT)
    M2MVAULT_CKR(CKR_TOKEN_NOT_RECOGNIZED)
    M2MVAULT_CKR(CKR_TOKEN_WRITE_PROTECTED)
    M2MVAULT_CKR(CKR_UNWRAPPING_KEY_HANDLE_INVALID)
    M2MVAULT_CKR(CKR_UNWRAPPING_KEY_SIZE_RANGE)
    M2MVAULT_CKR(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT)
    M2MVAULT_CKR(CKR_USER_ALREADY_LOGGED_IN)
    M2MVAULT_CKR(CKR_USER_NOT_LOGGED_IN)
    M2MVAULT_CKR(CKR_USER_PIN_NOT_INITIALIZED)
    M2MVAULT_CKR(CKR_USER_TYPE_INVALID)
    M2MVAULT_CKR(CKR_USER_ANOTHER_ALREADY_LOGGED_IN)
    M2MVAULT_CKR(CKR_WRAPPED_KEY_INVALID)
    M2MVAULT_CKR(CKR_WRAPPED_KEY_LEN_RANGE)
    M2MVAULT_CKR(CKR_WRAPPING_KEY_HANDLE_INVALID)
    M2MVAULT_CKR(CKR_WRAPPING_KEY_SIZE_RANGE)
    M2MVAULT_CKR(CKR_WRAPPING_KEY_TYPE_INCONSISTENT)
    M2MVAULT_CKR(CKR_RANDOM_NO_RNG)
    M2MVAULT_CKR(CKR_BUFFER_TOO_SMALL)
    M2MVAULT_CKR(CKR_CRYPTOKI_NOT_INITIALIZED)
    M2MVAULT_CKR(CKR_CRYPTOKI_ALREADY_INITIALIZED)
    M2MVAULT_CKR(CKR_MUTEX_BAD)
    M2MVAULT_CKR(CKR_MUTEX_NOT_LOCKED)
#undef M2MVAULT_CKR
    default: {
      char text[32];
      std::snprintf(text, sizeof text, "CKR_0x%lX", static_cast<unsigned long>(rv));
      return text;
    }
  }
}

void fail_call(Failure failure, std::string_view function, CK_RV rv) {
  throw Error(failure, std::string(function) + " failed: " + rv_name(rv));
}

std::string to_hex(std::span<const std::uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string text;
  text.reserve(bytes.size() * 2);
  for (std::uint8_t b : bytes) {
    text.push_back(kDigits[b >> 4]);
    text.push_back(kDigits[b & 0xf]);
  }
  return text;
}

std::string token_label(const CK_TOKEN_INFO& info) {
  std::string label(reinterpret_cast<const char*>(info.label), sizeof info.label);
  const auto end = label.find_last_not_of(' ');
  label.erase(end == std::string::npos ? 0 : end + 1);
  return label;
}

std::vector<CK_UTF8CHAR> padded_token_label(std::string_view label) {
  std::vector<CK_UTF8CHAR> padded(32, ' ');
  for (std::size_t i = 0; i < label.size() && i < padded.size(); ++i) {
    padded[i] = static_cast<CK_UTF8CHAR>(label[i]);
  }
  return padded;
}

CK_ATTRIBUTE attr_bytes(CK_ATTRIBUTE_TYPE type, std::span<const std::uint8_t> bytes) {
  // PKCS#11 templates take non-const pointers; the module only reads them.
  return CK_ATTRIBUTE{type, const_cast<std::uint8_t*>(bytes.data()), bytes.size()};
}

CK_ATTRIBUTE attr_string(CK_ATTRIBUTE_TYPE type, std::string_view text) {
  return CK_ATTRIBUTE{type, const_cast<char*>(text.data()), text.size()};
}

std::vector<CK_OBJECT_HANDLE> find_objects(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session,
                                           std::span<CK_ATTRIBUTE> templ) {
  check(fn->C_FindObjectsInit(session, templ.data(), templ.size()), "C_FindObjectsInit");
  std::vector<CK_OBJECT_HANDLE> found;
  CK_RV rv = CKR_OK;
  for (;;) {
    CK_OBJECT_HANDLE batch[64];
    CK_ULONG count = 0;
    rv = fn->C_FindObjects(session, batch, 64, &count);
    if (rv != CKR_OK || count == 0) break;
    found.insert(found.end(), batch, batch + count);
  }
  const CK_RV final_rv = fn->C_FindObjectsFinal(session);
  check(rv, "C_FindObjects");
  check(final_rv, "C_FindObjectsFinal");
  return found;
}

std::vector<std::uint8_t> get_bytes_attribute(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session,
                                              CK_OBJECT_HANDLE object, CK_ATTRIBUTE_TYPE type) {
  CK_ATTRIBUTE query{type, nullptr, 0};
  check(fn->C_GetAttributeValue(session, object, &query, 1), "C_GetAttributeValue");
  std::vector<std::uint8_t> value(query.ulValueLen);
  query.pValue = value.data();
  check(fn->C_GetAttributeValue(session, object, &query, 1), "C_GetAttributeValue");
  value.resize(query.ulValueLen);
  return value;
}

CK_ULONG get_ulong_attribute(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session,
                             CK_OBJECT_HANDLE object, CK_ATTRIBUTE_TYPE type) {
  CK_ULONG value = 0;
  CK_ATTRIBUTE query = attr(type, value);
  check(fn->C_GetAttributeValue(session, object, &query, 1), "C_GetAttributeValue");
  return value;
}

}  // namespace m2mvault::hsm::pkcs11
