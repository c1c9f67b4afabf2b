// UTF-8 and Unicode helpers shared by the tokenizer pipeline (internal).
#ifndef SLUICE_ENGINE_TOKENIZER_UNICODE_H_
#define SLUICE_ENGINE_TOKENIZER_UNICODE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/strings/string_view.h"

namespace sluice::tokenizer::internal {

// Debian's Abseil is built with its own absl::string_view rather than an
// alias of std::string_view, so heterogeneous lookups and StrCat need this.
inline absl::string_view AsAbsl(std::string_view s) { return {s.data(), s.size()}; }

// Strict UTF-8 validation (no surrogates, no overlongs, <= U+10FFFF).
bool IsValidUtf8(std::string_view s);

// Decodes the code point starting at s[i] of a string already known to be
// valid UTF-8 and returns its byte length.
inline size_t DecodeUtf8(std::string_view s, size_t i, char32_t* cp) {
  const auto b0 = static_cast<uint8_t>(s[i]);
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  if (b0 < 0xE0) {
    *cp = ((b0 & 0x1Fu) << 6) | (static_cast<uint8_t>(s[i + 1]) & 0x3Fu);
    return 2;
  }
  if (b0 < 0xF0) {
    *cp = ((b0 & 0x0Fu) << 12) | ((static_cast<uint8_t>(s[i + 1]) & 0x3Fu) << 6) |
          (static_cast<uint8_t>(s[i + 2]) & 0x3Fu);
    return 3;
  }
  *cp = ((b0 & 0x07u) << 18) | ((static_cast<uint8_t>(s[i + 1]) & 0x3Fu) << 12) |
        ((static_cast<uint8_t>(s[i + 2]) & 0x3Fu) << 6) | (static_cast<uint8_t>(s[i + 3]) & 0x3Fu);
  return 4;
}

// Byte length of the UTF-8 sequence introduced by lead byte b (1 for
// continuation/invalid bytes, so loops always progress).
inline size_t Utf8SequenceLength(uint8_t b) {
  if (b < 0xC0) return 1;
  if (b < 0xE0) return 2;
  if (b < 0xF0) return 3;
  return 4;
}

void AppendUtf8(char32_t cp, std::string* out);

// Rust's String::from_utf8_lossy: each maximal invalid subsequence becomes one
// U+FFFD ("substitution of maximal subparts"). `tokenizers` decoders use it,
// so the exact replacement count matters for exactness.
std::string Utf8Lossy(std::string_view bytes);

// Unicode properties with the semantics of Rust's char methods, which the
// `tokenizers` code uses.
bool IsWhitespace(char32_t cp);  // char::is_whitespace (White_Space)
bool IsNumeric(char32_t cp);     // char::is_numeric (Nd | Nl | No)
bool IsWordChar(char32_t cp);    // regex \w (Alphabetic|M|Nd|Pc|Join_Control)

// The GPT-2 byte-level alphabet: byte b <-> a printable code point.
const std::string& ByteToUnicodeUtf8(uint8_t b);
// Returns -1 when cp is not in the byte-level alphabet.
int UnicodeToByte(char32_t cp);

}  // namespace sluice::tokenizer::internal

#endif  // SLUICE_ENGINE_TOKENIZER_UNICODE_H_
