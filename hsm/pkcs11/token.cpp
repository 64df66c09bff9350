#include "hsm/pkcs11/token.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cstdlib>

#include "hsm/pkcs11/ck_util.h"

namespace m2mvault::hsm::pkcs11 {
namespace {

bool is_space(std::uint8_t c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

}  // namespace

SecureBuffer read_pin_file(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(Failure::unavailable, "cannot read PIN file " + path.string());
  SecureBuffer content(4096);
  std::size_t used = 0;
  for (;;) {
    const ssize_t n = ::read(fd, content.data() + used, content.size() - used);
    if (n < 0) {
      ::close(fd);
      throw Error(Failure::unavailable, "cannot read PIN file " + path.string());
    }
    used += static_cast<std::size_t>(n);
    if (n == 0 || used == content.size()) break;
  }
  ::close(fd);

  std::size_t end = 0;
  while (end < used && content.data()[end] != '\n') ++end;
  std::size_t begin = 0;
  while (begin < end && is_space(content.data()[begin])) ++begin;
  while (end > begin && is_space(content.data()[end - 1])) --end;
  if (end == begin) throw Error(Failure::unavailable, "PIN file " + path.string() + " is empty");
  return SecureBuffer::copy_of(content.span().subspan(begin, end - begin));
}

CK_RV login_user(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session, const SecureBuffer& pin) {
  const CK_RV rv = fn->C_Login(session, CKU_USER, const_cast<CK_UTF8CHAR*>(pin.data()), pin.size());
  return rv == CKR_USER_ALREADY_LOGGED_IN ? CKR_OK : rv;
}

Token::Token(const Config& config) : label_(config.token_label) {
  if (!config.softhsm2_conf.empty()) {
    ::setenv("SOFTHSM2_CONF", config.softhsm2_conf.c_str(), 1);
  }
  module_ = Module::shared(config.module);
  const auto slot = module_->find_token(config.token_label);
  if (!slot) {
    throw Error(Failure::unavailable, "no token labelled '" + config.token_label +
                                          "' in PKCS#11 module " + config.module.string());
  }
  slot_ = *slot;
  pin_ = read_pin_file(config.pin_file);
  housekeeping_ = std::make_unique<SessionPool>(fn(), slot_, 1);
  sessions_ = std::make_unique<SessionPool>(fn(), slot_, config.sessions);
  auto session = sessions_->borrow();
  if (const CK_RV rv = login_user(fn(), session.handle(), pin_); rv != CKR_OK) {
    throw Error(Failure::unavailable, "C_Login to token '" + label_ + "' with the PIN from " +
                                          config.pin_file.string() + " failed: " + rv_name(rv));
  }
}

std::string Token::model() const {
  const CK_TOKEN_INFO info = module_->token_info(slot_);
  std::string model(reinterpret_cast<const char*>(info.model), sizeof info.model);
  const auto end = model.find_last_not_of(' ');
  model.erase(end == std::string::npos ? 0 : end + 1);
  return model;
}

std::optional<CK_OBJECT_HANDLE> Token::find_kek() {
  auto session = sessions_->borrow();
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE type = CKK_AES;
  std::array templ{attr(CKA_CLASS, cls), attr(CKA_KEY_TYPE, type),
                   attr_string(CKA_LABEL, kKekLabel)};
  const auto found = find_objects(fn(), session.handle(), templ);
  if (found.empty()) return std::nullopt;
  return found.front();
}

CK_OBJECT_HANDLE Token::generate_kek() {
  auto session = sessions_->borrow();
  return generate_kek_in(fn(), session.handle());
}

CK_OBJECT_HANDLE Token::find_or_generate_audit_key() {
  auto session = sessions_->borrow();
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE type = CKK_GENERIC_SECRET;
  std::array query{attr(CKA_CLASS, cls), attr(CKA_KEY_TYPE, type),
                   attr_string(CKA_LABEL, kAuditKeyLabel)};
  const auto found = find_objects(fn(), session.handle(), query);
  if (!found.empty()) return found.front();
  CK_MECHANISM mechanism{CKM_GENERIC_SECRET_KEY_GEN, nullptr, 0};
  CK_ULONG length = 32;
  CK_BBOOL yes = CK_TRUE;
  CK_BBOOL no = CK_FALSE;
  std::array templ{
      attr(CKA_CLASS, cls),      attr(CKA_KEY_TYPE, type), attr(CKA_VALUE_LEN, length),
      attr(CKA_TOKEN, yes),      attr(CKA_PRIVATE, yes),   attr(CKA_SENSITIVE, yes),
      attr(CKA_EXTRACTABLE, no), attr(CKA_SIGN, yes),      attr(CKA_VERIFY, yes),
      attr(CKA_ENCRYPT, no),     attr(CKA_DECRYPT, no),    attr(CKA_WRAP, no),
      attr(CKA_UNWRAP, no),      attr(CKA_DERIVE, no),     attr_string(CKA_LABEL, kAuditKeyLabel)};
  CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
  check(fn()->C_GenerateKey(session.handle(), &mechanism, templ.data(), templ.size(), &key),
        "C_GenerateKey (audit key)", Failure::unavailable);
  return key;
}

CK_OBJECT_HANDLE generate_kek_in(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session) {
  CK_MECHANISM mechanism{CKM_AES_KEY_GEN, nullptr, 0};
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE type = CKK_AES;
  CK_ULONG length = 32;
  CK_BBOOL yes = CK_TRUE;
  CK_BBOOL no = CK_FALSE;
  // A private object made by the user session: SoftHSM2 encrypts it on disk
  // (a CKA_TRUSTED KEK would have to be a public SO object, stored in clear).
  std::array templ{
      attr(CKA_CLASS, cls),      attr(CKA_KEY_TYPE, type), attr(CKA_VALUE_LEN, length),
      attr(CKA_TOKEN, yes),      attr(CKA_PRIVATE, yes),   attr(CKA_SENSITIVE, yes),
      attr(CKA_EXTRACTABLE, no), attr(CKA_WRAP, yes),      attr(CKA_UNWRAP, yes),
      attr(CKA_ENCRYPT, no),     attr(CKA_DECRYPT, no),    attr_string(CKA_LABEL, kKekLabel)};
  CK_OBJECT_HANDLE kek = CK_INVALID_HANDLE;
  check(fn->C_GenerateKey(session, &mechanism, templ.data(), templ.size(), &kek), "C_GenerateKey");
  return kek;
}

}  // namespace m2mvault::hsm::pkcs11
