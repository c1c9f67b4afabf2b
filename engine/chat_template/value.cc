#include "engine/chat_template/value.h"

#include <unicode/uchar.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

namespace sluice::chat::internal {

// ---- containers --------------------------------------------------------------------------

const Value* Dict::Find(const Value& key) const {
  for (const auto& [k, v] : items) {
    if (Equals(k, key)) return &v;
  }
  return nullptr;
}

void Dict::Set(Value key, Value value) {
  for (auto& [k, v] : items) {
    if (Equals(k, key)) {
      v = std::move(value);
      return;
    }
  }
  items.emplace_back(std::move(key), std::move(value));
}

const Value* Namespace::Find(std::string_view name) const {
  for (const auto& [k, v] : attrs) {
    if (k == name) return &v;
  }
  return nullptr;
}

void Namespace::Set(const std::string& name, Value value) {
  for (auto& [k, v] : attrs) {
    if (k == name) {
      v = std::move(value);
      return;
    }
  }
  attrs.emplace_back(name, std::move(value));
}

Value Value::MakeCallable(std::shared_ptr<const Callable> fn) {
  Value v(Kind::kCallable);
  v.depth_ = static_cast<int16_t>(fn->self.depth_ + 1);
  CheckDepth(v.depth_);
  v.fn_ = std::move(fn);
  return v;
}

std::string Value::TypeName() const {
  switch (kind_) {
    case Kind::kUndefined:
      return "Undefined";
    case Kind::kNone:
      return "NoneType";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kFloat:
      return "float";
    case Kind::kString:
      return markup_ ? "Markup" : "str";
    case Kind::kSeq:
      switch (seq_type_) {
        case SeqType::kList:
          return "list";
        case SeqType::kTuple:
          return "tuple";
        case SeqType::kRange:
          return "range";
        case SeqType::kDictKeys:
          return "dict_keys";
        case SeqType::kDictValues:
          return "dict_values";
        case SeqType::kDictItems:
          return "dict_items";
      }
      return "list";
    case Kind::kDict:
      return "dict";
    case Kind::kNamespace:
      return "Namespace";
    case Kind::kLoop:
      return "LoopContext";
    case Kind::kGenerator:
      return gen()->type_name;
    case Kind::kCallable:
      return "function";
  }
  return "object";
}

// ---- UTF-8 ---------------------------------------------------------------------------------

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

namespace {

// Decodes one code point at s[i]; malformed input (which validated inputs never
// contain) decodes one byte at a time so that loops always progress.
size_t DecodeOne(std::string_view s, size_t i, char32_t* cp) {
  const auto b0 = static_cast<uint8_t>(s[i]);
  auto cont = [&](size_t k) { return i + k < s.size() && (static_cast<uint8_t>(s[i + k]) & 0xC0) == 0x80; };
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  if (b0 >= 0xC2 && b0 < 0xE0 && cont(1)) {
    *cp = ((b0 & 0x1Fu) << 6) | (static_cast<uint8_t>(s[i + 1]) & 0x3Fu);
    return 2;
  }
  if (b0 >= 0xE0 && b0 < 0xF0 && cont(1) && cont(2)) {
    *cp = ((b0 & 0x0Fu) << 12) | ((static_cast<uint8_t>(s[i + 1]) & 0x3Fu) << 6) |
          (static_cast<uint8_t>(s[i + 2]) & 0x3Fu);
    return 3;
  }
  if (b0 >= 0xF0 && b0 < 0xF5 && cont(1) && cont(2) && cont(3)) {
    *cp = ((b0 & 0x07u) << 18) | ((static_cast<uint8_t>(s[i + 1]) & 0x3Fu) << 12) |
          ((static_cast<uint8_t>(s[i + 2]) & 0x3Fu) << 6) | (static_cast<uint8_t>(s[i + 3]) & 0x3Fu);
    return 4;
  }
  *cp = 0xFFFD;
  return 1;
}

}  // namespace

std::u32string DecodeUtf8(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    char32_t cp;
    i += DecodeOne(s, i, &cp);
    out.push_back(cp);
  }
  return out;
}

std::string EncodeUtf8(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t cp : s) AppendUtf8(cp, &out);
  return out;
}

