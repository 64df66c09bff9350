// Token objects: signing keys (the vault's ECDSA keys through session
// copies, the rest through libp11), Ke, reconciliation helpers, adopted keys,
// and the non-exportability the design promises.
#include <gtest/gtest.h>
#include <openssl/ec.h>

#include <algorithm>
#include <thread>

#include "hsm/pkcs11/pkcs11_backend.h"
#include "hsm/pkcs11/signing_objects.h"
#include "tests/hsm/hsm_environment.h"
#include "tests/hsm/raw_pkcs11.h"
#include "tests/hsm/test_support.h"

namespace m2mvault::hsm::testing {
namespace {

SecureElement& backend() {
  return *setup().backend;
}

void expect_signs_and_verifies(const TokenKeyRef& ref, std::span<const std::uint8_t> spki,
                               SignatureScheme scheme) {
  const Pkey public_key = parse_spki(spki);
  ASSERT_TRUE(public_key);
  Bytes digest = sha256(text_bytes("to be signed"));
  const Bytes signature = backend().sign_digest(ref, scheme, digest);
  EXPECT_TRUE(verifies(public_key.get(), scheme, digest, signature));
  digest[0] ^= 0x80;
  EXPECT_FALSE(verifies(public_key.get(), scheme, digest, signature));
}

TEST(SigningKey, EcP256SignsDigestsThatOpenSslVerifies) {
  const Bytes id = backend().new_object_id();
  const Bytes spki = backend().generate_signing_key(id, SigningAlgorithm::ec_p256).public_key;
  const Pkey key = parse_spki(spki);
  ASSERT_TRUE(key);
  ASSERT_EQ(EVP_PKEY_get_base_id(key.get()), EVP_PKEY_EC);
  char group[64] = {};
  std::size_t group_size = 0;
  ASSERT_EQ(EVP_PKEY_get_group_name(key.get(), group, sizeof group, &group_size), 1);
  EXPECT_STREQ(group, "prime256v1");

  const TokenKeyRef ref{"", id, ""};
  expect_signs_and_verifies(ref, spki, SignatureScheme::ecdsa);
  EXPECT_EQ(backend().public_key(ref), spki);
  EXPECT_THROW(backend().sign_digest(ref, SignatureScheme::rsa_pss, sha256(Bytes{1})), Error);
  backend().destroy_token_object(id);
}

TEST(SigningKey, Rsa2048SignsPkcs1AndPssThatOpenSslVerifies) {
  const Bytes id = backend().new_object_id();
  const Bytes spki = backend().generate_signing_key(id, SigningAlgorithm::rsa_2048).public_key;
  const Pkey key = parse_spki(spki);
  ASSERT_TRUE(key);
  ASSERT_EQ(EVP_PKEY_get_base_id(key.get()), EVP_PKEY_RSA);
  EXPECT_EQ(EVP_PKEY_get_bits(key.get()), 2048);
  const TokenKeyRef ref{"", id, ""};
  expect_signs_and_verifies(ref, spki, SignatureScheme::rsa_pkcs1);
  expect_signs_and_verifies(ref, spki, SignatureScheme::rsa_pss);
  // The digest is named by its size: SHA-384 and SHA-512 too, checked by
  // OpenSSL with that digest (and, for PSS, a salt as long as it).
  for (const EVP_MD* md : {EVP_sha384(), EVP_sha512()}) {
    Bytes digest(static_cast<std::size_t>(EVP_MD_get_size(md)));
    const Bytes message = text_bytes("RSA with a longer digest");
    unsigned int digest_size = 0;
    ASSERT_EQ(EVP_Digest(message.data(), message.size(), digest.data(), &digest_size, md, nullptr),
              1);
    for (const auto scheme : {SignatureScheme::rsa_pkcs1, SignatureScheme::rsa_pss}) {
      const Bytes signature = backend().sign_digest(ref, scheme, digest);
      EXPECT_TRUE(verifies(key.get(), scheme, digest, signature, md)) << EVP_MD_get0_name(md);
      EXPECT_FALSE(verifies(key.get(), scheme, digest, signature, EVP_sha256()));
    }
  }
  EXPECT_THROW(backend().sign_digest(ref, SignatureScheme::rsa_pkcs1, Bytes(20, 1)), Error);
  try {
    backend().sign_digest(ref, SignatureScheme::ecdsa, sha256(Bytes{1}));
    FAIL() << "an RSA key made an ECDSA signature";
  } catch (const Error& error) {
    EXPECT_EQ(error.failure(), Failure::invalid_argument) << error.what();
  }
  // Signed through a session copy, as the EC keys are.
  RawSession raw(setup().config.module, pkcs11::kDefaultTokenLabel, setup().user_pin);
  CK_OBJECT_CLASS private_class = CKO_PRIVATE_KEY;
  EXPECT_EQ(raw.find({{CKA_CLASS, &private_class, sizeof private_class},
                      {CKA_ID, const_cast<std::uint8_t*>(id.data()), id.size()}})
                .size(),
            2u);
  backend().destroy_token_object(id);
}

// The vault's private keys with this CKA_ID, as any caller with the PIN finds
// them, and whether each is a token object.
std::vector<std::pair<CK_OBJECT_HANDLE, bool>> private_keys_with_id(RawSession& raw,
                                                                    const Bytes& id) {
  CK_OBJECT_CLASS private_class = CKO_PRIVATE_KEY;
  std::vector<std::pair<CK_OBJECT_HANDLE, bool>> keys;
  for (CK_OBJECT_HANDLE object :
       raw.find({{CKA_CLASS, &private_class, sizeof private_class},
                 {CKA_ID, const_cast<std::uint8_t*>(id.data()), id.size()}})) {
    CK_BBOOL on_token = CK_FALSE;
    CK_ATTRIBUTE query{CKA_TOKEN, &on_token, sizeof on_token};
    EXPECT_EQ(raw.fn()->C_GetAttributeValue(raw.handle(), object, &query, 1), CKR_OK);
    keys.emplace_back(object, on_token == CK_TRUE);
  }
  std::sort(keys.begin(), keys.end(),
            [](const auto& a, const auto& b) { return a.second > b.second; });  // token first
  return keys;
}

TEST(SigningKey, EcdsaSessionCopyIsAsProtectedAsItsTokenObjectAndGoesWithIt) {
  const Bytes id = backend().new_object_id();
  const Bytes spki = backend().generate_signing_key(id, SigningAlgorithm::ec_p256).public_key;
  const TokenKeyRef ref{"", id, ""};
  RawSession raw(setup().config.module, pkcs11::kDefaultTokenLabel, setup().user_pin);
  ASSERT_TRUE(raw.login_rv() == CKR_OK || raw.login_rv() == CKR_USER_ALREADY_LOGGED_IN);
  ASSERT_EQ(private_keys_with_id(raw, id).size(), 1u);  // no copy before the first signature

  expect_signs_and_verifies(ref, spki, SignatureScheme::ecdsa);
  const auto keys = private_keys_with_id(raw, id);
  ASSERT_EQ(keys.size(), 2u);
  EXPECT_TRUE(keys[0].second);
  EXPECT_FALSE(keys[1].second);  // the session copy
  const CK_OBJECT_HANDLE wrapping_key = raw.make_wrapping_key();
  for (const auto& [object, on_token] : keys) {
    EXPECT_EQ(raw.read_value_rv(object), CKR_ATTRIBUTE_SENSITIVE) << "token object: " << on_token;
    EXPECT_NE(raw.wrap_rv(wrapping_key, object), CKR_OK) << "token object: " << on_token;
  }
  raw.fn()->C_DestroyObject(raw.handle(), wrapping_key);

  // Still one copy after more signatures, made ready ahead too.
  backend().prepare();
  expect_signs_and_verifies(ref, spki, SignatureScheme::ecdsa);
  backend().prepare();
  EXPECT_EQ(private_keys_with_id(raw, id).size(), 2u);
  const auto listed = backend().list_vault_objects();
  EXPECT_EQ(std::count(listed.begin(), listed.end(), id), 1);

  backend().destroy_token_object(id);
  EXPECT_TRUE(private_keys_with_id(raw, id).empty());
  EXPECT_FALSE(backend().token_object_exists(id));
  try {
    backend().sign_digest(ref, SignatureScheme::ecdsa, sha256(Bytes{1}));
    FAIL() << "a destroyed key signed";
  } catch (const Error& error) {
    EXPECT_EQ(error.failure(), Failure::not_found) << error.what();
  }
}

TEST(SigningKey, KeyDestroyedOutsideTheVaultStopsSigningWithinTheRecheckInterval) {
  const Bytes id = backend().new_object_id();
  const Bytes spki = backend().generate_signing_key(id, SigningAlgorithm::ec_p256).public_key;
  const TokenKeyRef ref{"", id, ""};
  expect_signs_and_verifies(ref, spki, SignatureScheme::ecdsa);
  backend().prepare();  // the next signature is made ready: it must not outlive the key

  RawSession raw(setup().config.module, pkcs11::kDefaultTokenLabel, setup().user_pin);
  ASSERT_TRUE(raw.login_rv() == CKR_OK || raw.login_rv() == CKR_USER_ALREADY_LOGGED_IN);
  auto keys = private_keys_with_id(raw, id);
  ASSERT_EQ(keys.size(), 2u);
  ASSERT_TRUE(keys[0].second);
  ASSERT_EQ(raw.fn()->C_DestroyObject(raw.handle(), keys[0].first), CKR_OK);

  std::this_thread::sleep_for(pkcs11::SigningObjects::kRecheck + std::chrono::milliseconds(200));
  try {
    backend().sign_digest(ref, SignatureScheme::ecdsa, sha256(Bytes{1}));
    FAIL() << "a key destroyed in the token signed after the recheck interval";
  } catch (const Error& error) {
    EXPECT_EQ(error.failure(), Failure::not_found) << error.what();
  }
  EXPECT_TRUE(private_keys_with_id(raw, id).empty());  // the copy went too
  backend().destroy_token_object(id);                  // the public half
}

TEST(SigningKey, UnknownKeyIsNotFound) {
  try {
    backend().sign_digest(TokenKeyRef{"", Bytes(16, 0xee), ""}, SignatureScheme::ecdsa,
                          sha256(Bytes{1}));
    FAIL();
  } catch (const Error& error) {
    EXPECT_EQ(error.failure(), Failure::not_found);
    EXPECT_NE(std::string(error.what()).find("eeeeeeee"), std::string::npos) << error.what();
  }
}

TEST(NonExportability, UserPinCannotReadOrWrapSigningKeyOrKe) {
  const Bytes signing_id = backend().new_object_id();
  backend().generate_signing_key(signing_id, SigningAlgorithm::ec_p256);
  const Bytes ke_id = backend().new_object_id();
  backend().create_token_secret(ke_id, random_bytes(48));

  RawSession raw(setup().config.module, pkcs11::kDefaultTokenLabel, setup().user_pin);
  ASSERT_TRUE(raw.login_rv() == CKR_OK || raw.login_rv() == CKR_USER_ALREADY_LOGGED_IN);
  const CK_OBJECT_HANDLE wrapping_key = raw.make_wrapping_key();

  CK_OBJECT_CLASS private_class = CKO_PRIVATE_KEY;
  CK_OBJECT_CLASS secret_class = CKO_SECRET_KEY;
  const auto private_keys =
      raw.find({{CKA_CLASS, &private_class, sizeof private_class},
                {CKA_ID, const_cast<std::uint8_t*>(signing_id.data()), signing_id.size()}});
  const auto kes = raw.find({{CKA_CLASS, &secret_class, sizeof secret_class},
                             {CKA_ID, const_cast<std::uint8_t*>(ke_id.data()), ke_id.size()}});
  ASSERT_EQ(private_keys.size(), 1u);
  ASSERT_EQ(kes.size(), 1u);
  for (CK_OBJECT_HANDLE object : {private_keys.front(), kes.front()}) {
    EXPECT_EQ(raw.read_value_rv(object), CKR_ATTRIBUTE_SENSITIVE);
    EXPECT_NE(raw.wrap_rv(wrapping_key, object), CKR_OK);
  }

  // Control: the same raw session can wrap an extractable key, so the
  // refusals above come from the objects' attributes.
  const CK_OBJECT_HANDLE extractable = raw.make_wrapping_key();
  EXPECT_EQ(raw.wrap_rv(wrapping_key, extractable), CKR_OK);
  raw.fn()->C_DestroyObject(raw.handle(), extractable);
  raw.fn()->C_DestroyObject(raw.handle(), wrapping_key);

  backend().destroy_token_object(signing_id);
  backend().destroy_token_object(ke_id);
}

TEST(Reconciliation, ListsVaultObjectsAndDestroysThem) {
  const Bytes signing_id = backend().new_object_id();
  backend().generate_signing_key(signing_id, SigningAlgorithm::ec_p256);
  const Bytes ke_id = backend().new_object_id();
  backend().create_token_secret(ke_id, random_bytes(32));

  auto listed = backend().list_vault_objects();
  EXPECT_NE(std::find(listed.begin(), listed.end(), signing_id), listed.end());
  EXPECT_NE(std::find(listed.begin(), listed.end(), ke_id), listed.end());
  for (const Bytes& id : listed) EXPECT_EQ(id.size(), 16u);  // never the KEK (it has no CKA_ID)

  EXPECT_TRUE(backend().token_object_exists(signing_id));
  backend().destroy_token_object(signing_id);
  EXPECT_FALSE(backend().token_object_exists(signing_id));
  EXPECT_NO_THROW(backend().destroy_token_object(signing_id));  // missing is not an error

  RawSession raw(setup().config.module, pkcs11::kDefaultTokenLabel, setup().user_pin);
  EXPECT_TRUE(raw.find({{CKA_ID, const_cast<std::uint8_t*>(signing_id.data()), signing_id.size()}})
                  .empty());  // private and public both gone

  listed = backend().list_vault_objects();
  EXPECT_EQ(std::find(listed.begin(), listed.end(), signing_id), listed.end());
  backend().destroy_token_object(ke_id);
  EXPECT_FALSE(backend().token_object_exists(ke_id));

  // The KEK is still there and still works.
  EXPECT_NO_THROW(backend().wrap_secret(Bytes{1, 2, 3}));
}

TEST(AdoptedKey, AdoptedByIdAndByLabelSignsThroughLibp11) {
  const Bytes device_id = from_hex(kDeviceKeyIdHex);
  const auto by_id = backend().adopt_signing_key(TokenKeyRef{kAdoptToken, device_id, ""});
  EXPECT_EQ(by_id.algorithm, SigningAlgorithm::ec_p256);
  EXPECT_EQ(by_id.object_id, device_id);

  const auto by_label = backend().adopt_signing_key(TokenKeyRef{kAdoptToken, {}, kDeviceKeyLabel});
  EXPECT_EQ(by_label.object_id, device_id);
  EXPECT_EQ(by_label.public_key, by_id.public_key);

  expect_signs_and_verifies(TokenKeyRef{kAdoptToken, device_id, ""}, by_id.public_key,
                            SignatureScheme::ecdsa);
  expect_signs_and_verifies(TokenKeyRef{kAdoptToken, {}, kDeviceKeyLabel}, by_id.public_key,
                            SignatureScheme::ecdsa);
  EXPECT_EQ(backend().public_key(TokenKeyRef{kAdoptToken, device_id, ""}), by_id.public_key);

  // Adopted keys are not the vault's: reconciliation never sees them.
  const auto listed = backend().list_vault_objects();
  EXPECT_EQ(std::find(listed.begin(), listed.end(), device_id), listed.end());
}

TEST(AdoptedKey, UnknownObjectOrTokenIsNotFound) {
  for (const TokenKeyRef& ref :
       {TokenKeyRef{kAdoptToken, Bytes{9, 9, 9}, ""}, TokenKeyRef{kAdoptToken, {}, "no-such-key"},
        TokenKeyRef{"no-such-token", Bytes{1}, ""}}) {
    try {
      backend().adopt_signing_key(ref);
      FAIL();
    } catch (const Error& error) {
      EXPECT_EQ(error.failure(), Failure::not_found) << error.what();
    }
  }
}

TEST(AdoptedKey, P384KeyIsUnsupported) {
  try {
    backend().adopt_signing_key(TokenKeyRef{kAdoptToken, from_hex(kP384KeyIdHex), ""});
    FAIL();
  } catch (const Error& error) {
    EXPECT_EQ(error.failure(), Failure::unsupported) << error.what();
  }
}

}  // namespace
}  // namespace m2mvault::hsm::testing
