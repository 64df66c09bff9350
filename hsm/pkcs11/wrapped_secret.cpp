#include "hsm/pkcs11/wrapped_secret.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "hsm/pkcs11/ck_util.h"

namespace m2mvault::hsm::pkcs11 {
namespace {

constexpr std::array<std::uint8_t, 4> kMagic{'M', '2', 'W', '1'};
constexpr std::size_t kHeaderSize = kMagic.size() + 2;

// Destroys a session object when the scope ends.
class SessionObject {
 public:
  SessionObject(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object)
      : fn_(fn), session_(session), object_(object) {}
  SessionObject(const SessionObject&) = delete;
  SessionObject& operator=(const SessionObject&) = delete;
  ~SessionObject() {
    if (object_ != CK_INVALID_HANDLE) fn_->C_DestroyObject(session_, object_);
  }
  CK_OBJECT_HANDLE handle() const noexcept { return object_; }
  CK_OBJECT_HANDLE release() noexcept { return std::exchange(object_, CK_INVALID_HANDLE); }

 private:
  CK_FUNCTION_LIST* fn_;
  CK_SESSION_HANDLE session_;
  CK_OBJECT_HANDLE object_;
};

}  // namespace

SecureBuffer hmac_equivalent_key(std::span<const std::uint8_t> secret) {
  if (secret.empty() || secret.size() > kMaxSecretSize) {
    throw Error(Failure::invalid_argument, "secret length must be 1..1024 bytes");
  }
  SecureBuffer key(std::max(secret.size(), kMinHmacKeySize));  // zero-filled
  std::memcpy(key.data(), secret.data(), secret.size());
  return key;
}

Bytes wrap_secret_with(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE kek,
                       std::span<const std::uint8_t> secret, std::span<const std::uint8_t> mac_data,
                       Hmac* mac_out) {
  const SecureBuffer key = hmac_equivalent_key(secret);
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE type = CKK_GENERIC_SECRET;
  CK_BBOOL yes = CK_TRUE;
  CK_BBOOL no = CK_FALSE;
  std::array templ{attr(CKA_CLASS, cls),    attr(CKA_KEY_TYPE, type),
                   attr(CKA_TOKEN, no),     attr(CKA_PRIVATE, yes),
                   attr(CKA_SENSITIVE, no), attr(CKA_EXTRACTABLE, yes),
                   attr(CKA_SIGN, yes),     attr_bytes(CKA_VALUE, key.span())};
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
  check(fn->C_CreateObject(session, templ.data(), templ.size(), &handle), "C_CreateObject");
  const SessionObject object(fn, session, handle);
  if (mac_out != nullptr) *mac_out = token_hmac(fn, session, object.handle(), mac_data);

  CK_MECHANISM mechanism{CKM_AES_KEY_WRAP_PAD, nullptr, 0};
  // Key wrap with padding adds at most 15 bytes (8 of integrity, <8 of padding).
  Bytes blob(kHeaderSize + key.size() + 16);
  CK_ULONG wrapped_size = blob.size() - kHeaderSize;
  check(fn->C_WrapKey(session, &mechanism, kek, object.handle(), blob.data() + kHeaderSize,
                      &wrapped_size),
        "C_WrapKey");
  blob.resize(kHeaderSize + wrapped_size);
  std::copy(kMagic.begin(), kMagic.end(), blob.begin());
  blob[4] = static_cast<std::uint8_t>(secret.size() >> 8);
  blob[5] = static_cast<std::uint8_t>(secret.size() & 0xff);
  return blob;
}

ParsedBlob parse_blob(std::span<const std::uint8_t> blob) {
  if (blob.size() < kHeaderSize + 16 || !std::equal(kMagic.begin(), kMagic.end(), blob.begin())) {
    throw Error(Failure::invalid_argument, "not a wrapped-secret blob");
  }
  const std::size_t length = (std::size_t{blob[4]} << 8) | blob[5];
  if (length == 0 || length > kMaxSecretSize) {
    throw Error(Failure::invalid_argument, "wrapped-secret blob has a bad length");
  }
  return ParsedBlob{length, blob.subspan(kHeaderSize)};
}

CK_OBJECT_HANDLE unwrap_blob(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE kek,
                             const ParsedBlob& blob) {
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE type = CKK_GENERIC_SECRET;
  CK_BBOOL yes = CK_TRUE;
  CK_BBOOL no = CK_FALSE;
  // Readable: unwrap_secret needs the bytes for a handshake. PKCS#11 hides
  // CKA_VALUE of non-extractable objects too, so it must stay extractable;
  // it is a session object, visible to this process only.
  std::array templ{attr(CKA_CLASS, cls),   attr(CKA_KEY_TYPE, type), attr(CKA_TOKEN, no),
                   attr(CKA_PRIVATE, yes), attr(CKA_SENSITIVE, no),  attr(CKA_EXTRACTABLE, yes),
                   attr(CKA_SIGN, yes),    attr(CKA_VERIFY, no)};
  CK_MECHANISM mechanism{CKM_AES_KEY_WRAP_PAD, nullptr, 0};
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
  const CK_RV rv =
      fn->C_UnwrapKey(session, &mechanism, kek, const_cast<std::uint8_t*>(blob.wrapped.data()),
                      blob.wrapped.size(), templ.data(), templ.size(), &handle);
  // SoftHSM2 answers a failed integrity check (damaged blob, other KEK) with
  // CKR_GENERAL_ERROR.
  if (rv == CKR_WRAPPED_KEY_INVALID || rv == CKR_WRAPPED_KEY_LEN_RANGE ||
      rv == CKR_ENCRYPTED_DATA_INVALID || rv == CKR_ENCRYPTED_DATA_LEN_RANGE ||
      rv == CKR_GENERAL_ERROR) {
    fail_call(Failure::invalid_argument, "C_UnwrapKey", rv);
  }
  check(rv, "C_UnwrapKey");
  SessionObject unwrapped(fn, session, handle);

  const std::size_t expected = std::max(blob.length, kMinHmacKeySize);
  // The size of CKA_VALUE (SoftHSM2 leaves CKA_VALUE_LEN of unwrapped keys unset).
  CK_ATTRIBUTE query{CKA_VALUE, nullptr, 0};
  check(fn->C_GetAttributeValue(session, handle, &query, 1), "C_GetAttributeValue");
  const std::size_t actual = query.ulValueLen;
  if (actual < expected) {
    throw Error(Failure::invalid_argument, "wrapped-secret blob is shorter than its header says");
  }
  // SoftHSM2 2.6 leaves the RFC 5649 padding on an unwrapped key (its length
  // rounded up to 8). Zero bytes after a key of at most 64 bytes do not change
  // its HMAC; after a longer key they do, so that key is recreated exactly.
  if (actual > expected && expected > 64) {
    const SecureBuffer value = read_secret(fn, session, handle, expected);
    std::array exact{
        attr(CKA_CLASS, cls),   attr(CKA_KEY_TYPE, type), attr(CKA_TOKEN, no),
        attr(CKA_PRIVATE, yes), attr(CKA_SENSITIVE, no),  attr(CKA_EXTRACTABLE, yes),
        attr(CKA_SIGN, yes),    attr(CKA_VERIFY, no),     attr_bytes(CKA_VALUE, value.span())};
    CK_OBJECT_HANDLE recreated = CK_INVALID_HANDLE;
    check(fn->C_CreateObject(session, exact.data(), exact.size(), &recreated), "C_CreateObject");
    return recreated;  // `unwrapped` (the padded one) is destroyed on return
  }
  return unwrapped.release();
}

SecureBuffer read_secret(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object,
                         std::size_t length) {
  CK_ATTRIBUTE query{CKA_VALUE, nullptr, 0};
  check(fn->C_GetAttributeValue(session, object, &query, 1), "C_GetAttributeValue");
  SecureBuffer value(query.ulValueLen);
  query.pValue = value.data();
  check(fn->C_GetAttributeValue(session, object, &query, 1), "C_GetAttributeValue");
  if (query.ulValueLen < length) {
    throw Error(Failure::internal, "unwrapped secret is shorter than its blob says");
  }
  value.truncate(length);
  return value;
}

Hmac token_hmac(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE key,
                std::span<const std::uint8_t> data) {
  CK_MECHANISM mechanism{CKM_SHA256_HMAC, nullptr, 0};
  check(fn->C_SignInit(session, &mechanism, key), "C_SignInit");
  Hmac mac{};
  CK_ULONG size = mac.size();
  std::uint8_t nothing = 0;  // some modules reject a null pointer even for no data
  auto* input = data.empty() ? &nothing : const_cast<std::uint8_t*>(data.data());
  check(fn->C_Sign(session, input, data.size(), mac.data(), &size), "C_Sign");
  if (size != mac.size()) throw Error(Failure::internal, "C_Sign returned a short HMAC");
  return mac;
}

}  // namespace m2mvault::hsm::pkcs11
