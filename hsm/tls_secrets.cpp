#include "hsm/tls_secrets.h"

#include <openssl/crypto.h>
#include <openssl/hmac.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <string>

namespace m2mvault::hsm {

std::size_t copy_psk_for_tls(SecureElement& se, const SecretRef& ref, std::span<std::uint8_t> out) {
  const auto* wrapped = std::get_if<WrappedSecretRef>(&ref);
  if (!wrapped) throw Error(Failure::unsupported, "a token secret cannot be used as a TLS PSK");
  const SecureBuffer psk = se.unwrap_secret(wrapped->blob);
  if (psk.size() > out.size()) {
    throw Error(Failure::invalid_argument, "the PSK is " + std::to_string(psk.size()) +
                                               " bytes; libssl takes at most " +
                                               std::to_string(out.size()));
  }
  std::copy(psk.span().begin(), psk.span().end(), out.begin());
  return psk.size();
}

ExportedKey ExportedKey::from_handshake(SSL* ssl, std::string_view label) {
  SecureBuffer material(kLength);
  const std::string label_text(label);
  if (SSL_export_keying_material(ssl, material.data(), material.size(), label_text.data(),
                                 label_text.size(), nullptr, 0, /*use_context=*/0) != 1) {
    throw Error(Failure::internal, "TLS key export with label '" + label_text + "' failed");
  }
  return ExportedKey(std::move(material));
}

std::array<std::uint8_t, ExportedKey::kIdLength> ExportedKey::relative_id() const {
  std::array<std::uint8_t, kIdLength> id{};
  std::copy_n(material_.data(), kIdLength, id.begin());
  return id;
}

Hmac ExportedKey::mac(std::span<const std::uint8_t> data) const {
  Hmac out{};
  unsigned int out_len = 0;
  const auto k = key();
  if (!HMAC(EVP_sha256(), k.data(), static_cast<int>(k.size()), data.data(), data.size(),
            out.data(), &out_len) ||
      out_len != out.size()) {
    throw Error(Failure::internal, "HMAC-SHA-256 over the exported key failed");
  }
  return out;
}

SecureElement::WrappedWithMac ExportedKey::wrap_with_mac(
    SecureElement& se, std::span<const std::uint8_t> mac_data) const {
  return se.wrap_secret_with_mac(key(), mac_data);
}

Bytes ExportedKey::create_token_secret(SecureElement& se,
                                       std::span<const std::uint8_t> object_id) const {
  return se.create_token_secret(object_id, key());
}

}  // namespace m2mvault::hsm
