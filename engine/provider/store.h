// STORE for URIs m2mvault:<key name or identifier> (percent-escapes allowed):
// one private key, a vault key (key.h).
#pragma once

#include <openssl/core_dispatch.h>

namespace m2mvault::provider {

extern const OSSL_DISPATCH kStoreFunctions[];

}  // namespace m2mvault::provider
