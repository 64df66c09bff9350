#include "vault/x509_util.h"

#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "api/error.h"

namespace m2mvault::vault {

std::vector<X509Ptr> read_certificates(const std::string& pem, const std::string& what) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) throw Error(ErrorCode::internal, "out of memory");
  std::vector<X509Ptr> certs;
  while (true) {
    X509* cert = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr);
    if (!cert) break;
    certs.emplace_back(cert);
  }
  const unsigned long err = ERR_peek_last_error();
  // Running out of PEM blocks is the normal end; anything else is damage.
  if (ERR_GET_LIB(err) == ERR_LIB_PEM && ERR_GET_REASON(err) == PEM_R_NO_START_LINE) {
    ERR_clear_error();
  } else if (err != 0) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("{}: {}", what, openssl_errors("not a PEM certificate")));
  }
  if (certs.empty()) {
    throw Error(ErrorCode::invalid_argument, fmt::format("{} holds no PEM certificate", what));
  }
  return certs;
}

std::string to_pem(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1)
    throw Error(ErrorCode::internal, "cannot write a certificate as PEM");
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(len));
}

std::vector<std::uint8_t> spki_of(X509* cert) {
  X509_PUBKEY* pub = X509_get_X509_PUBKEY(cert);
  unsigned char* der = nullptr;
  const int len = pub ? i2d_X509_PUBKEY(pub, &der) : -1;
  if (len <= 0) throw Error(ErrorCode::invalid_argument, "certificate without a public key");
  std::vector<std::uint8_t> out(der, der + len);
  OPENSSL_free(der);
  return out;
}

std::array<std::uint8_t, 32> key_hash(std::span<const std::uint8_t> spki) {
  std::array<std::uint8_t, 32> out{};
  unsigned int len = 0;
  if (EVP_Digest(spki.data(), spki.size(), out.data(), &len, EVP_sha256(), nullptr) != 1)
    throw Error(ErrorCode::internal, "SHA-256 failed");
  return out;
}

CertificateNames names_of(X509* cert) {
  CertificateNames names;
  auto* sans =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (sans) {
    for (int i = 0; i < sk_GENERAL_NAME_num(sans); ++i) {
      const GENERAL_NAME* name = sk_GENERAL_NAME_value(sans, i);
      if (name->type != GEN_DNS && name->type != GEN_URI) continue;
      const ASN1_IA5STRING* text = name->d.ia5;
      std::string value(reinterpret_cast<const char*>(ASN1_STRING_get0_data(text)),
                        static_cast<std::size_t>(ASN1_STRING_length(text)));
      (name->type == GEN_DNS ? names.dns : names.uri).push_back(std::move(value));
    }
    GENERAL_NAMES_free(sans);
  }
  X509_NAME* subject = X509_get_subject_name(cert);
  for (int i = -1; (i = X509_NAME_get_index_by_NID(subject, NID_commonName, i)) >= 0;) {
    ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, i));
    unsigned char* utf8 = nullptr;
    const int len = ASN1_STRING_to_UTF8(&utf8, data);
    if (len >= 0) {
      names.common_names.emplace_back(reinterpret_cast<char*>(utf8), static_cast<std::size_t>(len));
      OPENSSL_free(utf8);
    }
  }
  return names;
}

std::string openssl_errors(const std::string& fallback) {
  std::string text;
  while (const unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!text.empty()) text += "; ";
    const char* reason = ERR_reason_error_string(e);
    text += reason ? reason : buf;
  }
  return text.empty() ? fallback : text;
}

}  // namespace m2mvault::vault