size_t Utf8Length(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

bool IsPySpace(char32_t cp) {
  switch (cp) {
    case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D:
    case 0x1C: case 0x1D: case 0x1E: case 0x1F: case 0x20:
    case 0x85: case 0xA0: case 0x1680:
    case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

// ---- numbers -------------------------------------------------------------------------------

std::string FloatRepr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  std::string sign = std::signbit(d) ? "-" : "";
  d = std::fabs(d);
  if (d == 0) return sign + "0.0";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  const size_t e = sci.find('e');
  std::string digits;
  for (size_t i = 0; i < e; ++i) {
    if (sci[i] != '.') digits.push_back(sci[i]);
  }
  const int exp10 = std::atoi(sci.c_str() + e + 1);
  const int decpt = exp10 + 1;
  const int nd = static_cast<int>(digits.size());
  std::string out;
  if (decpt <= -4 || decpt > 16) {
    out = digits.substr(0, 1);
    if (nd > 1) out += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof(eb), "e%c%02d", exp10 < 0 ? '-' : '+', std::abs(exp10));
    out += eb;
  } else if (decpt <= 0) {
    out = "0." + std::string(-decpt, '0') + digits;
  } else if (decpt >= nd) {
    out = digits + std::string(decpt - nd, '0') + ".0";
  } else {
    out = digits.substr(0, decpt) + "." + digits.substr(decpt);
  }
  return sign + out;
}

// ---- truth, str, repr ----------------------------------------------------------------------

bool Truthy(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone:
      return false;
    case Value::Kind::kBool:
    case Value::Kind::kInt:
      return v.as_int() != 0;
    case Value::Kind::kFloat:
      return v.as_float() != 0;
    case Value::Kind::kString:
      return !v.str().empty();
    case Value::Kind::kSeq:
      return !v.seq().empty();
    case Value::Kind::kDict:
      return !v.dict().items.empty();
    default:
      return true;  // namespace, loop, generator, callable
  }
}

namespace {

bool IsPrintable(char32_t cp) {
  if (cp == ' ') return true;
  switch (u_charType(static_cast<UChar32>(cp))) {
    case U_CONTROL_CHAR:
    case U_FORMAT_CHAR:
    case U_SURROGATE:
    case U_PRIVATE_USE_CHAR:
    case U_UNASSIGNED:
    case U_LINE_SEPARATOR:
    case U_PARAGRAPH_SEPARATOR:
    case U_SPACE_SEPARATOR:
      return false;
    default:
      return true;
  }
}

std::string StrRepr(const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos;
  const bool has_double = s.find('"') != std::string::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (char32_t cp : DecodeUtf8(s)) {
    if (cp == static_cast<char32_t>(quote) || cp == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(cp));
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (cp == '\t') {
      out += "\\t";
    } else if (cp < 0x20 || cp == 0x7F) {
      char b[8];
      std::snprintf(b, sizeof(b), "\\x%02x", static_cast<unsigned>(cp));
      out += b;
    } else if (cp < 0x80 || IsPrintable(cp)) {
      AppendUtf8(cp, &out);
    } else {
      char b[16];
      if (cp < 0x100) {
        std::snprintf(b, sizeof(b), "\\x%02x", static_cast<unsigned>(cp));
      } else if (cp < 0x10000) {
        std::snprintf(b, sizeof(b), "\\u%04x", static_cast<unsigned>(cp));
      } else {
        std::snprintf(b, sizeof(b), "\\U%08x", static_cast<unsigned>(cp));
      }
      out += b;
    }
  }
  out.push_back(quote);
  return out;
}

std::string SeqRepr(const List& items, const char* open, const char* close, bool tuple) {
  std::string out = open;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += ", ";
    out += Repr(items[i]);
  }
  if (tuple && items.size() == 1) out += ",";
  out += close;
  return out;
}

std::string DictRepr(const Dict& d) {
  std::string out = "{";
  for (size_t i = 0; i < d.items.size(); ++i) {
    if (i) out += ", ";
    out += Repr(d.items[i].first) + ": " + Repr(d.items[i].second);
  }
  return out + "}";
}

}  // namespace

std::string ToStr(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return "";
    case Value::Kind::kString:
      return v.str();
    default:
      return Repr(v);
  }
}

