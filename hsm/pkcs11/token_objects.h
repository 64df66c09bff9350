// Persistent token objects: Ke secrets, signing key pairs, and the lookups
// that find the vault's objects (CKA_LABEL kKeyLabel) by CKA_ID.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "hsm/pkcs11/ck.h"
#include "hsm/secure_element.h"

namespace m2mvault::hsm::pkcs11 {

// Throws Error(invalid_argument) unless `object_id` is 1..64 bytes.
void check_object_id(std::span<const std::uint8_t> object_id);

// The vault's token objects (not their session copies) with this CKA_ID; of class `object_class`
// unless it is CK_UNAVAILABLE_INFORMATION (all classes).
std::vector<CK_OBJECT_HANDLE> find_vault_objects(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session,
                                                 std::span<const std::uint8_t> object_id,
                                                 CK_OBJECT_CLASS object_class);

// Objects of `object_class` named by `ref` (CKA_ID, and CKA_LABEL when given;
// by CKA_LABEL alone when the id is empty).
std::vector<CK_OBJECT_HANDLE> find_referenced_objects(CK_FUNCTION_LIST* fn,
                                                      CK_SESSION_HANDLE session,
                                                      const TokenKeyRef& ref,
                                                      CK_OBJECT_CLASS object_class);

// Distinct CKA_IDs of every token object labelled kKeyLabel.
std::vector<Bytes> list_vault_ids(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session);

// A persistent, private, sensitive, non-extractable HMAC secret (Ke).
void create_secret_object(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session,
                          std::span<const std::uint8_t> object_id,
                          std::span<const std::uint8_t> secret);

// A persistent key pair; returns the public key's DER SubjectPublicKeyInfo.
Bytes generate_key_pair(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session,
                        std::span<const std::uint8_t> object_id, SigningAlgorithm algorithm);

}  // namespace m2mvault::hsm::pkcs11
