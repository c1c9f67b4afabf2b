#include "engine/tokenizer/unicode.h"

#include <unicode/uchar.h>

#include <array>

namespace sluice::tokenizer::internal {
namespace {

// Length of the valid prefix of the UTF-8 sequence starting at s[i]: returns
// the full length when the sequence is complete and valid, otherwise the
// number of bytes that form a valid-so-far prefix (at least 1), with
// *complete set accordingly. This follows the Unicode table 3-7 ranges that
// Rust's validator uses.
size_t ValidPrefix(std::string_view s, size_t i, bool* complete) {
  const auto b0 = static_cast<uint8_t>(s[i]);
  *complete = false;
  if (b0 < 0x80) {
    *complete = true;
    return 1;
  }
  size_t need;
  uint8_t lo = 0x80, hi = 0xBF;  // range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 == 0xE0) {
    need = 3;
    lo = 0xA0;
  } else if ((b0 >= 0xE1 && b0 <= 0xEC) || b0 == 0xEE || b0 == 0xEF) {
    need = 3;
  } else if (b0 == 0xED) {
    need = 3;
    hi = 0x9F;
  } else if (b0 == 0xF0) {
    need = 4;
    lo = 0x90;
  } else if (b0 >= 0xF1 && b0 <= 0xF3) {
    need = 4;
  } else if (b0 == 0xF4) {
    need = 4;
    hi = 0x8F;
  } else {
    return 1;
  }
  size_t n = 1;
  for (; n < need; ++n) {
    if (i + n >= s.size()) return n;
    const auto b = static_cast<uint8_t>(s[i + n]);
    const uint8_t l = n == 1 ? lo : 0x80;
    const uint8_t h = n == 1 ? hi : 0xBF;
    if (b < l || b > h) return n;
  }
  *complete = true;
  return need;
}

struct ByteLevelTables {
  std::array<std::string, 256> byte_to_utf8;
  std::array<int16_t, 512> cp_to_byte;
  ByteLevelTables() {
    cp_to_byte.fill(-1);
    // GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the
    // rest are shifted to 256.. in byte order.
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable =
          (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const int cp = printable ? b : next++;
      AppendUtf8(static_cast<char32_t>(cp), &byte_to_utf8[b]);
      cp_to_byte[cp] = static_cast<int16_t>(b);
    }
  }
};

const ByteLevelTables& Tables() {
  static const ByteLevelTables* tables = new ByteLevelTables();
  return *tables;
}

}  // namespace

bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    // Fast path over ASCII.
    if (static_cast<uint8_t>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    bool complete;
    const size_t len = ValidPrefix(s, i, &complete);
    if (!complete) return false;
    i += len;
  }
  return true;
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string Utf8Lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    bool complete;
    const size_t len = ValidPrefix(bytes, i, &complete);
    if (complete) {
      out.append(bytes.data() + i, len);
    } else {
      out.append("\xEF\xBF\xBD");
    }
    i += len;
  }
  return out;
}

bool IsWhitespace(char32_t cp) {
  return u_hasBinaryProperty(static_cast<UChar32>(cp), UCHAR_WHITE_SPACE);
}

bool IsNumeric(char32_t cp) {
  const int8_t type = u_charType(static_cast<UChar32>(cp));
  return type == U_DECIMAL_DIGIT_NUMBER || type == U_LETTER_NUMBER || type == U_OTHER_NUMBER;
}

bool IsWordChar(char32_t cp) {
  const auto c = static_cast<UChar32>(cp);
  if (u_hasBinaryProperty(c, UCHAR_ALPHABETIC) || u_hasBinaryProperty(c, UCHAR_JOIN_CONTROL)) {
    return true;
  }
  const int8_t type = u_charType(c);
  return type == U_NON_SPACING_MARK || type == U_COMBINING_SPACING_MARK ||
         type == U_ENCLOSING_MARK || type == U_DECIMAL_DIGIT_NUMBER ||
         type == U_CONNECTOR_PUNCTUATION;
}

const std::string& ByteToUnicodeUtf8(uint8_t b) { return Tables().byte_to_utf8[b]; }

int UnicodeToByte(char32_t cp) {
  if (cp >= 512) return -1;
  return Tables().cp_to_byte[cp];
}

}  // namespace sluice::tokenizer::internal