std::string Repr(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return "Undefined";
    case Value::Kind::kNone:
      return "None";
    case Value::Kind::kBool:
      return v.as_bool() ? "True" : "False";
    case Value::Kind::kInt:
      return std::to_string(v.as_int());
    case Value::Kind::kFloat:
      return FloatRepr(v.as_float());
    case Value::Kind::kString:
      return v.is_markup() ? "Markup(" + StrRepr(v.str()) + ")" : StrRepr(v.str());
    case Value::Kind::kSeq:
      switch (v.seq_type()) {
        case SeqType::kList:
          return SeqRepr(v.seq(), "[", "]", false);
        case SeqType::kTuple:
          return SeqRepr(v.seq(), "(", ")", true);
        case SeqType::kRange: {
          const auto& r = v.range();
          std::string out = "range(" + std::to_string(r[0]) + ", " + std::to_string(r[1]);
          if (r[2] != 1) out += ", " + std::to_string(r[2]);
          return out + ")";
        }
        case SeqType::kDictKeys:
          return "dict_keys(" + SeqRepr(v.seq(), "[", "]", false) + ")";
        case SeqType::kDictValues:
          return "dict_values(" + SeqRepr(v.seq(), "[", "]", false) + ")";
        case SeqType::kDictItems:
          return "dict_items(" + SeqRepr(v.seq(), "[", "]", false) + ")";
      }
      return "";
    case Value::Kind::kDict:
      return DictRepr(v.dict());
    case Value::Kind::kNamespace: {
      // A namespace may hold itself (through a list); Python prints "{...}" there.
      static thread_local int ns_depth = 0;
      if (ns_depth >= 16) ThrowUnimplemented("printing a namespace that contains itself is not supported");
      ++ns_depth;
      struct Leave {
        ~Leave() { --ns_depth; }
      } leave;
      Dict d;
      for (const auto& [k, val] : v.ns()->attrs) d.items.emplace_back(Value::String(k), val);
      return "<Namespace " + DictRepr(d) + ">";
    }
    case Value::Kind::kLoop:
      ThrowUnimplemented("printing a loop object is not supported");
    case Value::Kind::kGenerator:
      ThrowUnimplemented("printing a " + v.TypeName() +
                         " object is not supported (Python prints its memory address)");
    case Value::Kind::kCallable:
      ThrowUnimplemented("printing the function '" + v.fn().name +
                         "' is not supported (Python prints its memory address)");
  }
  return "";
}

// ---- comparison ----------------------------------------------------------------------------

bool Equals(const Value& a, const Value& b) {
  using K = Value::Kind;
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) return a.as_float() == b.as_float();
    return a.as_int() == b.as_int();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case K::kUndefined:
    case K::kNone:
      return true;
    case K::kString:
      return a.str() == b.str();
    case K::kSeq: {
      if (a.seq_type() != b.seq_type()) return false;
      const List& x = a.seq();
      const List& y = b.seq();
      if (a.seq_type() == SeqType::kDictValues) {
        ThrowUnimplemented("comparing dict_values objects is not supported (Python compares their identity)");
      }
      if (x.size() != y.size()) return false;
      if (a.seq_type() == SeqType::kDictKeys || a.seq_type() == SeqType::kDictItems) {
        // Set-like views compare as sets.
        for (const Value& v : x) {
          bool found = false;
          for (const Value& w : y) found = found || Equals(v, w);
          if (!found) return false;
        }
        return true;
      }
      for (size_t i = 0; i < x.size(); ++i) {
        if (!Equals(x[i], y[i])) return false;
      }
      return true;
    }
    case K::kDict: {
      const Dict& x = a.dict();
      const Dict& y = b.dict();
      if (x.items.size() != y.items.size()) return false;
      for (const auto& [k, v] : x.items) {
        const Value* other = y.Find(k);
        if (other == nullptr || !Equals(v, *other)) return false;
      }
      return true;
    }
    case K::kNamespace:
    case K::kLoop:
    case K::kGenerator:
      return a.ns() == b.ns();
    case K::kCallable:
      return &a.fn() == &b.fn();
    default:
      return false;
  }
}

