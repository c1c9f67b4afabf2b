// Filters, tests, str/dict/list methods and globals, with the semantics of jinja2
// 3.1 (filters.py, tests.py) and CPython 3, as transformers' sandboxed environment
// exposes them.
#include <unicode/uchar.h>
#include <unicode/ustring.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <limits>
#include <set>
#include <string>
#include <utility>

#include "engine/chat_template/interpreter.h"

namespace sluice::chat::internal {

// Python's a % b for ints (b != 0).
int64_t FloorModPublic(int64_t a, int64_t b);

namespace {

// ---- argument binding ------------------------------------------------------------------------

// Binds positional and keyword arguments to a Python-style signature.
class Bound {
 public:
  Bound(const std::string& fname, const Arguments& args, std::vector<const char*> names)
      : values_(names.size()) {
    if (args.pos.size() > names.size()) {
      ThrowInvalid(fname + "() takes at most " + std::to_string(names.size()) + " argument(s) (" +
                   std::to_string(args.pos.size()) + " given)");
    }
    for (size_t i = 0; i < args.pos.size(); ++i) values_[i] = args.pos[i];
    for (const auto& [k, v] : args.kw) {
      size_t i = 0;
      while (i < names.size() && k != names[i]) ++i;
      if (i == names.size()) ThrowInvalid(fname + "() got an unexpected keyword argument '" + k + "'");
      if (values_[i]) ThrowInvalid(fname + "() got multiple values for argument '" + k + "'");
      values_[i] = v;
    }
  }
  bool has(size_t i) const { return values_[i].has_value(); }
  Value get(size_t i, Value dflt = Value::None()) const { return values_[i] ? *values_[i] : dflt; }

 private:
  std::vector<std::optional<Value>> values_;
};

int64_t AsIndex(const Value& v, const std::string& what) {
  if (v.is_int() || v.is_bool()) return v.as_int();
  if (v.is_undefined()) ThrowInvalid(v.undefined_hint());
  ThrowInvalid("'" + v.TypeName() + "' object cannot be interpreted as an integer (" + what + ")");
}

const std::string& AsStr(const Value& v, const std::string& what) {
  if (v.is_string()) return v.str();
  if (v.is_undefined()) ThrowInvalid(v.undefined_hint());
  ThrowInvalid(what + " must be str, not " + v.TypeName());
}

Value Str(std::string s) { return Value::String(std::move(s)); }

// ---- Unicode helpers --------------------------------------------------------------------------

std::u16string ToUtf16(const std::string& s) {
  std::u16string out(s.size() + 1, u'\0');
  int32_t len = 0;
  UErrorCode err = U_ZERO_ERROR;
  u_strFromUTF8(reinterpret_cast<UChar*>(out.data()), static_cast<int32_t>(out.size()), &len, s.data(),
                static_cast<int32_t>(s.size()), &err);
  if (U_FAILURE(err)) ThrowInvalid("invalid UTF-8 in a string");
  out.resize(len);
  return out;
}

std::string FromUtf16(const std::u16string& s) {
  std::string out(s.size() * 3 + 1, '\0');
  int32_t len = 0;
  UErrorCode err = U_ZERO_ERROR;
  u_strToUTF8(out.data(), static_cast<int32_t>(out.size()), &len, reinterpret_cast<const UChar*>(s.data()),
              static_cast<int32_t>(s.size()), &err);
  if (U_FAILURE(err)) ThrowInvalid("invalid UTF-16 in a string");
  out.resize(len);
  return out;
}

enum class CaseOp { kUpper, kLower, kTitle };

std::string IcuCase(const std::string& s, CaseOp op) {
  bool ascii = true;
  for (unsigned char c : s) ascii = ascii && c < 0x80;
  if (ascii && op != CaseOp::kTitle) {
    std::string r = s;
    for (char& c : r) c = static_cast<char>(op == CaseOp::kUpper ? std::toupper(static_cast<unsigned char>(c))
                                                                 : std::tolower(static_cast<unsigned char>(c)));
    return r;
  }
  const std::u16string in = ToUtf16(s);
  std::u16string out(in.size() * 3 + 8, u'\0');
  UErrorCode err = U_ZERO_ERROR;
  int32_t len;
  auto* dst = reinterpret_cast<UChar*>(out.data());
  const auto* src = reinterpret_cast<const UChar*>(in.data());
  const auto cap = static_cast<int32_t>(out.size());
  const auto n = static_cast<int32_t>(in.size());
  if (op == CaseOp::kUpper) {
    len = u_strToUpper(dst, cap, src, n, "", &err);
  } else if (op == CaseOp::kLower) {
    len = u_strToLower(dst, cap, src, n, "", &err);
  } else {
    len = u_strToTitle(dst, cap, src, n, nullptr, "", &err);
  }
  if (U_FAILURE(err)) ThrowInvalid("case mapping failed");
  out.resize(len);
  return FromUtf16(out);
}

std::string CodePoint(char32_t c) {
  std::string s;
  AppendUtf8(c, &s);
  return s;
}

bool IsCased(char32_t c) { return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_CASED); }
bool IsCaseIgnorable(char32_t c) { return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_CASE_IGNORABLE); }

// CPython's lower_ucs4 for one character of `s` (final sigma included).
std::string LowerAt(const std::u32string& s, size_t i) {
  const char32_t c = s[i];
  if (c == 0x3A3) {
    bool before = false;
    for (size_t j = i; j-- > 0;) {
      if (IsCaseIgnorable(s[j])) continue;
      before = IsCased(s[j]);
      break;
    }
    bool after = false;
    for (size_t j = i + 1; j < s.size(); ++j) {
      if (IsCaseIgnorable(s[j])) continue;
      after = IsCased(s[j]);
      break;
    }
    return CodePoint(before && !after ? 0x3C2 : 0x3C3);
  }
  if (c < 0x80) return std::string(1, static_cast<char>(std::tolower(static_cast<int>(c))));
  return IcuCase(CodePoint(c), CaseOp::kLower);
}

std::string TitleChar(char32_t c) {
  if (c < 0x80) return std::string(1, static_cast<char>(std::toupper(static_cast<int>(c))));
  return IcuCase(CodePoint(c), CaseOp::kTitle);
}

// str.title()
std::string PyTitle(const std::string& str) {
  const std::u32string s = DecodeUtf8(str);
  std::string out;
  bool prev_cased = false;
  for (size_t i = 0; i < s.size(); ++i) {
    out += prev_cased ? LowerAt(s, i) : TitleChar(s[i]);
    prev_cased = IsCased(s[i]);
  }
  return out;
}

// str.capitalize()
std::string PyCapitalize(const std::string& str) {
  const std::u32string s = DecodeUtf8(str);
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) out += i == 0 ? TitleChar(s[i]) : LowerAt(s, i);
  return out;
}

std::u32string PyStrip(const std::u32string& s, const std::optional<std::u32string>& chars, bool left, bool right) {
  auto strip_it = [&](char32_t c) { return chars ? chars->find(c) != std::u32string::npos : IsPySpace(c); };
  size_t b = 0, e = s.size();
  if (left) {
    while (b < e && strip_it(s[b])) ++b;
  }
  if (right) {
    while (e > b && strip_it(s[e - 1])) --e;
  }
  return s.substr(b, e - b);
}

std::string StripValue(const std::string& s, const Value& chars, bool left, bool right) {
  std::optional<std::u32string> set;
  if (!chars.is_none()) set = DecodeUtf8(AsStr(chars, "strip arg"));
  return EncodeUtf8(PyStrip(DecodeUtf8(s), set, left, right));
}

List PySplit(const std::string& str, const Value& sep, int64_t maxsplit, bool from_right) {
  List out;
  if (sep.is_none()) {
    const std::u32string s = DecodeUtf8(str);
    if (!from_right) {
      size_t i = 0;
      while (true) {
        while (i < s.size() && IsPySpace(s[i])) ++i;
        if (i >= s.size()) break;
        if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
          out.push_back(Str(EncodeUtf8(s.substr(i))));
          break;
        }
        size_t j = i;
        while (j < s.size() && !IsPySpace(s[j])) ++j;
        out.push_back(Str(EncodeUtf8(s.substr(i, j - i))));
        i = j;
      }
    } else {
      size_t e = s.size();
      while (true) {
        while (e > 0 && IsPySpace(s[e - 1])) --e;
        if (e == 0) break;
        if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
          out.push_back(Str(EncodeUtf8(s.substr(0, e))));
          break;
        }
        size_t b = e;
        while (b > 0 && !IsPySpace(s[b - 1])) --b;
        out.push_back(Str(EncodeUtf8(s.substr(b, e - b))));
        e = b;
      }
      std::reverse(out.begin(), out.end());
    }
    return out;
  }
  const std::string& d = AsStr(sep, "separator");
  if (d.empty()) ThrowInvalid("empty separator");
  if (!from_right) {
    size_t i = 0;
    while (true) {
      if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
        out.push_back(Str(str.substr(i)));
        break;
      }
      const size_t j = str.find(d, i);
      if (j == std::string::npos) {
        out.push_back(Str(str.substr(i)));
        break;
      }
      out.push_back(Str(str.substr(i, j - i)));
      i = j + d.size();
    }
  } else {
    size_t e = str.size();
    while (true) {
      if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
        out.push_back(Str(str.substr(0, e)));
        break;
      }
      const size_t j = e >= d.size() ? str.rfind(d, e - d.size()) : std::string::npos;
      if (j == std::string::npos) {
        out.push_back(Str(str.substr(0, e)));
        break;
      }
      out.push_back(Str(str.substr(j + d.size(), e - j - d.size())));
      e = j;
    }
    std::reverse(out.begin(), out.end());
  }
  return out;
}

