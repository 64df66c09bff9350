#include "engine/provider/key.h"

#include <openssl/core_names.h>
#include <openssl/core_object.h>
#include <openssl/pem.h>

#include <string>

#include "engine/provider/provider.h"

namespace m2mvault::provider {
namespace {

bool has_bn_param(EVP_PKEY* pkey, const char* name) {
  BIGNUM* value = nullptr;
  const bool found = EVP_PKEY_get_bn_param(pkey, name, &value) == 1;
  BN_clear_free(value);
  return found;
}

}  // namespace

void Key::set_software(EvpPkeyPtr pkey) {
  pkey_ = std::move(pkey);
  vault_name_.clear();
  refresh_contents();
}

void Key::set_vault(std::string name, EvpPkeyPtr public_key) {
  pkey_ = std::move(public_key);
  vault_name_ = std::move(name);
  refresh_contents();
}

void Key::refresh_contents() {
  has_parameters_ = has_public_ = has_private_ = false;
  if (!pkey_) return;
  if (type_ == KeyType::ec) {
    char group[64];
    size_t length = 0;
    has_parameters_ = EVP_PKEY_get_utf8_string_param(pkey_.get(), OSSL_PKEY_PARAM_GROUP_NAME, group,
                                                     sizeof group, &length) == 1 ||
                      has_bn_param(pkey_.get(), OSSL_PKEY_PARAM_EC_P);
    has_public_ = EVP_PKEY_get_octet_string_param(pkey_.get(), OSSL_PKEY_PARAM_PUB_KEY, nullptr, 0,
                                                  &length) == 1;
    has_private_ = !in_vault() && has_bn_param(pkey_.get(), OSSL_PKEY_PARAM_PRIV_KEY);
  } else {
    has_parameters_ = true;  // RSA has no domain parameters
    has_public_ = has_bn_param(pkey_.get(), OSSL_PKEY_PARAM_RSA_N);
    has_private_ = !in_vault() && has_bn_param(pkey_.get(), OSSL_PKEY_PARAM_RSA_D);
  }
}

std::unique_ptr<Key> Key::duplicate() const {
  auto copy = std::make_unique<Key>(provider_, type_);
  if (!pkey_) return copy;
  if (in_vault()) {
    if (EVP_PKEY_up_ref(pkey_.get()) != 1) return nullptr;
    copy->pkey_.reset(pkey_.get());
  } else {
    copy->pkey_.reset(EVP_PKEY_dup(pkey_.get()));
    if (!copy->pkey_) return nullptr;
  }
  copy->vault_name_ = vault_name_;
  copy->has_parameters_ = has_parameters_;
  copy->has_public_ = has_public_;
  copy->has_private_ = has_private_;
  return copy;
}

std::unique_ptr<Key> load_vault_key(const ProviderContext& provider, std::string_view name,
                                    std::optional<KeyType> expected) {
  std::string canonical(name);
  std::string pem;
  debug_log("loading vault key %s from %s", canonical.c_str(),
            provider.daemon->socket_path().c_str());
  try {
    const auto shown = provider.daemon->call("key.show", {{"key", canonical}});
    if (auto it = shown.find("name"); it != shown.end() && it->is_string()) {
      canonical = it->get<std::string>();
    }
    const auto pub = provider.daemon->call("key.public", {{"key", canonical}});
    pem = pub.at("pem").get<std::string>();
  } catch (const Error& error) {
    raise_daemon_error(provider, error, std::string(name));
    return nullptr;
  } catch (const nlohmann::json::exception&) {
    raise_error(provider, kDaemonError, "unexpected answer from m2mvaultd for key %s",
                canonical.c_str());
    return nullptr;
  } catch (const std::exception& failure) {  // no exception may reach OpenSSL
    raise_error(provider, kDaemonError, "loading key %s failed: %s", canonical.c_str(),
                failure.what());
    return nullptr;
  }
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  EvpPkeyPtr public_key(bio ? PEM_read_bio_PUBKEY_ex(bio.get(), nullptr, nullptr, nullptr,
                                                     provider.software_libctx(), nullptr)
                            : nullptr);
  if (!public_key) {
    raise_error(provider, kDaemonError, "the public key of %s from m2mvaultd is unreadable",
                canonical.c_str());
    return nullptr;
  }
  KeyType type;
  if (EVP_PKEY_is_a(public_key.get(), "EC")) {
    type = KeyType::ec;
  } else if (EVP_PKEY_is_a(public_key.get(), "RSA")) {
    type = KeyType::rsa;
  } else {
    raise_error(provider, kUnsupported, "key %s is neither EC nor RSA", canonical.c_str());
    return nullptr;
  }
  if (expected && *expected != type) {
    raise_error(provider, kBadKeyReference, "key %s is %s, the reference says %s",
                canonical.c_str(), std::string(to_string(type)).c_str(),
                std::string(to_string(*expected)).c_str());
    return nullptr;
  }
  auto key = std::make_unique<Key>(provider, type);
  key->set_vault(canonical, std::move(public_key));
  return key;
}

int pass_key_reference(std::unique_ptr<Key> key, OSSL_CALLBACK* object_cb, void* object_cbarg) {
  Key* slot = key.release();
  int object_type = OSSL_OBJECT_PKEY;
  std::string data_type(to_string(slot->type()));
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_int(OSSL_OBJECT_PARAM_TYPE, &object_type),
      OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DATA_TYPE, data_type.data(), 0),
      OSSL_PARAM_construct_octet_string(OSSL_OBJECT_PARAM_REFERENCE, &slot, sizeof slot),
      OSSL_PARAM_construct_end()};
  const int ok = object_cb(params, object_cbarg);
  std::unique_ptr<Key> untaken(slot);  // load() empties the slot when it takes the key
  return ok;
}

std::unique_ptr<Key> take_key_reference(const void* reference, size_t reference_size) {
  debug_log("keymgmt load of a key reference");
  if (reference == nullptr || reference_size != sizeof(Key*)) return nullptr;
  // The reference is the address of pass_key_reference's slot: ours to empty.
  Key** slot = static_cast<Key**>(const_cast<void*>(reference));
  return std::unique_ptr<Key>(std::exchange(*slot, nullptr));
}

}  // namespace m2mvault::provider