bool Less(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) return a.as_float() < b.as_float();
    return a.as_int() < b.as_int();
  }
  if (a.is_string() && b.is_string()) return a.str() < b.str();
  if (a.is_seq() && b.is_seq() && a.seq_type() == b.seq_type() &&
      (a.is_list() || a.is_tuple())) {
    const List& x = a.seq();
    const List& y = b.seq();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (!Equals(x[i], y[i])) return Less(x[i], y[i]);
    }
    return x.size() < y.size();
  }
  if (a.is_undefined() || b.is_undefined()) {
    ThrowInvalid(a.is_undefined() ? a.undefined_hint() : b.undefined_hint());
  }
  if (a.is_seq() && b.is_seq() && a.seq_type() == b.seq_type() &&
      (a.seq_type() == SeqType::kDictKeys || a.seq_type() == SeqType::kDictItems)) {
    ThrowUnimplemented("ordering dict views (subset tests) is not supported");
  }
  ThrowInvalid("'<' not supported between instances of '" + a.TypeName() + "' and '" +
               b.TypeName() + "'");
}

bool Hashable(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kNone:
    case Value::Kind::kBool:
    case Value::Kind::kInt:
    case Value::Kind::kFloat:
    case Value::Kind::kString:
    case Value::Kind::kUndefined:
      return true;
    case Value::Kind::kSeq:
      if (v.is_tuple()) {
        return std::all_of(v.seq().begin(), v.seq().end(), [](const Value& x) { return Hashable(x); });
      }
      return v.seq_type() == SeqType::kRange;
    default:
      return false;
  }
}

// ---- JSON ----------------------------------------------------------------------------------

