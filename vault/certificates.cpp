// Certificates for the vault's signing keys (TR-0038 Annex B with the
// private key never on disk): a CSR signed inside the token, and the issued
// chain attached to the key.
#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "api/error.h"
#include "vault/identifiers.h"
#include "vault/in_token.h"
#include "vault/vault.h"
#include "vault/x509_util.h"

namespace m2mvault::vault {
namespace {

using StackOfExtensions =
    std::unique_ptr<STACK_OF(X509_EXTENSION), decltype([](STACK_OF(X509_EXTENSION) * s) {
                      sk_X509_EXTENSION_pop_free(s, X509_EXTENSION_free);
                    })>;

// `/C=DE/O=Org/CN=x` (as `openssl req -subj` takes it) or `CN=x,O=Org`.
X509NamePtr parse_subject(const std::string& text) {
  if (text.empty()) throw Error(ErrorCode::invalid_argument, "the subject is empty");
  X509NamePtr name(X509_NAME_new());
  const bool slashes = text.front() == '/';
  const char separator = slashes ? '/' : ',';
  std::size_t pos = slashes ? 1 : 0;
  while (pos <= text.size()) {
    std::size_t end = text.find(separator, pos);
    if (end == std::string::npos) end = text.size();
    std::string part = text.substr(pos, end - pos);
    pos = end + 1;
    while (!part.empty() && part.front() == ' ') part.erase(part.begin());
    if (part.empty()) continue;
    const auto eq = part.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == part.size()) {
      throw Error(ErrorCode::invalid_argument,
                  fmt::format("subject part '{}' is not FIELD=value", printable_excerpt(part)));
    }
    const std::string field = part.substr(0, eq);
    const std::string value = part.substr(eq + 1);
    if (X509_NAME_add_entry_by_txt(name.get(), field.c_str(), MBSTRING_UTF8,
                                   reinterpret_cast<const unsigned char*>(value.data()),
                                   static_cast<int>(value.size()), -1, 0) != 1) {
      ERR_clear_error();
      throw Error(ErrorCode::invalid_argument,
                  fmt::format("subject field '{}' is unknown or its value is invalid",
                              printable_excerpt(field)));
    }
  }
  if (X509_NAME_entry_count(name.get()) == 0)
    throw Error(ErrorCode::invalid_argument, "the subject has no fields");
  return name;
}

// A v3 extension from OpenSSL's text form, made in a context that names the
// request (a null context crashes some of OpenSSL's value parsers).
X509_EXTENSION* extension(X509_REQ* req, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, nullptr, nullptr, req, nullptr, 0);
  return X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
}

X509_EXTENSION* subject_alt_name(X509_REQ* req, const std::vector<std::string>& sans) {
  std::string value;
  for (const auto& san : sans) {
    const auto colon = san.find(':');
    const std::string type = colon == std::string::npos ? "" : san.substr(0, colon);
    const bool known = type == "DNS" || type == "URI" || type == "IP" || type == "email";
    if (!known || colon + 1 == san.size() || san.find(',') != std::string::npos) {
      throw Error(ErrorCode::invalid_argument,
                  fmt::format("subjectAltName entry '{}' must be DNS:, URI:, IP: or email: "
                              "followed by a value without commas",
                              printable_excerpt(san)));
    }
    if (!value.empty()) value += ',';
    value += san;
  }
  X509_EXTENSION* ext = extension(req, NID_subject_alt_name, value);
  if (!ext) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("invalid subjectAltName '{}': {}", printable_excerpt(value),
                            openssl_errors("rejected by OpenSSL")));
  }
  return ext;
}

std::string to_pem(X509_REQ* req) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509_REQ(bio.get(), req) != 1)
    throw Error(ErrorCode::internal, "cannot write the request as PEM");
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(len));
}

}  // namespace