bool IsLineBreak(char32_t c) {
  switch (c) {
    case '\n': case '\r': case 0x0B: case 0x0C: case 0x1C: case 0x1D: case 0x1E:
    case 0x85: case 0x2028: case 0x2029:
      return true;
    default:
      return false;
  }
}

// str.splitlines(keepends)
std::vector<std::u32string> SplitLines(const std::u32string& s, bool keepends) {
  std::vector<std::u32string> out;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = i;
    while (j < s.size() && !IsLineBreak(s[j])) ++j;
    size_t eol = j;
    if (j < s.size()) {
      eol = (s[j] == '\r' && j + 1 < s.size() && s[j + 1] == '\n') ? j + 2 : j + 1;
    }
    out.push_back(s.substr(i, (keepends ? eol : j) - i));
    i = eol;
  }
  return out;
}

std::string Replace(const std::string& s, const std::string& old, const std::string& rep, int64_t count) {
  std::string out;
  if (old.empty()) {
    const std::u32string cps = DecodeUtf8(s);
    int64_t n = 0;
    for (size_t i = 0; i <= cps.size(); ++i) {
      if (count < 0 || n < count) {
        out += rep;
        ++n;
      }
      if (i < cps.size()) AppendUtf8(cps[i], &out);
    }
    return out;
  }
  size_t i = 0;
  int64_t n = 0;
  while (count < 0 || n < count) {
    const size_t j = s.find(old, i);
    if (j == std::string::npos) break;
    out.append(s, i, j - i);
    out += rep;
    i = j + old.size();
    ++n;
  }
  out.append(s, i, std::string::npos);
  return out;
}

// Python slice-style [start, end) bounds over n code points.
void SubBounds(const Bound& b, size_t first, size_t n, size_t* lo, size_t* hi) {
  auto adj = [&](const Value& v, int64_t dflt) -> int64_t {
    if (v.is_none()) return dflt;
    int64_t i = AsIndex(v, "slice index");
    if (i < 0) i = std::max<int64_t>(0, i + static_cast<int64_t>(n));
    return std::min<int64_t>(i, static_cast<int64_t>(n));
  };
  *lo = static_cast<size_t>(adj(b.get(first), 0));
  *hi = static_cast<size_t>(adj(b.get(first + 1), static_cast<int64_t>(n)));
}

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '\'':
        out += "&#39;";
        break;
      case '"':
        out += "&#34;";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

// Python's float(str).
std::optional<double> ParseFloat(const std::string& str) {
  const std::u32string s32 = PyStrip(DecodeUtf8(str), std::nullopt, true, true);
  std::string s;
  for (char32_t c : s32) {
    if (c >= 0x80) return std::nullopt;
    s.push_back(static_cast<char>(c));
  }
  std::string lower = s;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  size_t k = 0;
  bool neg = false;
  if (k < lower.size() && (lower[k] == '+' || lower[k] == '-')) neg = lower[k++] == '-';
  const std::string body = lower.substr(k);
  if (body == "inf" || body == "infinity") return neg ? -HUGE_VAL : HUGE_VAL;
  if (body == "nan") return std::nan("");
  // digits with single underscores between digits, '.', exponent
  std::string clean;
  bool digits = false, prev_digit = false;
  size_t i = 0;
  auto run = [&](bool required) {
    bool any = false;
    while (i < body.size()) {
      if (std::isdigit(static_cast<unsigned char>(body[i]))) {
        clean.push_back(body[i++]);
        any = prev_digit = true;
      } else if (body[i] == '_' && prev_digit && i + 1 < body.size() &&
                 std::isdigit(static_cast<unsigned char>(body[i + 1]))) {
        ++i;
      } else {
        break;
      }
    }
    prev_digit = false;
    return any || !required;
  };
  digits = run(false) && !clean.empty();
  if (i < body.size() && body[i] == '.') {
    clean.push_back('.');
    ++i;
    const size_t before = clean.size();
    run(false);
    digits = digits || clean.size() > before;
  }
  if (!digits) return std::nullopt;
  if (i < body.size() && body[i] == 'e') {
    clean.push_back('e');
    ++i;
    if (i < body.size() && (body[i] == '+' || body[i] == '-')) clean.push_back(body[i++]);
    const size_t before = clean.size();
    run(true);
    if (clean.size() == before) return std::nullopt;
  }
  if (i != body.size()) return std::nullopt;
  const double v = std::strtod(clean.c_str(), nullptr);
  return neg ? -v : v;
}

// Python's int(str, base) for base 10 (and 0/2/8/16 with prefixes).
std::optional<int64_t> ParseInt(const std::string& str, int64_t base) {
  const std::u32string s32 = PyStrip(DecodeUtf8(str), std::nullopt, true, true);
  std::string s;
  for (char32_t c : s32) {
    if (c >= 0x80) return std::nullopt;
    s.push_back(static_cast<char>(std::tolower(static_cast<int>(c))));
  }
  size_t i = 0;
  bool neg = false;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) neg = s[i++] == '-';
  if (base == 0 || base == 16 || base == 8 || base == 2) {
    if (s.size() >= i + 2 && s[i] == '0' && (s[i + 1] == 'x' || s[i + 1] == 'o' || s[i + 1] == 'b')) {
      const int64_t b = s[i + 1] == 'x' ? 16 : s[i + 1] == 'o' ? 8 : 2;
      if (base != 0 && base != b) return std::nullopt;
      base = b;
      i += 2;
      if (i < s.size() && s[i] == '_') ++i;
    } else if (base == 0) {
      base = 10;
    }
  }
  if (base < 2 || base > 36) ThrowInvalid("int() base must be >= 2 and <= 36, or 0");
  if (i >= s.size()) return std::nullopt;
  int64_t v = 0;
  bool prev_digit = false;
  for (; i < s.size(); ++i) {
    const char c = s[i];
    if (c == '_' && prev_digit && i + 1 < s.size() && s[i + 1] != '_') {
      prev_digit = false;
      continue;
    }
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'a' && c <= 'z') {
      d = c - 'a' + 10;
    } else {
      return std::nullopt;
    }
    if (d >= base) return std::nullopt;
    if (__builtin_mul_overflow(v, base, &v) || __builtin_add_overflow(v, d, &v)) {
      ThrowUnimplemented("integers beyond 64 bits are not supported");
    }
    prev_digit = true;
  }
  return neg ? -v : v;
}

// jinja2's make_attrgetter: dotted path, digit parts as ints, through environment.getitem.
Value GetPath(Interpreter& in, const Value& item, const Value& attribute, const Value* dflt = nullptr) {
  if (attribute.is_none()) return item;
  std::vector<Value> parts;
  if (attribute.is_string()) {
    for (const Value& p : PySplit(attribute.str(), Str("."), -1, false)) {
      const std::string& s = p.str();
      bool digits = !s.empty();
      for (char c : s) digits = digits && std::isdigit(static_cast<unsigned char>(c));
      if (digits && s.size() < 18) {
        parts.push_back(Value::Int(std::stoll(s)));
      } else {
        parts.push_back(p);
      }
    }
  } else {
    parts.push_back(attribute);
  }
  Value v = item;
  for (const Value& p : parts) {
    v = in.GetItem(v, p);
    if (dflt != nullptr && !dflt->is_none() && v.is_undefined()) v = *dflt;
  }
  return v;
}

Value IgnoreCase(const Value& v) {
  if (v.is_string()) return Str(IcuCase(v.str(), CaseOp::kLower));
  return v;
}

// ---- json ------------------------------------------------------------------------------------

