// SigningObjects' armed sessions against a real SoftHSM2: a signature made
// on a session armed ahead verifies with OpenSSL, an armed session never
// signs for a key that was forgotten or replaced, and the object's own
// sessions stay bounded and are reused when nobody arms them.
#include "hsm/pkcs11/signing_objects.h"

#include <gtest/gtest.h>

#include <atomic>
#include <iostream>
#include <thread>
#include <vector>

#include "hsm/pkcs11/token.h"
#include "tests/hsm/hsm_environment.h"
#include "tests/hsm/raw_pkcs11.h"
#include "tests/hsm/test_support.h"

namespace m2mvault::hsm::testing {
namespace {

using pkcs11::SigningObjects;

struct Key {
  Bytes id;
  Pkey public_key;
};

Key generate(SigningAlgorithm algorithm = SigningAlgorithm::ec_p256) {
  SecureElement& backend = *setup().backend;
  Key key{backend.new_object_id(), nullptr};
  key.public_key = parse_spki(backend.generate_signing_key(key.id, algorithm).public_key);
  return key;
}

// Signs a digest of `text` and checks the signature with OpenSSL, against
// `key` and against a changed digest.
void expect_verifies(SigningObjects& objects, const Key& key, SignatureScheme scheme,
                     const std::string& text) {
  ASSERT_TRUE(key.public_key);
  Bytes digest = sha256(text_bytes(text));
  const Bytes signature = objects.sign(key.id, scheme, digest);
  EXPECT_TRUE(verifies(key.public_key.get(), scheme, digest, signature)) << text;
  digest[5] ^= 0x01;
  EXPECT_FALSE(verifies(key.public_key.get(), scheme, digest, signature)) << text;
}

class SigningObjectsTest : public ::testing::Test {
 protected:
  pkcs11::Token token_{setup().config};
  SigningObjects objects_{token_};
};

TEST_F(SigningObjectsTest, AnArmedSessionMakesTheNextSignatureAndIsArmedAgain) {
  const Key key = generate();
  expect_verifies(objects_, key, SignatureScheme::ecdsa, "first");
  EXPECT_EQ(objects_.sessions_open(), 1u);
  EXPECT_EQ(objects_.sessions_armed(), 0u);  // parked, not armed yet

  for (int i = 0; i < 20; ++i) {
    objects_.arm_pending();
    ASSERT_EQ(objects_.sessions_armed(), 1u);
    expect_verifies(objects_, key, SignatureScheme::ecdsa, "armed " + std::to_string(i));
    EXPECT_EQ(objects_.sessions_armed(), 0u);  // the signature used it
    EXPECT_EQ(objects_.sessions_open(), 1u);
  }
  setup().backend->destroy_token_object(key.id);
}

TEST_F(SigningObjectsTest, WithoutArmingTheParkedSessionIsReused) {
  const Key key = generate();
  for (int i = 0; i < 10; ++i) expect_verifies(objects_, key, SignatureScheme::ecdsa, "unarmed");
  EXPECT_EQ(objects_.sessions_open(), 1u);
  EXPECT_EQ(objects_.sessions_armed(), 0u);
  setup().backend->destroy_token_object(key.id);
}

TEST_F(SigningObjectsTest, RsaPkcs1IsArmedAndPssSignsBesideIt) {
  const Key key = generate(SigningAlgorithm::rsa_2048);
  expect_verifies(objects_, key, SignatureScheme::rsa_pkcs1, "pkcs1");
  objects_.arm_pending();
  ASSERT_EQ(objects_.sessions_armed(), 1u);
  // PSS names its digest in its parameters: it is never armed and leaves
  // the PKCS#1 session as it is.
  expect_verifies(objects_, key, SignatureScheme::rsa_pss, "pss");
  EXPECT_EQ(objects_.sessions_armed(), 1u);
  objects_.arm_pending();
  EXPECT_EQ(objects_.sessions_armed(), 1u);
  expect_verifies(objects_, key, SignatureScheme::rsa_pkcs1, "pkcs1 again");
  EXPECT_EQ(objects_.sessions_armed(), 0u);
  setup().backend->destroy_token_object(key.id);
}

TEST_F(SigningObjectsTest, ForgetAndClearCloseTheArmedSessions) {
  const Key first = generate();
  const Key second = generate();
  expect_verifies(objects_, first, SignatureScheme::ecdsa, "first");
  objects_.arm_pending();
  expect_verifies(objects_, second, SignatureScheme::ecdsa, "second");
  objects_.arm_pending();
  ASSERT_EQ(objects_.sessions_armed(), 2u);
  ASSERT_EQ(objects_.sessions_open(), 2u);

  objects_.forget(first.id);
  EXPECT_EQ(objects_.sessions_armed(), 1u);
  EXPECT_EQ(objects_.sessions_open(), 1u);
  expect_verifies(objects_, first, SignatureScheme::ecdsa, "after forget");  // found again

  objects_.clear();
  EXPECT_EQ(objects_.sessions_armed(), 0u);
  EXPECT_EQ(objects_.sessions_open(), 0u);
  expect_verifies(objects_, second, SignatureScheme::ecdsa, "after clear");
  setup().backend->destroy_token_object(first.id);
  setup().backend->destroy_token_object(second.id);
}

// The token object is destroyed outside the vault and a new key takes its
// CKA_ID. After the recheck interval the new key signs: a session armed
// with the old key's copy must not.
TEST_F(SigningObjectsTest, AReplacedKeyIsNeverSignedWithFromASessionArmedForTheOldOne) {
  const Key old_key = generate();
  expect_verifies(objects_, old_key, SignatureScheme::ecdsa, "old");
  objects_.arm_pending();
  ASSERT_EQ(objects_.sessions_armed(), 1u);

  RawSession raw(setup().config.module, pkcs11::kDefaultTokenLabel, setup().user_pin);
  ASSERT_TRUE(raw.login_rv() == CKR_OK || raw.login_rv() == CKR_USER_ALREADY_LOGGED_IN);
  CK_BBOOL yes = CK_TRUE;
  for (const CK_OBJECT_HANDLE object :
       raw.find({{CKA_ID, const_cast<std::uint8_t*>(old_key.id.data()), old_key.id.size()},
                 {CKA_TOKEN, &yes, sizeof yes}})) {
    ASSERT_EQ(raw.fn()->C_DestroyObject(raw.handle(), object), CKR_OK);
  }
  Key new_key{old_key.id, nullptr};
  new_key.public_key = parse_spki(
      setup().backend->generate_signing_key(new_key.id, SigningAlgorithm::ec_p256).public_key);

  std::this_thread::sleep_for(SigningObjects::kRecheck + std::chrono::milliseconds(200));
  expect_verifies(objects_, new_key, SignatureScheme::ecdsa, "new");
  objects_.arm_pending();
  expect_verifies(objects_, new_key, SignatureScheme::ecdsa, "new, armed");
  const Bytes digest = sha256(text_bytes("which key?"));
  const Bytes signature = objects_.sign(new_key.id, SignatureScheme::ecdsa, digest);
  EXPECT_FALSE(verifies(old_key.public_key.get(), SignatureScheme::ecdsa, digest, signature));
  EXPECT_EQ(objects_.sessions_open(), 1u);  // the old key's armed session was closed
  setup().backend->destroy_token_object(new_key.id);
}

TEST_F(SigningObjectsTest, OwnSessionsStayWithinTheLimitWhenManyKeysAreArmed) {
  std::vector<Key> keys;
  for (std::size_t i = 0; i < SigningObjects::kMaxSessions + 4; ++i) keys.push_back(generate());
  for (int round = 0; round < 2; ++round) {
    for (const Key& key : keys) {
      expect_verifies(objects_, key, SignatureScheme::ecdsa, "round " + std::to_string(round));
      objects_.arm_pending();
      EXPECT_LE(objects_.sessions_open(), SigningObjects::kMaxSessions);
    }
  }
  EXPECT_EQ(objects_.sessions_armed(), SigningObjects::kMaxSessions);
  for (const Key& key : keys) setup().backend->destroy_token_object(key.id);
}

// Eight threads sign with two keys and arm, while another thread keeps
// forgetting the first key (as a delete through the vault does before the
// key is found again). A signature may then fail and be retried by its
// caller, but none may be made with the wrong key or verify wrongly.
TEST_F(SigningObjectsTest, ThreadsSignAndArmWhileAKeyIsForgotten) {
  std::vector<Key> keys;
  keys.push_back(generate());
  keys.push_back(generate());
  std::atomic<int> wrong{0};
  std::atomic<int> made{0};
  std::atomic<int> failed{0};
  std::atomic<bool> done{false};
  std::thread forgetter([&] {
    while (!done) {
      objects_.forget(keys[0].id);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 40; ++i) {
        const Key& key = keys[(t + i) % keys.size()];
        const Key& other = keys[(t + i + 1) % keys.size()];
        const Bytes digest = sha256(text_bytes(std::to_string(t) + "/" + std::to_string(i)));
        try {
          const Bytes signature = objects_.sign(key.id, SignatureScheme::ecdsa, digest);
          ++made;
          if (!verifies(key.public_key.get(), SignatureScheme::ecdsa, digest, signature) ||
              verifies(other.public_key.get(), SignatureScheme::ecdsa, digest, signature)) {
            ++wrong;
          }
        } catch (const Error&) {
          ++failed;
        }
        objects_.arm_pending();
      }
    });
  }
  for (auto& thread : threads) thread.join();
  done = true;
  forgetter.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(made.load(), 8 * 40 / 2);  // the second key is never forgotten
  EXPECT_LE(objects_.sessions_open(), SigningObjects::kMaxSessions);
  objects_.clear();
  EXPECT_EQ(objects_.sessions_open(), 0u);
  EXPECT_EQ(objects_.sessions_armed(), 0u);
  std::cout << made.load() << " signatures made, " << failed.load() << " failed\n";
  for (const Key& key : keys) setup().backend->destroy_token_object(key.id);
}

}  // namespace
}  // namespace m2mvault::hsm::testing
