// Small owners and helpers for the X.509 work of handshakes and
// certificates. Certificates are public: nothing here touches key bytes.
#pragma once

#include <openssl/bio.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "hsm/pkcs11/openssl_ptr.h"

namespace m2mvault::vault {

using hsm::pkcs11::EvpPkeyPtr;
using hsm::pkcs11::OpenSslDeleter;

using X509Ptr = std::unique_ptr<X509, OpenSslDeleter<X509_free>>;
using X509StorePtr = std::unique_ptr<X509_STORE, OpenSslDeleter<X509_STORE_free>>;
using X509StoreCtxPtr = std::unique_ptr<X509_STORE_CTX, OpenSslDeleter<X509_STORE_CTX_free>>;
using X509ReqPtr = std::unique_ptr<X509_REQ, OpenSslDeleter<X509_REQ_free>>;
using X509NamePtr = std::unique_ptr<X509_NAME, OpenSslDeleter<X509_NAME_free>>;
using BioPtr = std::unique_ptr<BIO, OpenSslDeleter<BIO_free_all>>;
using SslCtxPtr = std::unique_ptr<SSL_CTX, OpenSslDeleter<SSL_CTX_free>>;
using SslPtr = std::unique_ptr<SSL, OpenSslDeleter<SSL_free>>;

// Every certificate in `pem`, in order. Throws Error(invalid_argument)
// naming `what` when there is none or one does not parse.
std::vector<X509Ptr> read_certificates(const std::string& pem, const std::string& what);

std::string to_pem(X509* cert);

// DER SubjectPublicKeyInfo of a certificate's key.
std::vector<std::uint8_t> spki_of(X509* cert);

// SHA-256 over a DER SubjectPublicKeyInfo (the RFC 6920 name of a key).
std::array<std::uint8_t, 32> key_hash(std::span<const std::uint8_t> spki);

// The names a Certificate Name is compared with: subjectAltName DNS and URI
// entries, then the Subject's common names.
struct CertificateNames {
  std::vector<std::string> dns;
  std::vector<std::string> uri;
  std::vector<std::string> common_names;
};
CertificateNames names_of(X509* cert);

// The OpenSSL error queue as one line (and cleared); `fallback` when empty.
std::string openssl_errors(const std::string& fallback);

}  // namespace m2mvault::vault