Value ToJsonFilter(Interpreter& in, const Value& input, const Arguments& args) {
  Bound b("tojson", args, {"ensure_ascii", "indent", "separators", "sort_keys"});
  JsonDumpOptions o;
  o.ensure_ascii = Truthy(b.get(0, Value::Bool(false)));
  const Value indent = b.get(1);
  if (!indent.is_none()) {
    o.has_indent = true;
    if (indent.is_string()) {
      o.indent = indent.str();
    } else if (indent.is_int() || indent.is_bool()) {
      o.indent = std::string(static_cast<size_t>(std::clamp<int64_t>(indent.as_int(), 0, 1024)), ' ');
    } else {
      ThrowInvalid("tojson: indent must be an int or a string");
    }
    o.item_separator = ",";
  }
  const Value seps = b.get(2);
  if (!seps.is_none()) {
    if (!seps.is_seq() || seps.seq().size() != 2 || !seps.seq()[0].is_string() || !seps.seq()[1].is_string()) {
      ThrowInvalid("tojson: separators must be a pair of strings");
    }
    o.item_separator = seps.seq()[0].str();
    o.key_separator = seps.seq()[1].str();
  }
  o.sort_keys = Truthy(b.get(3, Value::Bool(false)));
  std::string s = JsonDumps(input, o);
  in.CheckSize(s.size());
  return Str(std::move(s));
}

// ---- sorting -----------------------------------------------------------------------------------

void SortValues(List* items, const std::vector<Value>& keys, bool reverse) {
  std::vector<size_t> order(items->size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return reverse ? Less(keys[b], keys[a]) : Less(keys[a], keys[b]);
  });
  List out;
  out.reserve(items->size());
  for (size_t i : order) out.push_back((*items)[i]);
  *items = std::move(out);
}

// make_multi_attrgetter: "a,b.c" → [item.a, item.b.c] (a list key).
Value MultiKey(Interpreter& in, const Value& item, const Value& attribute, bool case_sensitive) {
  if (attribute.is_none()) return case_sensitive ? item : IgnoreCase(item);
  List parts;
  if (attribute.is_string()) {
    for (const Value& a : PySplit(attribute.str(), Str(","), -1, false)) {
      Value v = GetPath(in, item, a);
      parts.push_back(case_sensitive ? v : IgnoreCase(v));
    }
  } else {
    Value v = GetPath(in, item, attribute);
    parts.push_back(case_sensitive ? v : IgnoreCase(v));
  }
  return Value::Seq(std::move(parts));
}

// ---- generators ----------------------------------------------------------------------------------

Value SelectOrReject(Interpreter& in, const Value& input, const Arguments& args, bool select, bool attr) {
  // Everything, including the `if value:` check, runs lazily in jinja2's generator.
  auto state = std::make_shared<std::pair<bool, std::shared_ptr<Interpreter::CursorState>>>(false, nullptr);
  Arguments captured = args;
  Value source = input;
  return in.NewGenerator("generator", [&in, state, captured, source, select, attr](Value* out) -> bool {
    if (!state->first) {
      state->first = true;
      if (!Truthy(source)) return false;
      if (attr && captured.pos.empty()) ThrowInvalid("Missing parameter for attribute name");
      state->second = in.Cursor(source);
    }
    if (!state->second) return false;
    Value item;
    while (in.Pull(*state->second, &item)) {
      Value subject = attr ? GetPath(in, item, captured.pos[0]) : item;
      const size_t off = attr ? 1 : 0;
      bool r;
      if (captured.pos.size() > off) {
        const Value& test = captured.pos[off];
        if (!test.is_string()) ThrowInvalid("test name must be a string");
        Arguments targs;
        targs.pos.assign(captured.pos.begin() + static_cast<std::ptrdiff_t>(off + 1), captured.pos.end());
        targs.kw = captured.kw;
        r = in.CallTest(test.str(), subject, targs);
      } else {
        r = Truthy(subject);
      }
      if (r == select) {
        *out = item;
        return true;
      }
    }
    return false;
  });
}

Value MapFilter(Interpreter& in, const Value& input, const Arguments& args) {
  auto state = std::make_shared<std::pair<bool, std::shared_ptr<Interpreter::CursorState>>>(false, nullptr);
  Arguments captured = args;
  Value source = input;
  return in.NewGenerator("generator", [&in, state, captured, source](Value* out) -> bool {
    if (!state->first) {
      state->first = true;
      if (!Truthy(source)) return false;
      state->second = in.Cursor(source);
    }
    if (!state->second) return false;
    Value item;
    if (!in.Pull(*state->second, &item)) return false;
    bool by_attr = false;
    Value attribute, dflt = Value::None();
    if (captured.pos.empty()) {
      for (const auto& [k, v] : captured.kw) {
        if (k == "attribute") {
          by_attr = true;
          attribute = v;
        }
      }
    }
    if (by_attr) {
      for (const auto& [k, v] : captured.kw) {
        if (k == "default") {
          dflt = v;
        } else if (k != "attribute") {
          ThrowInvalid("Unexpected keyword argument '" + k + "'");
        }
      }
      *out = GetPath(in, item, attribute, &dflt);
      return true;
    }
    if (captured.pos.empty()) ThrowInvalid("map requires a filter argument");
    if (!captured.pos[0].is_string()) ThrowInvalid("filter name must be a string");
    Arguments fargs;
    fargs.pos.assign(captured.pos.begin() + 1, captured.pos.end());
    fargs.kw = captured.kw;
    *out = in.CallFilter(captured.pos[0].str(), item, fargs);
    return true;
  });
}

Value ListGenerator(Interpreter& in, std::string type, List items) {
  auto data = std::make_shared<List>(std::move(items));
  auto pos = std::make_shared<size_t>(0);
  return in.NewGenerator(std::move(type), [data, pos](Value* out) -> bool {
    if (*pos >= data->size()) return false;
    *out = (*data)[(*pos)++];
    return true;
  });
}

Value Length(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return Value::Int(0);
    case Value::Kind::kString:
      return Value::Int(static_cast<int64_t>(Utf8Length(v.str())));
    case Value::Kind::kSeq:
      return Value::Int(static_cast<int64_t>(v.seq().size()));
    case Value::Kind::kDict:
      return Value::Int(static_cast<int64_t>(v.dict().items.size()));
    default:
      ThrowInvalid("object of type '" + v.TypeName() + "' has no len()");
  }
}

Value MinMax(Interpreter& in, const Value& input, const Arguments& args, bool is_max) {
  Bound b(is_max ? "max" : "min", args, {"case_sensitive", "attribute"});
  const List items = in.Iterate(input);
  if (items.empty()) return Value::Undefined("No aggregated item, sequence was empty.");
  const bool cs = Truthy(b.get(0, Value::Bool(false)));
  const Value attribute = b.get(1);
  size_t best = 0;
  Value best_key;
  for (size_t i = 0; i < items.size(); ++i) {
    Value key = GetPath(in, items[i], attribute);
    if (!cs) key = IgnoreCase(key);
    if (i == 0 || (is_max ? Less(best_key, key) : Less(key, best_key))) {
      best = i;
      best_key = key;
    }
  }
  return items[best];
}

std::string Indent(const std::string& str, const Value& width, bool first, bool blank) {
  const std::string indention =
      width.is_string() ? width.str() : std::string(static_cast<size_t>(std::clamp<int64_t>(AsIndex(width, "width"), 0, 4096)), ' ');
  const std::u32string s = DecodeUtf8(str + "\n");
  std::vector<std::u32string> lines = SplitLines(s, false);
  std::string rv;
  if (blank) {
    for (size_t i = 0; i < lines.size(); ++i) {
      if (i) rv += "\n" + indention;
      rv += EncodeUtf8(lines[i]);
    }
  } else {
    rv = lines.empty() ? "" : EncodeUtf8(lines[0]);
    for (size_t i = 1; i < lines.size(); ++i) {
      rv += "\n";
      if (!lines[i].empty()) rv += indention;
      rv += EncodeUtf8(lines[i]);
    }
  }
  if (first) rv = indention + rv;
  return rv;
}

// Python's round(x, ndigits) for floats: correctly rounded, ties to even.
double RoundFloat(double x, int64_t ndigits) {
  if (!std::isfinite(x)) return x;
  if (ndigits > 300) return x;
  if (ndigits < 0) ThrowUnimplemented("round() with a negative precision is not supported");
  char buf[512];
  std::snprintf(buf, sizeof(buf), "%.*f", static_cast<int>(ndigits), x);
  return std::strtod(buf, nullptr);
}

