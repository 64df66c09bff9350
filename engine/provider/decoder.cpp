#include "engine/provider/decoder.h"

#include <openssl/core_names.h>

#include <memory>
#include <optional>
#include <string>

#include "engine/provider/key.h"
#include "engine/provider/key_reference.h"
#include "engine/provider/provider.h"

namespace m2mvault::provider {
namespace {

// A key reference is tiny; anything larger is some other file.
constexpr std::size_t kMaxInputBytes = 16 * 1024;

struct Decoding {
  const ProviderContext& provider;
};

void* newctx(void* provctx) {
  return std::make_unique<Decoding>(Decoding{*static_cast<ProviderContext*>(provctx)}).release();
}

void freectx(void* ctx) {
  std::unique_ptr<Decoding> owned(static_cast<Decoding*>(ctx));
}

// Only private keys: a reference names a private key in the vault.
int does_selection(void*, int selection) {
  return selection == 0 || (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0;
}

// The whole input, or nullopt when it cannot be read or is too large.
std::optional<std::string> read_all(const ProviderContext& provider, OSSL_CORE_BIO* in) {
  std::string data;
  char buffer[4096];
  for (;;) {
    size_t got = 0;
    if (provider.core_bio_read_ex == nullptr ||
        provider.core_bio_read_ex(in, buffer, sizeof buffer, &got) != 1 || got == 0) {
      break;
    }
    data.append(buffer, got);
    if (data.size() > kMaxInputBytes) return std::nullopt;
  }
  return data;
}

template <KeyType type>
int decode(void* ctx, OSSL_CORE_BIO* in, int selection, OSSL_CALLBACK* data_cb, void* data_cbarg,
           OSSL_PASSPHRASE_CALLBACK*, void*) {
  const ProviderContext& provider = static_cast<Decoding*>(ctx)->provider;
  if (!does_selection(nullptr, selection)) return 1;
  const auto data = read_all(provider, in);
  debug_log("decoder %s: %zu bytes", std::string(to_string(type)).c_str(), data ? data->size() : 0);
  // Not ours is not an error: the next decoder tries ("empty handed").
  if (!data) return 1;
  const auto reference =
      decode_key_reference_der({reinterpret_cast<const std::uint8_t*>(data->data()), data->size()});
  if (!reference || reference->type != type) return 1;
  auto key = load_vault_key(provider, reference->name, type);
  if (!key) return 0;  // the daemon's answer is the error to report
  return pass_key_reference(std::move(key), data_cb, data_cbarg);
}

// A vault key cannot move to another provider's keymgmt: its private half
// stays in the token. (OpenSSL then uses our keymgmt's load().)
int export_object(void*, const void*, size_t, OSSL_CALLBACK*, void*) {
  return 0;
}

}  // namespace

// One table per key type ; only decode() differs.
#define M2MVAULT_DECODER_TABLE(name, type)                                              \
  const OSSL_DISPATCH name[] = {                                                        \
      {OSSL_FUNC_DECODER_NEWCTX, reinterpret_cast<void (*)()>(newctx)},                 \
      {OSSL_FUNC_DECODER_FREECTX, reinterpret_cast<void (*)()>(freectx)},               \
      {OSSL_FUNC_DECODER_DOES_SELECTION, reinterpret_cast<void (*)()>(does_selection)}, \
      {OSSL_FUNC_DECODER_DECODE, reinterpret_cast<void (*)()>(decode<type>)},           \
      {OSSL_FUNC_DECODER_EXPORT_OBJECT, reinterpret_cast<void (*)()>(export_object)},   \
      {0, nullptr}}

M2MVAULT_DECODER_TABLE(kEcKeyReferenceDecoderFunctions, KeyType::ec);
M2MVAULT_DECODER_TABLE(kRsaKeyReferenceDecoderFunctions, KeyType::rsa);

}  // namespace m2mvault::provider
