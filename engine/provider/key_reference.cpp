#include "engine/provider/key_reference.h"

#include <algorithm>
#include <iterator>

#include "api/encoding.h"

namespace m2mvault::provider {
namespace {

constexpr std::uint8_t kTagInteger = 0x02;
constexpr std::uint8_t kTagOctetString = 0x04;
constexpr std::uint8_t kTagOid = 0x06;
constexpr std::uint8_t kTagUtf8String = 0x0c;
constexpr std::uint8_t kTagSequence = 0x30;
constexpr std::uint8_t kReferenceVersion = 1;
constexpr std::string_view kPemLabel = "PRIVATE KEY";
// The content octets of the OBJECT IDENTIFIER kKeyReferenceOid.
constexpr std::uint8_t kOidContent[] = {0x69, 0x83, 0xea, 0x8c, 0xf9, 0xf8, 0xb6, 0xaf, 0xc2, 0x82,
                                        0x85, 0x9f, 0x84, 0xa0, 0xce, 0xdb, 0xe5, 0xd6, 0xbb, 0x4f};

void append_length(std::vector<std::uint8_t>& out, std::size_t length) {
  if (length < 0x80) {
    out.push_back(static_cast<std::uint8_t>(length));
  } else if (length <= 0xff) {
    out.push_back(0x81);
    out.push_back(static_cast<std::uint8_t>(length));
  } else {
    out.push_back(0x82);
    out.push_back(static_cast<std::uint8_t>(length >> 8));
    out.push_back(static_cast<std::uint8_t>(length));
  }
}

void append_tlv(std::vector<std::uint8_t>& out, std::uint8_t tag,
                std::span<const std::uint8_t> value) {
  out.push_back(tag);
  append_length(out, value.size());
  out.insert(out.end(), value.begin(), value.end());
}

std::span<const std::uint8_t> bytes_of(std::string_view text) {
  return {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()};
}

// Reads one TLV with `tag` from the front of `in` (minimal definite length
// only), returns its value and advances `in`.
std::optional<std::span<const std::uint8_t>> read_tlv(std::span<const std::uint8_t>& in,
                                                      std::uint8_t tag) {
  if (in.size() < 2 || in[0] != tag) return std::nullopt;
  std::size_t length = in[1];
  std::size_t header = 2;
  if (length == 0x81) {
    if (in.size() < 3 || in[2] < 0x80) return std::nullopt;
    length = in[2];
    header = 3;
  } else if (length == 0x82) {
    if (in.size() < 4 || in[2] == 0 || (in[2] << 8 | in[3]) < 0x100) return std::nullopt;
    length = static_cast<std::size_t>(in[2] << 8 | in[3]);
    header = 4;
  } else if (length >= 0x80) {
    return std::nullopt;
  }
  if (in.size() - header < length) return std::nullopt;
  auto value = in.subspan(header, length);
  in = in.subspan(header + length);
  return value;
}

std::string_view text_of(std::span<const std::uint8_t> value) {
  return {reinterpret_cast<const char*>(value.data()), value.size()};
}

}  // namespace

std::string_view to_string(KeyType type) {
  return type == KeyType::ec ? "EC" : "RSA";
}

std::optional<KeyType> key_type_for_algorithm(std::string_view algorithm) {
  if (algorithm.starts_with("ec-")) return KeyType::ec;
  if (algorithm.starts_with("rsa-")) return KeyType::rsa;
  return std::nullopt;
}

std::vector<std::uint8_t> encode_key_reference_der(const KeyReference& reference) {
  std::vector<std::uint8_t> body;
  const std::uint8_t version[] = {kReferenceVersion};
  append_tlv(body, kTagInteger, version);
  append_tlv(body, kTagUtf8String, bytes_of(reference.name));
  append_tlv(body, kTagUtf8String, bytes_of(to_string(reference.type)));
  std::vector<std::uint8_t> inner;
  append_tlv(inner, kTagSequence, body);

  std::vector<std::uint8_t> algorithm_body;
  append_tlv(algorithm_body, kTagOid, kOidContent);
  std::vector<std::uint8_t> info;
  const std::uint8_t zero[] = {0};
  append_tlv(info, kTagInteger, zero);
  append_tlv(info, kTagSequence, algorithm_body);
  append_tlv(info, kTagOctetString, inner);
  std::vector<std::uint8_t> der;
  append_tlv(der, kTagSequence, info);
  return der;
}

std::string encode_key_reference_pem(const KeyReference& reference) {
  const std::string body = encoding::base64_encode(encode_key_reference_der(reference));
  std::string pem = "# m2mvault key reference to " + reference.name + " (" +
                    std::string(to_string(reference.type)) + "); not a secret\n";
  pem += "-----BEGIN " + std::string(kPemLabel) + "-----\n";
  for (std::size_t i = 0; i < body.size(); i += 64) pem += body.substr(i, 64) + "\n";
  pem += "-----END " + std::string(kPemLabel) + "-----\n";
  return pem;
}

std::optional<KeyReference> decode_key_reference_der(std::span<const std::uint8_t> der) {
  auto info = read_tlv(der, kTagSequence);
  if (!info || !der.empty()) return std::nullopt;
  auto in = *info;
  auto pkcs8_version = read_tlv(in, kTagInteger);
  if (!pkcs8_version || pkcs8_version->size() != 1 || (*pkcs8_version)[0] != 0) return std::nullopt;
  auto algorithm = read_tlv(in, kTagSequence);
  if (!algorithm) return std::nullopt;
  auto oid = read_tlv(*algorithm, kTagOid);
  if (!oid || !algorithm->empty() ||
      !std::equal(oid->begin(), oid->end(), std::begin(kOidContent), std::end(kOidContent))) {
    return std::nullopt;
  }
  auto octets = read_tlv(in, kTagOctetString);
  if (!octets || !in.empty()) return std::nullopt;
  auto inner = *octets;
  auto sequence = read_tlv(inner, kTagSequence);
  if (!sequence || !inner.empty()) return std::nullopt;
  auto fields = *sequence;
  auto version = read_tlv(fields, kTagInteger);
  if (!version || version->size() != 1 || (*version)[0] != kReferenceVersion) return std::nullopt;
  auto name = read_tlv(fields, kTagUtf8String);
  if (!name || name->empty() || name->size() > kMaxKeyNameBytes) return std::nullopt;
  auto type = read_tlv(fields, kTagUtf8String);
  if (!type || !fields.empty()) return std::nullopt;
  KeyReference reference{std::string(text_of(*name)), KeyType::ec};
  if (text_of(*type) == "EC") {
    reference.type = KeyType::ec;
  } else if (text_of(*type) == "RSA") {
    reference.type = KeyType::rsa;
  } else {
    return std::nullopt;
  }
  for (char c : reference.name) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return std::nullopt;
  }
  return reference;
}

std::optional<KeyReference> decode_key_reference_pem(std::string_view text) {
  const std::string begin = "-----BEGIN " + std::string(kPemLabel) + "-----";
  const std::string end = "-----END " + std::string(kPemLabel) + "-----";
  const auto start = text.find(begin);
  if (start == std::string_view::npos) return std::nullopt;
  const auto body_start = start + begin.size();
  const auto stop = text.find(end, body_start);
  if (stop == std::string_view::npos) return std::nullopt;
  std::string body;
  for (char c : text.substr(body_start, stop - body_start)) {
    if (c == '\n' || c == '\r' || c == ' ' || c == '\t') continue;
    body.push_back(c);
  }
  auto der = encoding::base64_decode(body);
  if (!der) return std::nullopt;
  return decode_key_reference_der(*der);
}

}  // namespace m2mvault::provider