bool IsWordChar(char32_t c) {
  if (c == '_') return true;
  const int8_t t = u_charType(static_cast<UChar32>(c));
  return t == U_UPPERCASE_LETTER || t == U_LOWERCASE_LETTER || t == U_TITLECASE_LETTER ||
         t == U_MODIFIER_LETTER || t == U_OTHER_LETTER || t == U_DECIMAL_DIGIT_NUMBER ||
         t == U_LETTER_NUMBER || t == U_OTHER_NUMBER;
}

bool StrIsCase(const std::string& str, bool upper) {
  bool cased = false;
  for (char32_t c : DecodeUtf8(str)) {
    const auto u = static_cast<UChar32>(c);
    if (upper) {
      if (u_hasBinaryProperty(u, UCHAR_LOWERCASE) || u_charType(u) == U_TITLECASE_LETTER) return false;
      if (!cased && u_hasBinaryProperty(u, UCHAR_UPPERCASE)) cased = true;
    } else {
      if (u_hasBinaryProperty(u, UCHAR_UPPERCASE) || u_charType(u) == U_TITLECASE_LETTER) return false;
      if (!cased && u_hasBinaryProperty(u, UCHAR_LOWERCASE)) cased = true;
    }
  }
  return cased;
}

// ---- the filter table ------------------------------------------------------------------------------

const std::set<std::string>& JinjaFilters() {
  static const auto* names = new std::set<std::string>{
      "abs",     "attr",       "batch",     "capitalize", "center",    "count",   "d",        "default",
      "dictsort", "e",         "escape",    "filesizeformat", "first", "float",   "forceescape", "format",
      "groupby", "indent",     "int",       "join",       "last",      "length",  "list",     "lower",
      "items",   "map",        "min",       "max",        "pprint",    "random",  "reject",   "rejectattr",
      "replace", "reverse",    "round",     "safe",       "select",    "selectattr", "slice", "sort",
      "string",  "striptags",  "sum",       "title",      "trim",      "truncate", "unique",  "upper",
      "urlencode", "urlize",   "wordcount", "wordwrap",   "xmlattr",   "tojson"};
  return *names;
}

const std::set<std::string>& JinjaTests() {
  static const auto* names = new std::set<std::string>{
      "odd",     "even",   "divisibleby", "defined",  "undefined", "filter",  "test",      "none",
      "boolean", "false",  "true",        "integer",  "float",     "lower",   "upper",     "string",
      "mapping", "number", "sequence",    "iterable", "callable",  "sameas",  "escaped",   "in",
      "==",      "eq",     "equalto",     "!=",       "ne",        ">",       "gt",        "greaterthan",
      "ge",      ">=",     "<",           "lt",       "lessthan",  "<=",      "le"};
  return *names;
}

}  // namespace

bool IsJinjaFilter(const std::string& name) { return JinjaFilters().count(name) > 0; }
bool IsJinjaTest(const std::string& name) { return JinjaTests().count(name) > 0; }

