#include "engine/chat_template/lexer.h"

#include <cmath>
#include <cstdlib>
#include <string>

#include "engine/chat_template/value.h"

namespace sluice::chat::internal {

const char* TokenTypeName(TokenType type) {
  switch (type) {
    case TokenType::kData:
      return "template data";
    case TokenType::kVarBegin:
      return "'{{'";
    case TokenType::kVarEnd:
      return "'}}'";
    case TokenType::kBlockBegin:
      return "'{%'";
    case TokenType::kBlockEnd:
      return "'%}'";
    case TokenType::kName:
      return "name";
    case TokenType::kString:
      return "string";
    case TokenType::kInteger:
      return "integer";
    case TokenType::kFloat:
      return "float";
    case TokenType::kOperator:
      return "operator";
    case TokenType::kEof:
      return "end of template";
  }
  return "token";
}

namespace {

bool IsDigit(char32_t c) { return c >= '0' && c <= '9'; }
bool IsNameStart(char32_t c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool IsNameChar(char32_t c) { return IsNameStart(c) || IsDigit(c); }
bool IsHex(char32_t c) { return IsDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

class Lexer {
 public:
  explicit Lexer(std::u32string src) : s_(std::move(src)) {}

  std::vector<Token> Run() {
    while (pos_ < s_.size()) {
      LexRoot();
    }
    Token eof{TokenType::kEof, "", 0, 0, Pos()};
    out_.push_back(eof);
    return std::move(out_);
  }

 private:
  SourcePos Pos() const { return SourcePos{line_, col_}; }

  // Advances over s_[pos_, to), keeping line and column.
  void AdvanceTo(size_t to) {
    for (; pos_ < to; ++pos_) {
      if (s_[pos_] == '\n') {
        ++line_;
        col_ = 1;
      } else {
        ++col_;
      }
    }
  }

  bool At(size_t p, std::u32string_view lit) const { return s_.compare(p, lit.size(), lit) == 0; }

  [[noreturn]] void Fail(const std::string& msg) { ThrowInvalid(msg, Pos()); }

  void EmitData(std::u32string_view text, SourcePos pos) {
    if (text.empty()) return;
    out_.push_back(Token{TokenType::kData, EncodeUtf8(text), 0, 0, pos});
  }

  // Python's `\s+` at p (Unicode whitespace).
  size_t SkipSpace(size_t p) const {
    while (p < s_.size() && IsPySpace(s_[p])) ++p;
    return p;
  }

  // The text before a tag, with the tag's whitespace control applied. `sign` is the
  // character after the tag's opening delimiter; `lstrip_ok` is false for `{{`.
  std::u32string_view StripText(std::u32string_view text, char32_t sign, bool lstrip_ok) const {
    if (sign == '-') {
      size_t end = text.size();
      while (end > 0 && IsPySpace(text[end - 1])) --end;
      return text.substr(0, end);
    }
    if (sign != '+' && lstrip_ok) {
      const size_t nl = text.rfind(U'\n');
      const size_t l_pos = nl == std::u32string_view::npos ? 0 : nl + 1;
      if ((l_pos > 0 || line_starting_) && l_pos < text.size()) {
        bool all_space = true;
        for (size_t i = l_pos; i < text.size(); ++i) all_space = all_space && IsPySpace(text[i]);
        if (all_space) return text.substr(0, l_pos);
      }
    }
    return text;
  }

  void LexRoot() {
    // Find the next tag opener.
    size_t p = pos_;
    size_t found = std::u32string::npos;
    for (; p + 1 < s_.size(); ++p) {
      if (s_[p] == '{' && (s_[p + 1] == '{' || s_[p + 1] == '%' || s_[p + 1] == '#')) {
        found = p;
        break;
      }
    }
    if (found == std::u32string::npos) {
      const SourcePos pos = Pos();
      EmitData(std::u32string_view(s_).substr(pos_), pos);
      line_starting_ = s_.back() == '\n';
      AdvanceTo(s_.size());
      return;
    }
    const char32_t kind = s_[found + 1];
    char32_t sign = 0;
    if (found + 2 < s_.size() && (s_[found + 2] == '-' || s_[found + 2] == '+')) sign = s_[found + 2];
    const std::u32string_view raw_text = std::u32string_view(s_).substr(pos_, found - pos_);

    // {% raw %} ... {% endraw %}
    if (kind == '%') {
      size_t q = SkipSpace(found + 2 + (sign ? 1 : 0));
      if (At(q, U"raw")) {
        size_t r = SkipSpace(q + 3);
        size_t body = std::u32string::npos;
        if (At(r, U"-%}")) {
          body = SkipSpace(r + 3);
        } else if (At(r, U"%}")) {
          body = r + 2;
        }
        if (body != std::u32string::npos) {
          LexRaw(raw_text, sign, found, body);
          return;
        }
      }
    }

    const SourcePos text_pos = Pos();
    EmitData(StripText(raw_text, sign, kind != '{'), text_pos);
    AdvanceTo(found);
    const SourcePos tag_pos = Pos();
    AdvanceTo(found + 2 + (sign ? 1 : 0));
    line_starting_ = false;
    if (kind == '#') {
      LexComment();
    } else if (kind == '%') {
      out_.push_back(Token{TokenType::kBlockBegin, "{%", 0, 0, tag_pos});
      LexTag(/*block=*/true);
    } else {
      out_.push_back(Token{TokenType::kVarBegin, "{{", 0, 0, tag_pos});
      LexTag(/*block=*/false);
    }
  }

  void LexRaw(std::u32string_view text, char32_t sign, size_t tag_start, size_t body) {
    const SourcePos text_pos = Pos();
    EmitData(StripText(text, sign, true), text_pos);
    AdvanceTo(body);
    // Find `{%[-+]? \s* endraw \s* (+%} | -%}\s* | %}\n?)`.
    for (size_t p = body; p + 1 < s_.size(); ++p) {
      if (s_[p] != '{' || s_[p + 1] != '%') continue;
      size_t q = p + 2;
      char32_t esign = 0;
      if (q < s_.size() && (s_[q] == '-' || s_[q] == '+')) esign = s_[q++];
      q = SkipSpace(q);
      if (!At(q, U"endraw")) continue;
      q = SkipSpace(q + 6);
      size_t end;
      bool ends_newline = false;
      if (At(q, U"+%}")) {
        end = q + 3;
      } else if (At(q, U"-%}")) {
        end = SkipSpace(q + 3);
      } else if (At(q, U"%}")) {
        end = q + 2;
        if (end < s_.size() && s_[end] == '\n') ++end;
      } else {
        continue;
      }
      ends_newline = end > 0 && s_[end - 1] == '\n';
      const SourcePos pos = Pos();
      EmitData(StripText(std::u32string_view(s_).substr(body, p - body), esign, true), pos);
      AdvanceTo(end);
      line_starting_ = ends_newline;
      return;
    }
    (void)tag_start;
    Fail("Missing end of raw directive");
  }

  void LexComment() {
    for (size_t p = pos_; p + 1 < s_.size(); ++p) {
      size_t end = 0;
      if (s_[p] == '+' && At(p + 1, U"#}")) {
        end = p + 3;
      } else if (s_[p] == '-' && At(p + 1, U"#}")) {
        end = SkipSpace(p + 3);
      } else if (At(p, U"#}")) {
        end = p + 2;
        if (end < s_.size() && s_[end] == '\n') ++end;
      } else {
        continue;
      }
      line_starting_ = s_[end - 1] == '\n';
      AdvanceTo(end);
      return;
    }
    Fail("Missing end of comment tag");
  }

  void LexTag(bool block) {
    std::vector<char32_t> balance;
    const std::u32string_view end_tag = block ? U"%}" : U"}}";
    while (true) {
      if (pos_ >= s_.size()) return;  // the parser reports the unclosed tag
      if (balance.empty()) {
        size_t end = 0;
        if (block && s_[pos_] == '+' && At(pos_ + 1, end_tag)) {
          end = pos_ + 3;
        } else if (s_[pos_] == '-' && At(pos_ + 1, end_tag)) {
          end = SkipSpace(pos_ + 3);
        } else if (At(pos_, end_tag)) {
          end = pos_ + 2;
          if (block && end < s_.size() && s_[end] == '\n') ++end;
        }
        if (end != 0) {
          out_.push_back(Token{block ? TokenType::kBlockEnd : TokenType::kVarEnd,
                               block ? "%}" : "}}", 0, 0, Pos()});
          line_starting_ = s_[end - 1] == '\n';
          AdvanceTo(end);
          return;
        }
      }
      const char32_t c = s_[pos_];
      line_starting_ = false;
      if (IsPySpace(c)) {
        const size_t e = SkipSpace(pos_);
        line_starting_ = s_[e - 1] == '\n';
        AdvanceTo(e);
        continue;
      }
      if (IsDigit(c)) {
        LexNumber();
        continue;
      }
      if (IsNameStart(c)) {
        size_t e = pos_;
        while (e < s_.size() && IsNameChar(s_[e])) ++e;
        if (e < s_.size() && s_[e] >= 0x80 && !IsPySpace(s_[e])) {
          ThrowUnimplemented("non-ASCII identifiers are not supported", Pos());
        }
        out_.push_back(Token{TokenType::kName, EncodeUtf8(std::u32string_view(s_).substr(pos_, e - pos_)), 0,
                             0, Pos()});
        AdvanceTo(e);
        continue;
      }
      if (c == '\'' || c == '"') {
        LexString(c);
        continue;
      }
      static const char* const kOps2[] = {"//", "**", "==", "!=", ">=", "<="};
      char opbuf[2] = {0, 0};
      size_t oplen = 0;
      for (const char* o : kOps2) {
        if (pos_ + 1 < s_.size() && s_[pos_] == static_cast<char32_t>(o[0]) &&
            s_[pos_ + 1] == static_cast<char32_t>(o[1])) {
          opbuf[0] = o[0];
          opbuf[1] = o[1];
          oplen = 2;
          break;
        }
      }
      if (oplen == 0) {
        static const std::u32string_view kOps1 = U"+-/*%~[](){}><=.:|,;";
        if (kOps1.find(c) == std::u32string_view::npos) {
          if (c >= 0x80 && !IsPySpace(c)) ThrowUnimplemented("non-ASCII identifiers are not supported", Pos());
          std::string ch;
          AppendUtf8(c, &ch);
          Fail("unexpected char '" + ch + "'");
        }
        opbuf[0] = static_cast<char>(c);
        oplen = 1;
      }
      const std::string op(opbuf, oplen);
      if (op == "{" || op == "(" || op == "[") {
        balance.push_back(op == "{" ? '}' : op == "(" ? ')' : ']');
      } else if (op == "}" || op == ")" || op == "]") {
        if (balance.empty()) Fail("unexpected '" + op + "'");
        const char32_t expected = balance.back();
        balance.pop_back();
        if (expected != static_cast<char32_t>(op[0])) {
          Fail("unexpected '" + op + "', expected '" + std::string(1, static_cast<char>(expected)) + "'");
        }
      }
      out_.push_back(Token{TokenType::kOperator, op, 0, 0, Pos()});
      AdvanceTo(pos_ + op.size());
    }
  }

  // (\d+_)*\d+ at p; returns the end or npos.
  size_t Digits(size_t p) const {
    if (p >= s_.size() || !IsDigit(s_[p])) return std::u32string::npos;
    size_t e = p;
    while (true) {
      while (e < s_.size() && IsDigit(s_[e])) ++e;
      if (e + 1 < s_.size() && s_[e] == '_' && IsDigit(s_[e + 1])) {
        ++e;
        continue;
      }
      return e;
    }
  }

  void LexNumber() {
    const SourcePos pos = Pos();
    const bool after_dot = pos_ > 0 && s_[pos_ - 1] == '.';
    // Float: digits, then (.digits)? e[+-]?digits | .digits
    if (!after_dot) {
      const size_t int_end = Digits(pos_);
      size_t e = std::u32string::npos;
      size_t frac_end = std::u32string::npos;
      if (int_end < s_.size() && s_[int_end] == '.') frac_end = Digits(int_end + 1);
      const size_t mant_end = frac_end != std::u32string::npos ? frac_end : int_end;
      if (mant_end < s_.size() && (s_[mant_end] == 'e' || s_[mant_end] == 'E')) {
        size_t q = mant_end + 1;
        if (q < s_.size() && (s_[q] == '+' || s_[q] == '-')) ++q;
        e = Digits(q);
      }
      if (e == std::u32string::npos && frac_end != std::u32string::npos) e = frac_end;
      if (e != std::u32string::npos) {
        std::string text;
        for (size_t i = pos_; i < e; ++i) {
          if (s_[i] != '_') text.push_back(static_cast<char>(s_[i]));
        }
        Token t{TokenType::kFloat, text, 0, std::strtod(text.c_str(), nullptr), pos};
        out_.push_back(t);
        AdvanceTo(e);
        return;
      }
    }
    // Integer: 0b / 0o / 0x / [1-9](_?\d)* / 0(_?0)*
    int base = 10;
    size_t p = pos_;
    std::string digits;
    auto take = [&](auto pred) {
      size_t q = p;
      while (true) {
        if (q < s_.size() && pred(s_[q])) {
          digits.push_back(static_cast<char>(s_[q]));
          ++q;
        } else if (q + 1 < s_.size() && s_[q] == '_' && pred(s_[q + 1])) {
          ++q;
        } else {
          break;
        }
      }
      return q;
    };
    size_t e;
    const char32_t c1 = p + 1 < s_.size() ? s_[p + 1] : 0;
    if (s_[p] == '0' && (c1 == 'b' || c1 == 'B' || c1 == 'o' || c1 == 'O' || c1 == 'x' || c1 == 'X')) {
      base = (c1 == 'b' || c1 == 'B') ? 2 : (c1 == 'o' || c1 == 'O') ? 8 : 16;
      p += 2;
      e = take([base](char32_t c) {
        if (base == 2) return c == '0' || c == '1';
        if (base == 8) return c >= '0' && c <= '7';
        return IsHex(c);
      });
      if (digits.empty()) {  // "0x" alone: the integer is "0", then a name
        base = 10;
        digits.assign(1, '0');
        e = pos_ + 1;
      }
    } else if (s_[p] == '0') {
      e = take([](char32_t c) { return c == '0'; });
    } else {
      e = take([](char32_t c) { return IsDigit(c); });
    }
    errno = 0;
    char* endp = nullptr;
    const long long v = std::strtoll(digits.c_str(), &endp, base);
    if (errno == ERANGE) ThrowUnimplemented("integer literal " + digits + " exceeds 64 bits", pos);
    out_.push_back(Token{TokenType::kInteger, digits, static_cast<int64_t>(v), 0, pos});
    AdvanceTo(e);
  }

  // A string literal, decoded as Python's "unicode-escape" codec decodes the
  // backslash-replaced text (what jinja2 does).
  void LexString(char32_t quote) {
    const SourcePos pos = Pos();
    size_t p = pos_ + 1;
    size_t end = std::u32string::npos;
    while (p < s_.size()) {
      if (s_[p] == '\\') {
        p += 2;
        continue;
      }
      if (s_[p] == quote) {
        end = p;
        break;
      }
      ++p;
    }
    if (end == std::u32string::npos) Fail("unexpected char '" + std::string(1, static_cast<char>(quote)) + "'");
    std::string out;
    for (size_t i = pos_ + 1; i < end;) {
      const char32_t c = s_[i];
      if (c != '\\') {
        AppendUtf8(c, &out);
        ++i;
        continue;
      }
      const char32_t n = s_[i + 1];
      i += 2;
      switch (n) {
        case '\n':
          break;
        case '\\':
          out.push_back('\\');
          break;
        case '\'':
          out.push_back('\'');
          break;
        case '"':
          out.push_back('"');
          break;
        case 'a':
          out.push_back('\a');
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'n':
          out.push_back('\n');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'v':
          out.push_back('\v');
          break;
        case 'x':
        case 'u':
        case 'U': {
          const size_t want = n == 'x' ? 2 : n == 'u' ? 4 : 8;
          char32_t cp = 0;
          size_t k = 0;
          for (; k < want && i + k < end && IsHex(s_[i + k]); ++k) {
            const char32_t h = s_[i + k];
            cp = cp * 16 + (IsDigit(h) ? h - '0' : (h | 0x20) - 'a' + 10);
          }
          if (k < want) {
            ThrowInvalid(std::string("truncated \\") + static_cast<char>(n) + std::string(want, 'X') + " escape",
                         pos);
          }
          if (cp > 0x10FFFF) ThrowInvalid("illegal Unicode character", pos);
          if (cp >= 0xD800 && cp <= 0xDFFF) {
            ThrowUnimplemented("surrogate code points in string literals are not supported", pos);
          }
          AppendUtf8(cp, &out);
          i += want;
          break;
        }
        case 'N':
          ThrowUnimplemented("\\N{...} escapes in string literals are not supported", pos);
        default:
          if (n >= '0' && n <= '7') {
            char32_t cp = n - '0';
            for (int k = 0; k < 2 && i < end && s_[i] >= '0' && s_[i] <= '7'; ++k, ++i) cp = cp * 8 + (s_[i] - '0');
            AppendUtf8(cp, &out);
          } else if (n >= 0x80) {
            // backslashreplace turned the character into an escape, whose backslash
            // this one escapes: the text of that escape stays literal.
            char b[16];
            if (n < 0x100) {
              std::snprintf(b, sizeof(b), "\\x%02x", static_cast<unsigned>(n));
            } else if (n < 0x10000) {
              std::snprintf(b, sizeof(b), "\\u%04x", static_cast<unsigned>(n));
            } else {
              std::snprintf(b, sizeof(b), "\\U%08x", static_cast<unsigned>(n));
            }
            out += b;
          } else {
            out.push_back('\\');
            AppendUtf8(n, &out);
          }
      }
    }
    out_.push_back(Token{TokenType::kString, out, 0, 0, pos});
    AdvanceTo(end + 1);
  }

  std::u32string s_;
  size_t pos_ = 0;
  int line_ = 1;
  int col_ = 1;
  bool line_starting_ = true;
  std::vector<Token> out_;
};

}  // namespace

std::vector<Token> Tokenize(std::string_view source) {
  if (!ValidUtf8(source)) ThrowInvalid("chat template is not valid UTF-8");
  // Newlines normalized to \n; one trailing newline dropped (keep_trailing_newline=False).
  std::u32string src;
  const std::u32string decoded = DecodeUtf8(source);
  src.reserve(decoded.size());
  for (size_t i = 0; i < decoded.size(); ++i) {
    if (decoded[i] == '\r') {
      src.push_back('\n');
      if (i + 1 < decoded.size() && decoded[i + 1] == '\n') ++i;
    } else {
      src.push_back(decoded[i]);
    }
  }
  if (!src.empty() && src.back() == '\n') src.pop_back();
  Lexer lexer(std::move(src));
  return lexer.Run();
}

}  // namespace sluice::chat::internal