// Well-formed UTF-8: no overlong forms, surrogates or code points above U+10FFFF.
bool ValidUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const auto b0 = static_cast<uint8_t>(s[i]);
    if (b0 < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    char32_t cp;
    if (b0 >= 0xC2 && b0 < 0xE0) {
      len = 2;
      cp = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 < 0xF0) {
      len = 3;
      cp = b0 & 0x0F;
    } else if (b0 >= 0xF0 && b0 < 0xF5) {
      len = 4;
      cp = b0 & 0x07;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto b = static_cast<uint8_t>(s[i + k]);
      if ((b & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (b & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += len;
  }
  return true;
}

namespace {

void JsonString(const std::string& s, bool ensure_ascii, std::string* out) {
  out->push_back('"');
  for (char32_t cp : DecodeUtf8(s)) {
    switch (cp) {
      case '"':
        *out += "\\\"";
        break;
      case '\\':
        *out += "\\\\";
        break;
      case '\n':
        *out += "\\n";
        break;
      case '\r':
        *out += "\\r";
        break;
      case '\t':
        *out += "\\t";
        break;
      case '\b':
        *out += "\\b";
        break;
      case '\f':
        *out += "\\f";
        break;
      default:
        if (cp < 0x20 || (ensure_ascii && cp > 0x7E)) {
          char b[16];
          if (cp >= 0x10000) {
            const char32_t v = cp - 0x10000;
            std::snprintf(b, sizeof(b), "\\u%04x\\u%04x", static_cast<unsigned>(0xD800 | (v >> 10)),
                          static_cast<unsigned>(0xDC00 | (v & 0x3FF)));
          } else {
            std::snprintf(b, sizeof(b), "\\u%04x", static_cast<unsigned>(cp));
          }
          *out += b;
        } else {
          AppendUtf8(cp, out);
        }
    }
  }
  out->push_back('"');
}

std::string JsonFloat(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
  return FloatRepr(d);
}

[[noreturn]] void NotSerializable(const Value& v) {
  ThrowInvalid("Object of type " + v.TypeName() + " is not JSON serializable");
}

void Dump(const Value& v, const JsonDumpOptions& o, int level, std::string* out) {
  if (level > 512) ThrowExhausted("tojson: value nested too deeply");
  auto newline = [&](int lvl) {
    out->push_back('\n');
    for (int i = 0; i < lvl; ++i) *out += o.indent;
  };
  switch (v.kind()) {
    case Value::Kind::kNone:
      *out += "null";
      return;
    case Value::Kind::kBool:
      *out += v.as_bool() ? "true" : "false";
      return;
    case Value::Kind::kInt:
      *out += std::to_string(v.as_int());
      return;
    case Value::Kind::kFloat:
      *out += JsonFloat(v.as_float());
      return;
    case Value::Kind::kString:
      JsonString(v.str(), o.ensure_ascii, out);
      return;
    case Value::Kind::kSeq: {
      if (!v.is_list() && !v.is_tuple()) NotSerializable(v);
      const List& items = v.seq();
      if (items.empty()) {
        *out += "[]";
        return;
      }
      out->push_back('[');
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) *out += o.item_separator;
        if (o.has_indent) newline(level + 1);
        Dump(items[i], o, level + 1, out);
      }
      if (o.has_indent) newline(level);
      out->push_back(']');
      return;
    }
    case Value::Kind::kDict: {
      const Dict& d = v.dict();
      if (d.items.empty()) {
        *out += "{}";
        return;
      }
      std::vector<const std::pair<Value, Value>*> items;
      for (const auto& kv : d.items) items.push_back(&kv);
      if (o.sort_keys) {
        std::stable_sort(items.begin(), items.end(),
                         [](const auto* a, const auto* b) { return Less(a->first, b->first); });
      }
      out->push_back('{');
      bool first = true;
      for (const auto* kv : items) {
        std::string key;
        const Value& k = kv->first;
        switch (k.kind()) {
          case Value::Kind::kString:
            key = k.str();
            break;
          case Value::Kind::kFloat:
            key = JsonFloat(k.as_float());
            break;
          case Value::Kind::kBool:
            key = k.as_bool() ? "true" : "false";
            break;
          case Value::Kind::kInt:
            key = std::to_string(k.as_int());
            break;
          case Value::Kind::kNone:
            key = "null";
            break;
          default:
            ThrowInvalid("keys must be str, int, float, bool or None, not " + k.TypeName());
        }
        if (!first) *out += o.item_separator;
        first = false;
        if (o.has_indent) newline(level + 1);
        JsonString(key, o.ensure_ascii, out);
        *out += o.key_separator;
        Dump(kv->second, o, level + 1, out);
      }
      if (o.has_indent) newline(level);
      out->push_back('}');
      return;
    }
    default:
      NotSerializable(v);
  }
}

Value CheckedString(const std::string& s) {
  if (!ValidUtf8(s)) ThrowInvalid("chat template input: a string is not valid UTF-8");
  return Value::String(s);
}

}  // namespace

std::string JsonDumps(const Value& v, const JsonDumpOptions& options) {
  std::string out;
  Dump(v, options, 0, &out);
  return out;
}

namespace {
Value FromJsonAt(const nlohmann::ordered_json& j, int depth);
}  // namespace

Value FromJson(const nlohmann::ordered_json& j) { return FromJsonAt(j, 0); }

namespace {
Value FromJsonAt(const nlohmann::ordered_json& j, int depth) {
  if (depth > Value::kMaxDepth) ThrowExhausted("chat template input nests more than 256 levels deep");
  using T = nlohmann::ordered_json::value_t;
  switch (j.type()) {
    case T::null:
    case T::discarded:
      return Value::None();
    case T::boolean:
      return Value::Bool(j.get<bool>());
    case T::number_integer:
      return Value::Int(j.get<int64_t>());
    case T::number_unsigned: {
      const auto u = j.get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        ThrowUnimplemented("chat template input: integer " + std::to_string(u) + " exceeds 64 bits");
      }
      return Value::Int(static_cast<int64_t>(u));
    }
    case T::number_float:
      return Value::Float(j.get<double>());
    case T::string:
      return CheckedString(j.get_ref<const std::string&>());
    case T::array: {
      List items;
      items.reserve(j.size());
      for (const auto& e : j) items.push_back(FromJsonAt(e, depth + 1));
      return Value::Seq(std::move(items));
    }
    case T::object: {
      Dict d;
      d.items.reserve(j.size());
      for (auto it = j.begin(); it != j.end(); ++it) {
        d.items.emplace_back(CheckedString(it.key()), FromJsonAt(it.value(), depth + 1));
      }
      return Value::MakeDict(std::move(d));
    }
    case T::binary:
      ThrowUnimplemented("chat template input: binary JSON values are not supported");
  }
  return Value::None();
}
}  // namespace

}  // namespace sluice::chat::internal