Value ApplyBuiltinFilter(Interpreter& in, const std::string& name, const Value& input, Arguments& args) {
  auto no_args = [&]() {
    if (!args.pos.empty() || !args.kw.empty()) ThrowInvalid(name + "() takes no arguments");
  };
  if (name == "length" || name == "count") {
    no_args();
    return Length(input);
  }
  if (name == "string") {
    no_args();
    if (input.is_string()) return input;
    return Str(ToStr(input));
  }
  if (name == "safe") {
    no_args();
    return (input.is_string() ? input : Str(ToStr(input))).AsMarkup();
  }
  if (name == "e" || name == "escape" || name == "forceescape") {
    no_args();
    if (input.is_markup() && name != "forceescape") return input;
    return Str(Escape(ToStr(input))).AsMarkup();
  }
  if (name == "default" || name == "d") {
    Bound b(name, args, {"default_value", "boolean"});
    if (input.is_undefined() || (Truthy(b.get(1, Value::Bool(false))) && !Truthy(input))) {
      return b.get(0, Str(""));
    }
    return input;
  }
  if (name == "trim") {
    Bound b(name, args, {"chars"});
    return Str(StripValue(ToStr(input), b.get(0), true, true));
  }
  if (name == "upper" || name == "lower") {
    no_args();
    return Str(IcuCase(ToStr(input), name == "upper" ? CaseOp::kUpper : CaseOp::kLower));
  }
  if (name == "capitalize") {
    no_args();
    return Str(PyCapitalize(ToStr(input)));
  }
  if (name == "title") {
    no_args();
    // jinja2's do_title: split on runs of [-\s({\[<], then item[0].upper() + item[1:].lower().
    const std::u32string s = DecodeUtf8(ToStr(input));
    auto is_sep = [](char32_t c) { return c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || IsPySpace(c); };
    std::string out;
    size_t i = 0;
    while (i < s.size()) {
      size_t j = i;
      const bool sep = is_sep(s[i]);
      while (j < s.size() && is_sep(s[j]) == sep) ++j;
      const std::u32string item = s.substr(i, j - i);
      if (sep) {
        out += EncodeUtf8(item);
      } else {
        out += IcuCase(EncodeUtf8(item.substr(0, 1)), CaseOp::kUpper);
        out += IcuCase(EncodeUtf8(item.substr(1)), CaseOp::kLower);
      }
      i = j;
    }
    return Str(out);
  }
  if (name == "replace") {
    Bound b(name, args, {"old", "new", "count"});
    if (!b.has(0) || !b.has(1)) ThrowInvalid("replace() missing required arguments");
    const Value count = b.get(2);
    std::string r = Replace(ToStr(input), ToStr(b.get(0)), ToStr(b.get(1)),
                            count.is_none() ? -1 : AsIndex(count, "count"));
    in.CheckSize(r.size());
    return Str(std::move(r));
  }
  if (name == "tojson") return ToJsonFilter(in, input, args);
  if (name == "join") {
    Bound b(name, args, {"d", "attribute"});
    const std::string sep = ToStr(b.get(0, Str("")));
    const Value attribute = b.get(1);
    std::string out;
    bool first = true;
    for (const Value& item : in.Iterate(input)) {
      if (!first) out += sep;
      first = false;
      out += ToStr(attribute.is_none() ? item : GetPath(in, item, attribute));
      in.CheckSize(out.size());
    }
    return Str(std::move(out));
  }
  if (name == "list") {
    no_args();
    return Value::Seq(in.Iterate(input));
  }
  if (name == "first") {
    no_args();
    if (input.is_generator()) {
      auto c = in.Cursor(input);
      Value v;
      if (in.Pull(*c, &v)) return v;
      return Value::Undefined("No first item, sequence was empty.");
    }
    const List items = in.Iterate(input);
    if (items.empty()) return Value::Undefined("No first item, sequence was empty.");
    return items.front();
  }
  if (name == "last") {
    no_args();
    if (input.is_generator()) ThrowInvalid("'" + input.TypeName() + "' object is not reversible");
    if (input.is_number() || input.is_none() || input.is_namespace() || input.is_callable()) {
      ThrowInvalid("'" + input.TypeName() + "' object is not reversible");
    }
    const List items = in.Iterate(input);
    if (items.empty()) return Value::Undefined("No last item, sequence was empty.");
    return items.back();
  }
  if (name == "reverse") {
    no_args();
    if (input.is_string()) {
      std::u32string s = DecodeUtf8(input.str());
      std::reverse(s.begin(), s.end());
      return Str(EncodeUtf8(s));
    }
    if (input.is_generator()) {
      List items = in.Iterate(input);
      std::reverse(items.begin(), items.end());
      return Value::Seq(std::move(items));
    }
    List items = in.Iterate(input);
    std::reverse(items.begin(), items.end());
    std::string type = "reversed";
    if (input.is_list()) type = "list_reverseiterator";
    if (input.is_tuple()) type = "reversed";
    if (input.is_dict()) type = "dict_reversekeyiterator";
    if (input.is_seq() && input.seq_type() == SeqType::kRange) type = "range_iterator";
    return ListGenerator(in, type, std::move(items));
  }
  if (name == "items") {
    no_args();
    if (input.is_undefined()) return ListGenerator(in, "generator", {});
    if (!input.is_dict()) ThrowInvalid("Can only get item pairs from a mapping.");
    List items;
    for (const auto& [k, v] : input.dict().items) items.push_back(Value::Tuple({k, v}));
    return ListGenerator(in, "generator", std::move(items));
  }
  if (name == "dictsort") {
    Bound b(name, args, {"case_sensitive", "by", "reverse"});
    if (!input.is_dict()) ThrowInvalid("'" + input.TypeName() + "' object has no attribute 'items'");
    const bool cs = Truthy(b.get(0, Value::Bool(false)));
    const Value by = b.get(1, Str("key"));
    size_t pos;
    if (by.is_string() && by.str() == "key") {
      pos = 0;
    } else if (by.is_string() && by.str() == "value") {
      pos = 1;
    } else {
      ThrowInvalid("You can only sort by either \"key\" or \"value\"");
    }
    List items;
    std::vector<Value> keys;
    for (const auto& [k, v] : input.dict().items) {
      items.push_back(Value::Tuple({k, v}));
      const Value& key = pos == 0 ? k : v;
      keys.push_back(cs ? key : IgnoreCase(key));
    }
    SortValues(&items, keys, Truthy(b.get(2, Value::Bool(false))));
    return Value::Seq(std::move(items));
  }
  if (name == "sort") {
    Bound b(name, args, {"reverse", "case_sensitive", "attribute"});
    List items = in.Iterate(input);
    std::vector<Value> keys;
    const bool cs = Truthy(b.get(1, Value::Bool(false)));
    const Value attribute = b.get(2);
    for (const Value& item : items) keys.push_back(MultiKey(in, item, attribute, cs));
    SortValues(&items, keys, Truthy(b.get(0, Value::Bool(false))));
    return Value::Seq(std::move(items));
  }
  if (name == "unique") {
    Bound b(name, args, {"case_sensitive", "attribute"});
    const bool cs = Truthy(b.get(0, Value::Bool(false)));
    const Value attribute = b.get(1);
    auto cursor = in.Cursor(input);
    auto seen = std::make_shared<List>();
    return in.NewGenerator("generator", [&in, cursor, seen, cs, attribute](Value* out) -> bool {
      Value item;
      while (in.Pull(*cursor, &item)) {
        Value key = GetPath(in, item, attribute);
        if (!cs) key = IgnoreCase(key);
        if (!Hashable(key)) ThrowInvalid("unhashable type: '" + key.TypeName() + "'");
        bool dup = false;
        for (const Value& s : *seen) dup = dup || Equals(s, key);
        if (!dup) {
          seen->push_back(key);
          *out = item;
          return true;
        }
      }
      return false;
    });
  }
  if (name == "select") return SelectOrReject(in, input, args, true, false);
  if (name == "reject") return SelectOrReject(in, input, args, false, false);
  if (name == "selectattr") return SelectOrReject(in, input, args, true, true);
  if (name == "rejectattr") return SelectOrReject(in, input, args, false, true);
  if (name == "map") return MapFilter(in, input, args);
  if (name == "min" || name == "max") return MinMax(in, input, args, name == "max");
  if (name == "sum") {
    Bound b(name, args, {"attribute", "start"});
    Value total = b.get(1, Value::Int(0));
    const Value attribute = b.get(0);
    if (total.is_string()) ThrowInvalid("sum() can't sum strings [use ''.join(seq) instead]");
    for (const Value& item : in.Iterate(input)) total = in.Add(total, GetPath(in, item, attribute));
    return total;
  }
  if (name == "abs") {
    no_args();
    if (input.is_float()) return Value::Float(std::fabs(input.as_float()));
    if (input.is_int() || input.is_bool()) {
      if (input.as_int() == std::numeric_limits<int64_t>::min()) ThrowUnimplemented("integer overflow");
      return Value::Int(std::llabs(input.as_int()));
    }
    if (input.is_undefined()) ThrowInvalid(input.undefined_hint());
    ThrowInvalid("bad operand type for abs(): '" + input.TypeName() + "'");
  }
  if (name == "int") {
    Bound b(name, args, {"default", "base"});
    const Value dflt = b.get(0, Value::Int(0));
    if (input.is_undefined()) ThrowInvalid(input.undefined_hint());
    if (input.is_int()) return input;
    if (input.is_bool()) return Value::Int(input.as_int());
    if (input.is_float()) {
      const double d = input.as_float();
      if (std::isinf(d)) ThrowInvalid("cannot convert float infinity to integer");
      if (std::isnan(d)) return dflt;
      if (std::fabs(d) >= 9.2e18) ThrowUnimplemented("integers beyond 64 bits are not supported");
      return Value::Int(static_cast<int64_t>(d));
    }
    if (input.is_string()) {
      if (auto v = ParseInt(input.str(), AsIndex(b.get(1, Value::Int(10)), "base"))) return Value::Int(*v);
      if (auto f = ParseFloat(input.str())) {
        if (std::isnan(*f) || std::isinf(*f)) return dflt;
        if (std::fabs(*f) >= 9.2e18) ThrowUnimplemented("integers beyond 64 bits are not supported");
        return Value::Int(static_cast<int64_t>(*f));
      }
      return dflt;
    }
    return dflt;
  }
  if (name == "float") {
    Bound b(name, args, {"default"});
    if (input.is_undefined()) ThrowInvalid(input.undefined_hint());
    if (input.is_number()) return Value::Float(input.as_float());
    if (input.is_string()) {
      if (auto f = ParseFloat(input.str())) return Value::Float(*f);
    }
    return b.get(0, Value::Float(0.0));
  }
  if (name == "round") {
    Bound b(name, args, {"precision", "method"});
    const int64_t precision = AsIndex(b.get(0, Value::Int(0)), "precision");
    const Value method = b.get(1, Str("common"));
    if (!method.is_string() || (method.str() != "common" && method.str() != "ceil" && method.str() != "floor")) {
      ThrowInvalid("method must be common, ceil or floor");
    }
    if (input.is_undefined()) ThrowInvalid(input.undefined_hint());
    if (!input.is_number()) ThrowInvalid("type " + input.TypeName() + " doesn't define __round__ method");
    if (method.str() == "common") {
      if (input.is_int() || input.is_bool()) {
        if (precision < 0) ThrowUnimplemented("round() with a negative precision is not supported");
        return Value::Int(input.as_int());
      }
      return Value::Float(RoundFloat(input.as_float(), precision));
    }
    if (precision < 0 || precision > 300) ThrowUnimplemented("round() precision outside 0..300 is not supported");
    const double scale = std::pow(10.0, static_cast<double>(precision));
    const double v = input.as_float() * scale;
    const double r = method.str() == "ceil" ? std::ceil(v) : std::floor(v);
    return Value::Float(r / scale);
  }
  if (name == "indent") {
    Bound b(name, args, {"width", "first", "blank"});
    std::string r = Indent(ToStr(input), b.get(0, Value::Int(4)), Truthy(b.get(1, Value::Bool(false))),
                           Truthy(b.get(2, Value::Bool(false))));
    in.CheckSize(r.size());
    return Str(std::move(r));
  }
  if (name == "center") {
    Bound b(name, args, {"width"});
    const std::string s = ToStr(input);
    const int64_t width = AsIndex(b.get(0, Value::Int(80)), "width");
    const int64_t len = static_cast<int64_t>(Utf8Length(s));
    if (width <= len) return Str(s);
    in.CheckSize(static_cast<size_t>(width));
    const int64_t marg = width - len;
    const int64_t left = marg / 2 + (marg & width & 1);
    return Str(std::string(static_cast<size_t>(left), ' ') + s + std::string(static_cast<size_t>(marg - left), ' '));
  }
  if (name == "wordcount") {
    no_args();
    int64_t n = 0;
    bool in_word = false;
    for (char32_t c : DecodeUtf8(ToStr(input))) {
      const bool w = IsWordChar(c);
      if (w && !in_word) ++n;
      in_word = w;
    }
    return Value::Int(n);
  }
  if (name == "attr") {
    Bound b(name, args, {"name"});
    return in.PyGetAttr(input, AsStr(b.get(0), "attribute name"));
  }
  if (IsJinjaFilter(name)) ThrowUnimplemented("the filter '" + name + "' is not supported in chat templates");
  ThrowInvalid("No filter named '" + name + "'.");
}

// ---- tests ---------------------------------------------------------------------------------------

