// The provider key object behind every EVP_PKEY of the m2mvault keymgmt.
//
// A *vault key* holds the key's name and its public half: private operations
// go to the daemon, the private key never leaves the token. Every other key
// (an ephemeral ECDHE key, a peer's key, a key read from a file) is an
// ordinary software key held in the provider's software library context.
// libssl knows EC and RSA keys only by the keymgmt names "EC" and "RSA", and
// ours takes over every such fetch whenever it is preferred: so it must serve
// both kinds.
#pragma once

#include <openssl/core.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "engine/provider/key_reference.h"
#include "engine/provider/openssl_owners.h"

namespace m2mvault::provider {

struct ProviderContext;

class Key {
 public:
  Key(const ProviderContext& provider, KeyType type) : provider_(provider), type_(type) {}

  const ProviderContext& provider() const { return provider_; }
  KeyType type() const { return type_; }

  // The public half (vault key) or the whole key (software key), in the
  // software library context; null for a key that is still empty.
  EVP_PKEY* pkey() const { return pkey_.get(); }

  // A vault key: the private half is in the vault under this name.
  bool in_vault() const { return !vault_name_.empty(); }
  const std::string& vault_name() const { return vault_name_; }

  bool has_parameters() const { return has_parameters_; }
  bool has_public() const { return has_public_; }
  bool has_private() const { return has_private_ || in_vault(); }

  // Takes a software key (public, private or parameters only).
  void set_software(EvpPkeyPtr pkey);
  // Takes the public half of the vault key `name`.
  void set_vault(std::string name, EvpPkeyPtr public_key);
  // After the key was changed in place (set_params): what it now holds.
  void refresh_contents();

  // A copy: a vault key shares its (immutable) public half; a software key is
  // duplicated. nullptr on failure.
  std::unique_ptr<Key> duplicate() const;

 private:
  const ProviderContext& provider_;
  KeyType type_;
  EvpPkeyPtr pkey_;
  std::string vault_name_;
  bool has_parameters_ = false;
  bool has_public_ = false;
  bool has_private_ = false;
};

// Asks the daemon for the signing key `name` (a name or an identifier):
// key.show, then key.public. With `expected`, the key must be of that type.
// Returns nullptr with an OpenSSL error raised ("key not found: <name>",
// "daemon not reachable at <socket>", "denied", ...).
std::unique_ptr<Key> load_vault_key(const ProviderContext& provider, std::string_view name,
                                    std::optional<KeyType> expected);

// Hands `key` to an OSSL_STORE or OSSL_DECODER object callback as an object
// reference that the m2mvault keymgmt's load() takes over (a different
// keymgmt cannot use it: the private half is not exportable). Returns the
// callback's result; frees the key if nobody took it.
int pass_key_reference(std::unique_ptr<Key> key, OSSL_CALLBACK* object_cb, void* object_cbarg);

// In keymgmt load(): takes the key out of a reference made by
// pass_key_reference. nullptr if the reference is not one.
std::unique_ptr<Key> take_key_reference(const void* reference, size_t reference_size);

}  // namespace m2mvault::provider
