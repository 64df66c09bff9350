#include "hsm/pkcs11/token_objects.h"

#include <algorithm>
#include <array>

#include "hsm/pkcs11/ck_util.h"
#include "hsm/pkcs11/pkcs11_backend.h"
#include "hsm/pkcs11/public_key.h"
#include "hsm/pkcs11/wrapped_secret.h"

namespace m2mvault::hsm::pkcs11 {

void check_object_id(std::span<const std::uint8_t> object_id) {
  if (object_id.empty() || object_id.size() > 64) {
    throw Error(Failure::invalid_argument, "object id must be 1..64 bytes");
  }
}

std::vector<CK_OBJECT_HANDLE> find_vault_objects(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session,
                                                 std::span<const std::uint8_t> object_id,
                                                 CK_OBJECT_CLASS object_class) {
  CK_BBOOL yes = CK_TRUE;
  std::vector<CK_ATTRIBUTE> templ{attr_bytes(CKA_ID, object_id), attr_string(CKA_LABEL, kKeyLabel),
                                  attr(CKA_TOKEN, yes)};
  if (object_class != CK_UNAVAILABLE_INFORMATION) templ.push_back(attr(CKA_CLASS, object_class));
  return find_objects(fn, session, templ);
}

std::vector<CK_OBJECT_HANDLE> find_referenced_objects(CK_FUNCTION_LIST* fn,
                                                      CK_SESSION_HANDLE session,
                                                      const TokenKeyRef& ref,
                                                      CK_OBJECT_CLASS object_class) {
  if (ref.object_id.empty() && ref.object_label.empty()) {
    throw Error(Failure::invalid_argument, "key reference names neither an id nor a label");
  }
  std::vector<CK_ATTRIBUTE> templ{attr(CKA_CLASS, object_class)};
  if (!ref.object_id.empty()) templ.push_back(attr_bytes(CKA_ID, ref.object_id));
  if (!ref.object_label.empty()) templ.push_back(attr_string(CKA_LABEL, ref.object_label));
  return find_objects(fn, session, templ);
}

std::vector<Bytes> list_vault_ids(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session) {
  CK_BBOOL yes = CK_TRUE;
  std::array templ{attr_string(CKA_LABEL, kKeyLabel), attr(CKA_TOKEN, yes)};
  std::vector<Bytes> ids;
  for (CK_OBJECT_HANDLE object : find_objects(fn, session, templ)) {
    Bytes id = get_bytes_attribute(fn, session, object, CKA_ID);
    if (!id.empty() && std::find(ids.begin(), ids.end(), id) == ids.end()) {
      ids.push_back(std::move(id));
    }
  }
  return ids;
}

void create_secret_object(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session,
                          std::span<const std::uint8_t> object_id,
                          std::span<const std::uint8_t> secret) {
  check_object_id(object_id);
  const SecureBuffer key = hmac_equivalent_key(secret);
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE type = CKK_GENERIC_SECRET;
  CK_BBOOL yes = CK_TRUE;
  CK_BBOOL no = CK_FALSE;
  std::array templ{attr(CKA_CLASS, cls),          attr(CKA_KEY_TYPE, type),
                   attr(CKA_TOKEN, yes),          attr(CKA_PRIVATE, yes),
                   attr(CKA_SENSITIVE, yes),      attr(CKA_EXTRACTABLE, no),
                   attr(CKA_SIGN, yes),           attr(CKA_VERIFY, no),
                   attr(CKA_DERIVE, no),          attr_string(CKA_LABEL, kKeyLabel),
                   attr_bytes(CKA_ID, object_id), attr_bytes(CKA_VALUE, key.span())};
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
  check(fn->C_CreateObject(session, templ.data(), templ.size(), &handle), "C_CreateObject");
}

Bytes generate_key_pair(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session,
                        std::span<const std::uint8_t> object_id, SigningAlgorithm algorithm) {
  check_object_id(object_id);
  CK_BBOOL yes = CK_TRUE;
  CK_BBOOL no = CK_FALSE;
  CK_ULONG modulus_bits = 2048;
  std::array<std::uint8_t, 3> public_exponent{0x01, 0x00, 0x01};
  std::vector<CK_ATTRIBUTE> public_templ{attr(CKA_TOKEN, yes), attr(CKA_PRIVATE, no),
                                         attr(CKA_VERIFY, yes), attr_bytes(CKA_ID, object_id),
                                         attr_string(CKA_LABEL, kKeyLabel)};
  std::vector<CK_ATTRIBUTE> private_templ{
      attr(CKA_TOKEN, yes),      attr(CKA_PRIVATE, yes),        attr(CKA_SENSITIVE, yes),
      attr(CKA_EXTRACTABLE, no), attr(CKA_SIGN, yes),           attr(CKA_DECRYPT, no),
      attr(CKA_DERIVE, no),      attr_bytes(CKA_ID, object_id), attr_string(CKA_LABEL, kKeyLabel)};
  CK_MECHANISM mechanism{};
  if (algorithm == SigningAlgorithm::ec_p256) {
    mechanism.mechanism = CKM_EC_KEY_PAIR_GEN;
    public_templ.push_back(attr_bytes(CKA_EC_PARAMS, kP256Params));
  } else if (algorithm == SigningAlgorithm::rsa_2048) {
    mechanism.mechanism = CKM_RSA_PKCS_KEY_PAIR_GEN;
    public_templ.push_back(attr(CKA_MODULUS_BITS, modulus_bits));
    public_templ.push_back(attr_bytes(CKA_PUBLIC_EXPONENT, public_exponent));
  } else {
    throw Error(Failure::invalid_argument, "unknown signing algorithm");
  }
  CK_OBJECT_HANDLE public_key = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE private_key = CK_INVALID_HANDLE;
  check(
      fn->C_GenerateKeyPair(session, &mechanism, public_templ.data(), public_templ.size(),
                            private_templ.data(), private_templ.size(), &public_key, &private_key),
      "C_GenerateKeyPair");
  try {
    return read_public_key(fn, session, public_key).spki;
  } catch (...) {
    fn->C_DestroyObject(session, private_key);
    fn->C_DestroyObject(session, public_key);
    throw;
  }
}

}  // namespace m2mvault::hsm::pkcs11