bool ApplyBuiltinTest(Interpreter& in, const std::string& name, const Value& v, Arguments& args) {
  auto arg = [&](const char* what) -> Value {
    Bound b(name, args, {what});
    if (!b.has(0)) ThrowInvalid(name + "() missing required argument '" + what + "'");
    return b.get(0);
  };
  auto no_args = [&]() {
    if (!args.pos.empty() || !args.kw.empty()) ThrowInvalid(name + "() takes no arguments");
  };
  if (name == "defined") return no_args(), !v.is_undefined();
  if (name == "undefined") return no_args(), v.is_undefined();
  if (name == "none") return no_args(), v.is_none();
  if (name == "boolean") return no_args(), v.is_bool();
  if (name == "true") return no_args(), v.is_bool() && v.as_bool();
  if (name == "false") return no_args(), v.is_bool() && !v.as_bool();
  if (name == "integer") return no_args(), v.is_int();
  if (name == "float") return no_args(), v.is_float();
  if (name == "number") return no_args(), v.is_number();
  if (name == "string") return no_args(), v.is_string();
  if (name == "mapping") return no_args(), v.is_dict();
  if (name == "iterable") {
    no_args();
    return v.is_undefined() || v.is_string() || v.is_seq() || v.is_dict() || v.is_generator() || v.is_loop();
  }
  if (name == "sequence") {
    no_args();
    return v.is_undefined() || v.is_string() || (v.is_seq() && (v.is_list() || v.is_tuple() ||
                                                                  v.seq_type() == SeqType::kRange)) ||
           v.is_dict();
  }
  if (name == "callable") return no_args(), v.is_callable() || v.is_undefined() || v.is_loop();
  if (name == "escaped") return no_args(), v.is_markup();
  if (name == "lower" || name == "upper") return no_args(), StrIsCase(ToStr(v), name == "upper");
  if (name == "odd" || name == "even") {
    no_args();
    if (v.is_undefined()) ThrowInvalid(v.undefined_hint());
    if (v.is_int() || v.is_bool()) return (FloorModPublic(v.as_int(), 2) == 1) == (name == "odd");
    if (v.is_float()) {
      const double m = std::fmod(std::fmod(v.as_float(), 2.0) + 2.0, 2.0);
      return (m == 1.0) == (name == "odd");
    }
    ThrowInvalid("unsupported operand type(s) for %: '" + v.TypeName() + "' and 'int'");
  }
  if (name == "divisibleby") {
    const Value num = arg("num");
    if (v.is_undefined()) ThrowInvalid(v.undefined_hint());
    if ((v.is_int() || v.is_bool()) && (num.is_int() || num.is_bool())) {
      if (num.as_int() == 0) ThrowInvalid("integer division or modulo by zero");
      return FloorModPublic(v.as_int(), num.as_int()) == 0;
    }
    if (v.is_number() && num.is_number()) {
      if (num.as_float() == 0) ThrowInvalid("float modulo");
      return std::fmod(v.as_float(), num.as_float()) == 0;
    }
    ThrowInvalid("unsupported operand type(s) for %: '" + v.TypeName() + "' and '" + num.TypeName() + "'");
  }
  if (name == "in") return in.Contains(arg("seq"), v);
  if (name == "==" || name == "eq" || name == "equalto") return Equals(v, arg("other"));
  if (name == "!=" || name == "ne") return !Equals(v, arg("other"));
  if (name == "<" || name == "lt" || name == "lessthan") return Less(v, arg("other"));
  if (name == ">" || name == "gt" || name == "greaterthan") return Less(arg("other"), v);
  if (name == "<=" || name == "le") {
    const Value o = arg("other");
    return Less(v, o) || Equals(v, o);
  }
  if (name == ">=" || name == "ge") {
    const Value o = arg("other");
    return Less(o, v) || Equals(v, o);
  }
  if (name == "sameas") {
    const Value o = arg("other");
    if (v.is_none() || o.is_none()) return v.is_none() && o.is_none();
    if (v.is_bool() || o.is_bool()) return v.is_bool() && o.is_bool() && v.as_bool() == o.as_bool();
    if (v.is_int() && o.is_int() && v.as_int() >= -5 && v.as_int() <= 256) return v.as_int() == o.as_int();
    ThrowUnimplemented("the 'sameas' test on " + v.TypeName() + " values is not supported (object identity)");
  }
  if (name == "filter") return no_args(), v.is_string() && IsJinjaFilter(v.str());
  if (name == "test") return no_args(), v.is_string() && IsJinjaTest(v.str());
  ThrowInvalid("No test named '" + name + "'.");
}

int64_t FloorModPublic(int64_t a, int64_t b) {
  if (b == -1) return 0;
  int64_t r = a % b;
  if (r != 0 && ((r < 0) != (b < 0))) r += b;
  return r;
}

// ---- methods -------------------------------------------------------------------------------------

