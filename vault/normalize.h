// Identifier strings (MAF-ID, Enrolee-B-ID, Enrolment-Target-ID) enter the
// TS-0003 10.3 HMACs as UTF-8 after Unicode normalization form NFKC.
#pragma once

#include <string>
#include <string_view>

namespace m2mvault::vault {

// Returns the NFKC form of `text`. Invalid UTF-8 is Error(invalid_argument)
// naming `what` and the byte offset; nothing is ever silently altered.
std::string nfkc(std::string_view text, std::string_view what);

}  // namespace m2mvault::vault
