// The m2mvault key reference: a small PEM file that names a vault key, so
// that programs which only read key files (nginx, curl, stunnel) use vault
// keys once openssl.cnf activates the provider. It holds no key material and
// no socket path (the provider's configuration says where the daemon is):
// it is not a secret.
//
// It is a PKCS#8 PrivateKeyInfo, because OpenSSL 3.0's file: store turns
// only PEM labels it knows into DER for the decoders, under an algorithm
// identifier of its own (a UUID OID, X.667), whose privateKey is a reference:
//
//   # m2mvault key reference to in-cse (EC); not a secret    <- optional text
//   -----BEGIN PRIVATE KEY-----
//   base64 of the DER of
//     PrivateKeyInfo ::= SEQUENCE {
//       version              INTEGER (0),
//       privateKeyAlgorithm  SEQUENCE { OBJECT IDENTIFIER
//                              2.25.325728113036865509850819109655992966607 },
//       privateKey           OCTET STRING containing the DER of
//         KeyReference ::= SEQUENCE {
//           version  INTEGER (1),
//           keyName  UTF8String (SIZE (1..1024)),  -- the vault key's name
//           keyType  UTF8String ("EC" | "RSA")     -- the OpenSSL key type
//         }
//     }
//   -----END PRIVATE KEY-----
//
// Pure functions without OpenSSL: the CLI (`m2mvault key reference`) and the
// provider's decoder link the same code.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace m2mvault::provider {

inline constexpr std::string_view kKeyReferenceOid = "2.25.325728113036865509850819109655992966607";
inline constexpr std::size_t kMaxKeyNameBytes = 1024;

enum class KeyType { ec, rsa };

// "EC" or "RSA": the OpenSSL key type name.
std::string_view to_string(KeyType type);

// The key type of a vault signing key from the `algorithm` of its key object
// ("ec-p256" -> ec, "rsa-2048" -> rsa); nullopt for anything else.
std::optional<KeyType> key_type_for_algorithm(std::string_view algorithm);

struct KeyReference {
  std::string name;
  KeyType type = KeyType::ec;
};

// The DER encoding (the PrivateKeyInfo). Precondition: 1 <= name.size() <=
// kMaxKeyNameBytes and the name has no control characters.
std::vector<std::uint8_t> encode_key_reference_der(const KeyReference& reference);

// The file: a comment line naming the key, then the PEM block (64-character
// lines, ending in a newline).
std::string encode_key_reference_pem(const KeyReference& reference);

// Parses the DER encoding strictly (exact structure, minimal lengths, nothing
// after it); nullopt if `der` is not a key reference.
std::optional<KeyReference> decode_key_reference_der(std::span<const std::uint8_t> der);

// Finds the first PRIVATE KEY block in `text` and decodes it; nullopt if
// there is none or it is not a key reference.
std::optional<KeyReference> decode_key_reference_pem(std::string_view text);

}  // namespace m2mvault::provider