namespace {

const std::set<std::string>& StrAttributes() {
  static const auto* names = new std::set<std::string>{
      "capitalize", "casefold",  "center",     "count",      "encode",    "endswith",   "expandtabs",
      "find",       "format",    "format_map", "index",      "isalnum",   "isalpha",    "isascii",
      "isdecimal",  "isdigit",   "isidentifier", "islower",  "isnumeric", "isprintable", "isspace",
      "istitle",    "isupper",   "join",       "ljust",      "lower",     "lstrip",     "maketrans",
      "partition",  "removeprefix", "removesuffix", "replace", "rfind",   "rindex",     "rjust",
      "rpartition", "rsplit",    "rstrip",     "split",      "splitlines", "startswith", "strip",
      "swapcase",   "title",     "translate",  "upper",      "zfill"};
  return *names;
}

const std::set<std::string>& NumberAttributes() {
  static const auto* names = new std::set<std::string>{
      "as_integer_ratio", "bit_count", "bit_length", "conjugate", "denominator", "from_bytes", "imag",
      "numerator",        "real",      "to_bytes",   "fromhex",   "hex",         "is_integer"};
  return *names;
}

Value Method(const Value& self, const std::string& name,
             std::function<Value(Interpreter&, const Value&, Arguments&)> fn) {
  auto c = std::make_shared<Callable>();
  c->name = self.TypeName() + "." + name;
  c->self = self;
  c->builtin = std::move(fn);
  return Value::MakeCallable(c);
}

std::optional<Value> StrMethod(const Value& self, const std::string& name) {
  if (!StrAttributes().count(name)) return std::nullopt;
  if (self.is_markup()) {
    static const std::set<std::string> kPlain = {"startswith", "endswith", "upper", "lower",
                                                 "strip",      "lstrip",   "rstrip"};
    if (!kPlain.count(name)) ThrowUnimplemented("the method '" + name + "' of a |safe (Markup) string is not supported");
  }
  if (name == "startswith" || name == "endswith") {
    const bool start = name == "startswith";
    return Method(self, name, [start, name](Interpreter&, const Value& s, Arguments& a) -> Value {
      Bound b(name, a, {"prefix", "start", "end"});
      if (!b.has(0)) ThrowInvalid(name + "() takes at least 1 argument (0 given)");
      const std::string& str = s.str();
      size_t lo = 0, hi = 0;
      const size_t n = Utf8Length(str);
      SubBounds(b, 1, n, &lo, &hi);
      const Value prefix = b.get(0);
      List candidates;
      if (prefix.is_tuple()) {
        candidates = prefix.seq();
      } else if (prefix.is_string()) {
        candidates.push_back(prefix);
      } else {
        ThrowInvalid(name + " first arg must be str or a tuple of str, not " + prefix.TypeName());
      }
      if (lo > hi) return Value::Bool(false);
      const std::u32string sub = DecodeUtf8(str).substr(lo, hi - lo);
      for (const Value& c : candidates) {
        const std::u32string p = DecodeUtf8(AsStr(c, "tuple for " + name));
        if (p.size() > sub.size()) continue;
        if (start ? sub.compare(0, p.size(), p) == 0 : sub.compare(sub.size() - p.size(), p.size(), p) == 0) {
          return Value::Bool(true);
        }
      }
      return Value::Bool(false);
    });
  }
  if (name == "split" || name == "rsplit") {
    const bool right = name == "rsplit";
    return Method(self, name, [right, name](Interpreter& in, const Value& s, Arguments& a) -> Value {
      Bound b(name, a, {"sep", "maxsplit"});
      List parts = PySplit(s.str(), b.get(0), AsIndex(b.get(1, Value::Int(-1)), "maxsplit"), right);
      in.CheckSize(parts.size() * 16);
      return Value::Seq(std::move(parts));
    });
  }
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    const bool left = name != "rstrip", right = name != "lstrip";
    return Method(self, name, [left, right, name](Interpreter&, const Value& s, Arguments& a) -> Value {
      Bound b(name, a, {"chars"});
      if (s.is_markup() && b.has(0)) ThrowUnimplemented(name + "(chars) of a |safe string is not supported");
      Value r = Str(StripValue(s.str(), b.get(0), left, right));
      return s.is_markup() ? r.AsMarkup() : r;
    });
  }
  if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
    return Method(self, name, [name](Interpreter&, const Value& s, Arguments& a) -> Value {
      Bound b(name, a, {});
      Value r;
      if (name == "upper") {
        r = Str(IcuCase(s.str(), CaseOp::kUpper));
      } else if (name == "lower") {
        r = Str(IcuCase(s.str(), CaseOp::kLower));
      } else if (name == "title") {
        r = Str(PyTitle(s.str()));
      } else {
        r = Str(PyCapitalize(s.str()));
      }
      return s.is_markup() ? r.AsMarkup() : r;
    });
  }
  if (name == "replace") {
    return Method(self, name, [](Interpreter& in, const Value& s, Arguments& a) -> Value {
      Bound b("replace", a, {"old", "new", "count"});
      if (!b.has(0) || !b.has(1)) ThrowInvalid("replace expected at least 2 arguments");
      std::string r = Replace(s.str(), AsStr(b.get(0), "replace() argument 1"), AsStr(b.get(1), "replace() argument 2"),
                              AsIndex(b.get(2, Value::Int(-1)), "count"));
      in.CheckSize(r.size());
      return Str(std::move(r));
    });
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex" || name == "count") {
    return Method(self, name, [name](Interpreter&, const Value& s, Arguments& a) -> Value {
      Bound b(name, a, {"sub", "start", "end"});
      if (!b.has(0)) ThrowInvalid(name + "() takes at least 1 argument (0 given)");
      const std::u32string str = DecodeUtf8(s.str());
      const std::u32string sub = DecodeUtf8(AsStr(b.get(0), "must be str"));
      size_t lo, hi;
      SubBounds(b, 1, str.size(), &lo, &hi);
      if (name == "count") {
        if (lo > hi) return Value::Int(0);
        const std::u32string hay = str.substr(lo, hi - lo);
        if (sub.empty()) return Value::Int(static_cast<int64_t>(hay.size() + 1));
        int64_t n = 0;
        for (size_t p = hay.find(sub); p != std::u32string::npos; p = hay.find(sub, p + sub.size())) ++n;
        return Value::Int(n);
      }
      int64_t found = -1;
      if (lo <= hi && sub.size() <= hi - lo) {
        const std::u32string hay = str.substr(lo, hi - lo);
        const size_t p = (name == "find" || name == "index") ? hay.find(sub) : hay.rfind(sub);
        if (p != std::u32string::npos) found = static_cast<int64_t>(p + lo);
      }
      if (found < 0 && (name == "index" || name == "rindex")) ThrowInvalid("substring not found");
      return Value::Int(found);
    });
  }
  if (name == "join") {
    return Method(self, name, [](Interpreter& in, const Value& s, Arguments& a) -> Value {
      Bound b("join", a, {"iterable"});
      if (!b.has(0)) ThrowInvalid("str.join() takes exactly one argument (0 given)");
      std::string out;
      size_t i = 0;
      for (const Value& item : in.Iterate(b.get(0))) {
        if (!item.is_string()) {
          ThrowInvalid("sequence item " + std::to_string(i) + ": expected str instance, " + item.TypeName() +
                       " found");
        }
        if (i++) out += s.str();
        out += item.str();
        in.CheckSize(out.size());
      }
      return Str(std::move(out));
    });
  }
  if (name == "isdigit" || name == "isalpha" || name == "isalnum" || name == "isspace" || name == "isupper" ||
      name == "islower" || name == "isascii") {
    return Method(self, name, [name](Interpreter&, const Value& s, Arguments& a) -> Value {
      Bound b(name, a, {});
      const std::u32string str = DecodeUtf8(s.str());
      if (name == "isupper" || name == "islower") return Value::Bool(StrIsCase(s.str(), name == "isupper"));
      if (name == "isascii") {
        for (char32_t c : str) {
          if (c >= 0x80) return Value::Bool(false);
        }
        return Value::Bool(true);
      }
      if (str.empty()) return Value::Bool(false);
      for (char32_t c : str) {
        const auto u = static_cast<UChar32>(c);
        const int8_t t = u_charType(u);
        const bool alpha = t == U_UPPERCASE_LETTER || t == U_LOWERCASE_LETTER || t == U_TITLECASE_LETTER ||
                           t == U_MODIFIER_LETTER || t == U_OTHER_LETTER;
        const bool digit = u_getIntPropertyValue(u, UCHAR_NUMERIC_TYPE) == U_NT_DECIMAL ||
                           u_getIntPropertyValue(u, UCHAR_NUMERIC_TYPE) == U_NT_DIGIT;
        const bool numeric = digit || u_getIntPropertyValue(u, UCHAR_NUMERIC_TYPE) == U_NT_NUMERIC;
        bool ok;
        if (name == "isdigit") {
          ok = digit;
        } else if (name == "isalpha") {
          ok = alpha;
        } else if (name == "isalnum") {
          ok = alpha || numeric;
        } else {
          ok = IsPySpace(c);
        }
        if (!ok) return Value::Bool(false);
      }
      return Value::Bool(true);
    });
  }
  if (name == "splitlines") {
    return Method(self, name, [](Interpreter& in, const Value& s, Arguments& a) -> Value {
      Bound b("splitlines", a, {"keepends"});
      List out;
      for (const auto& line : SplitLines(DecodeUtf8(s.str()), Truthy(b.get(0, Value::Bool(false))))) {
        out.push_back(Str(EncodeUtf8(line)));
      }
      in.CheckSize(out.size() * 16);
      return Value::Seq(std::move(out));
    });
  }
  if (name == "removeprefix" || name == "removesuffix") {
    const bool prefix = name == "removeprefix";
    return Method(self, name, [prefix, name](Interpreter&, const Value& s, Arguments& a) -> Value {
      Bound b(name, a, {"affix"});
      if (!b.has(0)) ThrowInvalid(name + "() takes exactly one argument (0 given)");
      const std::string& affix = AsStr(b.get(0), name + "() argument");
      const std::string& str = s.str();
      if (prefix && str.compare(0, affix.size(), affix) == 0) return Str(str.substr(affix.size()));
      if (!prefix && str.size() >= affix.size() &&
          str.compare(str.size() - affix.size(), affix.size(), affix) == 0) {
        return Str(str.substr(0, str.size() - affix.size()));
      }
      return s;
    });
  }
  if (name == "partition" || name == "rpartition") {
    const bool right = name == "rpartition";
    return Method(self, name, [right, name](Interpreter&, const Value& s, Arguments& a) -> Value {
      Bound b(name, a, {"sep"});
      if (!b.has(0)) ThrowInvalid(name + "() takes exactly one argument (0 given)");
      const std::string& sep = AsStr(b.get(0), "must be str");
      if (sep.empty()) ThrowInvalid("empty separator");
      const std::string& str = s.str();
      const size_t p = right ? str.rfind(sep) : str.find(sep);
      if (p == std::string::npos) {
        return right ? Value::Tuple({Str(""), Str(""), s}) : Value::Tuple({s, Str(""), Str("")});
      }
      return Value::Tuple({Str(str.substr(0, p)), Str(sep), Str(str.substr(p + sep.size()))});
    });
  }
  ThrowUnimplemented("the string method '" + name + "' is not supported in chat templates");
}

std::optional<Value> DictMethod(const Value& self, const std::string& name) {
  if (name == "items" || name == "keys" || name == "values") {
    return Method(self, name, [name](Interpreter&, const Value& d, Arguments& a) -> Value {
      Bound b(name, a, {});
      List out;
      for (const auto& [k, v] : d.dict().items) {
        if (name == "items") {
          out.push_back(Value::Tuple({k, v}));
        } else {
          out.push_back(name == "keys" ? k : v);
        }
      }
      return Value::Seq(std::move(out), name == "items"  ? SeqType::kDictItems
                                        : name == "keys" ? SeqType::kDictKeys
                                                         : SeqType::kDictValues);
    });
  }
  if (name == "get") {
    return Method(self, name, [](Interpreter&, const Value& d, Arguments& a) -> Value {
      if (!a.kw.empty()) ThrowInvalid("get() takes no keyword arguments");
      if (a.pos.empty() || a.pos.size() > 2) ThrowInvalid("get expected 1 or 2 arguments");
      if (!Hashable(a.pos[0])) ThrowInvalid("unhashable type: '" + a.pos[0].TypeName() + "'");
      if (const Value* v = d.dict().Find(a.pos[0])) return *v;
      return a.pos.size() > 1 ? a.pos[1] : Value::None();
    });
  }
  static const std::set<std::string> kUnsafe = {"clear", "pop", "popitem", "setdefault", "update"};
  if (kUnsafe.count(name)) {
    // ImmutableSandboxedEnvironment: an Undefined that raises SecurityError when used.
    return Value::Undefined("access to attribute '" + name + "' of 'dict' object is unsafe.");
  }
  if (name == "copy" || name == "fromkeys") {
    ThrowUnimplemented("the dict method '" + name + "' is not supported in chat templates");
  }
  return std::nullopt;
}