std::string Vault::certificate_request(std::string_view key, const std::string& subject,
                                       const std::vector<std::string>& sans) {
  const KeyRecord record = usable_or_throw(key);
  if (record.kind != KeyKind::signing) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("key '{}' is a {} key; certificates are for signing keys", record.name,
                            to_string(record.kind)));
  }
  count_use(record);
  X509ReqPtr req(X509_REQ_new());
  if (!req) throw Error(ErrorCode::internal, "out of memory");
  X509NamePtr name = parse_subject(subject);
  if (X509_REQ_set_version(req.get(), 0) != 1 ||
      X509_REQ_set_subject_name(req.get(), name.get()) != 1)
    throw Error(ErrorCode::internal, "cannot build the request");

  const unsigned char* p = record.public_key.data();
  EvpPkeyPtr public_key(d2i_PUBKEY(nullptr, &p, static_cast<long>(record.public_key.size())));
  if (!public_key) throw Error(ErrorCode::internal, "the catalog's public key does not parse");
  if (X509_REQ_set_pubkey(req.get(), public_key.get()) != 1)
    throw Error(ErrorCode::internal, "cannot build the request");

  StackOfExtensions extensions(sk_X509_EXTENSION_new_null());
  if (!extensions) throw Error(ErrorCode::internal, "out of memory");
  if (!sans.empty()) sk_X509_EXTENSION_push(extensions.get(), subject_alt_name(req.get(), sans));
  // TS-0003 10.1: keyUsage with digitalSignature.
  X509_EXTENSION* key_usage = extension(req.get(), NID_key_usage, "critical,digitalSignature");
  if (!key_usage) throw Error(ErrorCode::internal, openssl_errors("cannot make keyUsage"));
  sk_X509_EXTENSION_push(extensions.get(), key_usage);
  if (X509_REQ_add_extensions(req.get(), extensions.get()) != 1)
    throw Error(ErrorCode::internal, openssl_errors("cannot add the request's extensions"));

  // The signature is made inside the token; the request is then checked
  // against the catalog's public key before it is handed out.
  auto private_key = in_token([&] {
    return se_.private_key(
        {record.token_label, record.object_id, record.object_label, record.blob});
  });
  if (X509_REQ_sign(req.get(), private_key.get(), EVP_sha256()) <= 0) {
    throw Error(ErrorCode::backend_unavailable,
                fmt::format("signing the request for '{}' in the token failed: {}", record.name,
                            openssl_errors("no reason given")));
  }
  if (X509_REQ_verify(req.get(), public_key.get()) != 1) {
    ERR_clear_error();
    throw Error(
        ErrorCode::internal,
        fmt::format("the token's signature on the request for '{}' does not verify", record.name));
  }
  return to_pem(req.get());
}

KeyRecord Vault::attach_certificate(std::string_view key, const std::string& pem) {
  KeyRecord record = find_or_throw(key);
  if (record.kind != KeyKind::signing) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("key '{}' is a {} key; certificates are for signing keys", record.name,
                            to_string(record.kind)));
  }
  auto chain = read_certificates(pem, "the certificate file");
  if (spki_of(chain.front().get()) != record.public_key) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("the first certificate does not certify key '{}' (its public key "
                            "differs); the chain must start with the key's own certificate",
                            record.name));
  }
  std::string normalized;
  for (std::size_t i = 0; i < chain.size(); ++i) {
    // Names and key ids match, and the signature verifies under the next
    // certificate's key. (Dates are checked at each handshake, not here.)
    if (i + 1 < chain.size()) {
      EVP_PKEY* issuer_key = X509_get0_pubkey(chain[i + 1].get());
      const bool issued = X509_check_issued(chain[i + 1].get(), chain[i].get()) == X509_V_OK &&
                          issuer_key && X509_verify(chain[i].get(), issuer_key) == 1;
      ERR_clear_error();
      if (!issued) {
        throw Error(ErrorCode::invalid_argument,
                    fmt::format("certificate {} of the chain is not the issuer of certificate {}",
                                i + 2, i + 1));
      }
    }
    normalized += to_pem(chain[i].get());
  }
  catalog_.set_certificate(record.row, normalized);
  record.certificate = std::move(normalized);
  return record;
}

}  // namespace m2mvault::vault
