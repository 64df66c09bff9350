// Small helpers shared by the PKCS#11 backend: return-code names, the one way
// a failed call becomes an hsm::Error, token labels, object search.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "hsm/error.h"
#include "hsm/pkcs11/ck.h"

namespace m2mvault::hsm::pkcs11 {

// "CKR_KEY_SIZE_RANGE", or "CKR_0x…" for codes without a name.
std::string rv_name(CK_RV rv);

// Throws Error(failure, "<function> failed: <CKR_…>").
[[noreturn]] void fail_call(Failure failure, std::string_view function, CK_RV rv);

// The one visible check for every fallible PKCS#11 call.
inline void check(CK_RV rv, std::string_view function, Failure failure = Failure::internal) {
  if (rv != CKR_OK) fail_call(failure, function, rv);
}

std::string to_hex(std::span<const std::uint8_t> bytes);

// A CK_TOKEN_INFO label (32 bytes, blank padded) without its padding.
std::string token_label(const CK_TOKEN_INFO& info);

// `label` blank padded to the 32 bytes C_InitToken expects.
std::vector<CK_UTF8CHAR> padded_token_label(std::string_view label);

// An attribute pointing at `value` (which must outlive the call).
template <typename T>
CK_ATTRIBUTE attr(CK_ATTRIBUTE_TYPE type, T& value) {
  return CK_ATTRIBUTE{type, &value, sizeof(T)};
}
CK_ATTRIBUTE attr_bytes(CK_ATTRIBUTE_TYPE type, std::span<const std::uint8_t> bytes);
CK_ATTRIBUTE attr_string(CK_ATTRIBUTE_TYPE type, std::string_view text);

// Handles of every object of `session` matching `templ`.
std::vector<CK_OBJECT_HANDLE> find_objects(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session,
                                           std::span<CK_ATTRIBUTE> templ);

// A variable-length attribute of an object (CKA_ID, CKA_EC_POINT, …).
std::vector<std::uint8_t> get_bytes_attribute(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session,
                                              CK_OBJECT_HANDLE object, CK_ATTRIBUTE_TYPE type);

// A CK_ULONG attribute (CKA_KEY_TYPE, CKA_CLASS, …).
CK_ULONG get_ulong_attribute(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session,
                             CK_OBJECT_HANDLE object, CK_ATTRIBUTE_TYPE type);

}  // namespace m2mvault::hsm::pkcs11