std::optional<Value> SeqMethod(const Value& self, const std::string& name) {
  if (self.is_list() || self.is_tuple()) {
    if (name == "count" || name == "index") {
      return Method(self, name, [name](Interpreter&, const Value& l, Arguments& a) -> Value {
        if (!a.kw.empty() || a.pos.size() != 1) {
          if (name == "index" && a.pos.size() > 1) ThrowUnimplemented("index() with start/stop is not supported");
          ThrowInvalid(name + "() takes exactly one argument");
        }
        int64_t n = 0;
        for (size_t i = 0; i < l.seq().size(); ++i) {
          if (Equals(l.seq()[i], a.pos[0])) {
            if (name == "index") return Value::Int(static_cast<int64_t>(i));
            ++n;
          }
        }
        if (name == "index") ThrowInvalid(Repr(a.pos[0]) + " is not in " + l.TypeName());
        return Value::Int(n);
      });
    }
    static const std::set<std::string> kUnsafe = {"append", "clear", "extend", "insert",
                                                  "pop",    "remove", "reverse", "sort"};
    if (self.is_list() && kUnsafe.count(name)) {
      return Value::Undefined("access to attribute '" + name + "' of 'list' object is unsafe.");
    }
    if (self.is_list() && name == "copy") {
      ThrowUnimplemented("the list method 'copy' is not supported in chat templates");
    }
    return std::nullopt;
  }
  static const std::set<std::string> kOther = {"count", "index", "start", "stop", "step", "mapping", "isdisjoint"};
  if (kOther.count(name)) ThrowUnimplemented("the attribute '" + name + "' of " + self.TypeName() + " is not supported");
  return std::nullopt;
}

}  // namespace

std::optional<Value> BuiltinMethod(const Value& self, const std::string& name) {
  switch (self.kind()) {
    case Value::Kind::kString:
      return StrMethod(self, name);
    case Value::Kind::kDict:
      return DictMethod(self, name);
    case Value::Kind::kSeq:
      return SeqMethod(self, name);
    case Value::Kind::kInt:
    case Value::Kind::kBool:
    case Value::Kind::kFloat:
      if (NumberAttributes().count(name)) {
        ThrowUnimplemented("the attribute '" + name + "' of " + self.TypeName() + " is not supported");
      }
      return std::nullopt;
    case Value::Kind::kGenerator: {
      static const std::set<std::string> kGen = {"send", "throw", "close", "gi_code", "gi_frame", "gi_running",
                                                 "gi_yieldfrom", "gi_suspended"};
      if (kGen.count(name)) ThrowUnimplemented("the attribute '" + name + "' of a generator is not supported");
      return std::nullopt;
    }
    case Value::Kind::kCallable: {
      static const std::set<std::string> kMacro = {"name", "arguments", "defaults", "catch_kwargs",
                                                   "catch_varargs", "caller"};
      if (kMacro.count(name)) ThrowUnimplemented("the attribute '" + name + "' of a macro is not supported");
      return std::nullopt;
    }
    default:
      return std::nullopt;
  }
}

// ---- globals -------------------------------------------------------------------------------------

namespace {

Value Builtin(const std::string& name, std::function<Value(Interpreter&, const Value&, Arguments&)> fn) {
  auto c = std::make_shared<Callable>();
  c->name = name;
  c->builtin = std::move(fn);
  return Value::MakeCallable(c);
}

// dict(*args, **kwargs) into d.
void DictArgs(const std::string& fname, Interpreter& in, Arguments& a, Dict* d) {
  if (a.pos.size() > 1) ThrowInvalid(fname + " expected at most 1 argument, got " + std::to_string(a.pos.size()));
  if (!a.pos.empty()) {
    const Value& src = a.pos[0];
    if (src.is_dict()) {
      for (const auto& [k, v] : src.dict().items) d->Set(k, v);
    } else if (src.is_namespace()) {
      ThrowInvalid("'Namespace' object is not iterable");
    } else {
      size_t i = 0;
      for (const Value& pair : in.Iterate(src)) {
        const List kv = in.Iterate(pair);
        if (kv.size() != 2) {
          ThrowInvalid("dictionary update sequence element #" + std::to_string(i) + " has length " +
                       std::to_string(kv.size()) + "; 2 is required");
        }
        if (!Hashable(kv[0])) ThrowInvalid("unhashable type: '" + kv[0].TypeName() + "'");
        d->Set(kv[0], kv[1]);
        ++i;
      }
    }
  }
  for (const auto& [k, v] : a.kw) d->Set(Str(k), v);
}

}  // namespace

std::vector<std::pair<std::string, Value>> BuiltinGlobals() {
  std::vector<std::pair<std::string, Value>> g;
  g.emplace_back("range", Builtin("range", [](Interpreter& in, const Value&, Arguments& a) -> Value {
    if (!a.kw.empty()) ThrowInvalid("range() takes no keyword arguments");
    if (a.pos.empty() || a.pos.size() > 3) ThrowInvalid("range expected 1 to 3 arguments");
    int64_t start = 0, stop, step = 1;
    if (a.pos.size() == 1) {
      stop = AsIndex(a.pos[0], "range");
    } else {
      start = AsIndex(a.pos[0], "range");
      stop = AsIndex(a.pos[1], "range");
      if (a.pos.size() == 3) step = AsIndex(a.pos[2], "range");
    }
    if (step == 0) ThrowInvalid("range() arg 3 must not be zero");
    // jinja2's sandbox refuses ranges longer than MAX_RANGE (100000).
    const long double n = step > 0 ? std::ceil((static_cast<long double>(stop) - start) / step)
                                   : std::ceil((static_cast<long double>(start) - stop) / -step);
    if (n > 100000) {
      ThrowInvalid("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
    }
    List items;
    if (n > 0) in.Charge(static_cast<size_t>(n));
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) items.push_back(Value::Int(i));
    return Value::Range(start, stop, step, std::move(items));
  }));
  g.emplace_back("dict", Builtin("dict", [](Interpreter& in, const Value&, Arguments& a) -> Value {
    Dict d;
    DictArgs("dict", in, a, &d);
    return Value::MakeDict(std::move(d));
  }));
  g.emplace_back("namespace", Builtin("namespace", [](Interpreter& in, const Value&, Arguments& a) -> Value {
    Dict d;
    DictArgs("namespace", in, a, &d);
    Namespace* ns = in.NewNamespace();
    for (const auto& [k, v] : d.items) {
      if (!k.is_string()) ThrowInvalid("keywords must be strings");
      if (!k.str().empty() && k.str()[0] == '_') {
        ThrowInvalid("Chat templates cannot store underscore-prefixed attributes on a namespace, but got '" +
                     k.str() + "'");
      }
      ns->Set(k.str(), v);
    }
    return Value::MakeNamespace(ns);
  }));
  g.emplace_back("raise_exception", Builtin("raise_exception", [](Interpreter&, const Value&, Arguments& a) -> Value {
    if (a.pos.size() != 1 || !a.kw.empty()) ThrowInvalid("raise_exception() takes exactly one argument");
    // The message is the template's own, verbatim (no position prefix).
    throw TemplateError{absl::StatusCode::kInvalidArgument, ToStr(a.pos[0]), SourcePos{-1, -1}};
  }));
  g.emplace_back("strftime_now", Builtin("strftime_now", [](Interpreter& in, const Value&, Arguments& a) -> Value {
    if (a.pos.size() != 1 || !a.kw.empty()) ThrowInvalid("strftime_now() takes exactly one argument");
    const std::string& fmt = AsStr(a.pos[0], "strftime() argument 1");
    const auto now = std::chrono::system_clock::now();
    const std::time_t t = std::chrono::system_clock::to_time_t(now);
    const auto micros =
        std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count() % 1000000;
    std::tm tm{};
    localtime_r(&t, &tm);
    // %f (microseconds) is Python's; the rest is the C library's, as in CPython.
    std::string f;
    for (size_t i = 0; i < fmt.size(); ++i) {
      if (fmt[i] == '%' && i + 1 < fmt.size()) {
        if (fmt[i + 1] == 'f') {
          char b[8];
          std::snprintf(b, sizeof(b), "%06lld", static_cast<long long>(micros));
          f += b;
          ++i;
          continue;
        }
        f += fmt[i];
        f += fmt[++i];
        continue;
      }
      f += fmt[i];
    }
    if (f.size() > 4096) ThrowInvalid("strftime_now: format too long");
    std::string out(f.size() * 8 + 64, '\0');
    const size_t n = f.empty() ? 0 : std::strftime(out.data(), out.size(), f.c_str(), &tm);
    out.resize(n);
    in.CheckSize(out.size());
    return Str(out);
  }));
  for (const char* stub : {"cycler", "joiner", "lipsum"}) {
    const std::string name = stub;
    g.emplace_back(name, Builtin(name, [name](Interpreter&, const Value&, Arguments&) -> Value {
      ThrowUnimplemented("the global function '" + name + "' is not supported in chat templates");
    }));
  }
  return g;
}

}  // namespace sluice::chat::internal
