// The values a chat template computes with, with Python's semantics as jinja2 sees
// them: None, bool, int, float, str, list, tuple, dict (insertion-ordered), dict
// views, range, generators (the lazy results of select/map/...), namespace, loop,
// callables, and jinja2's Undefined. Internal to engine/chat_template.
//
// Lists, tuples and dicts are immutable here, as jinja2's ImmutableSandboxedEnvironment
// makes them, so they are shared by pointer. The only mutable objects (namespaces,
// loops, generators) are owned by the render's arena, so values never form
// reference cycles.
#ifndef SLUICE_ENGINE_CHAT_TEMPLATE_VALUE_H_
#define SLUICE_ENGINE_CHAT_TEMPLATE_VALUE_H_

#include <algorithm>
#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/chat_template/errors.h"

namespace sluice::chat::internal {

class Value;
class Interpreter;
struct MacroNode;
struct Scope;
struct LoopState;

using List = std::vector<Value>;

// An insertion-ordered dict. Keys are hashable scalars (str, int, float, bool, None).
struct Dict {
  std::vector<std::pair<Value, Value>> items;
  const Value* Find(const Value& key) const;
  // Inserts or replaces (keeping the original position, as Python does).
  void Set(Value key, Value value);
};

// jinja2.utils.Namespace: string attributes, mutable through `{% set ns.x = ... %}`.
struct Namespace {
  std::vector<std::pair<std::string, Value>> attrs;
  const Value* Find(std::string_view name) const;
  void Set(const std::string& name, Value value);
};

// A generator or iterator (select, map, items, reverse, ...): lazy, consumed once,
// as Python's are. `next` stores the next item and returns true, or returns false
// at the end; errors are thrown when the consumer reaches them.
struct Generator {
  std::string type_name;  // "generator", "list_reverseiterator", ...
  std::function<bool(Value* out)> next;
  bool exhausted = false;
  bool running = false;
};

struct Arguments;
struct Callable;

enum class SeqType : uint8_t { kList, kTuple, kRange, kDictKeys, kDictValues, kDictItems };

class Value {
 public:
  enum class Kind : uint8_t {
    kUndefined,
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kSeq,  // list, tuple, range, dict views
    kDict,
    kNamespace,
    kLoop,
    kGenerator,
    kCallable,
  };

  Value() : kind_(Kind::kUndefined) {}
  static Value Undefined(std::string hint = "") {
    Value v;
    if (!hint.empty()) v.str_ = std::make_shared<const std::string>(std::move(hint));
    return v;
  }
  static Value None() { return Value(Kind::kNone); }
  static Value Bool(bool b) {
    Value v(Kind::kBool);
    v.int_ = b ? 1 : 0;
    return v;
  }
  static Value Int(int64_t i) {
    Value v(Kind::kInt);
    v.int_ = i;
    return v;
  }
  static Value Float(double f) {
    Value v(Kind::kFloat);
    v.float_ = f;
    return v;
  }
  static Value String(std::string s) {
    Value v(Kind::kString);
    v.str_ = std::make_shared<const std::string>(std::move(s));
    return v;
  }
  static Value Seq(List items, SeqType type = SeqType::kList) {
    Value v(Kind::kSeq);
    for (const Value& item : items) v.depth_ = std::max<int>(v.depth_, item.depth_ + 1);
    CheckDepth(v.depth_);
    v.seq_ = std::make_shared<const List>(std::move(items));
    v.seq_type_ = type;
    return v;
  }
  static Value Tuple(List items) { return Seq(std::move(items), SeqType::kTuple); }
  // range(start, stop, step): materialized (the sandbox caps ranges at 100000 items).
  static Value Range(int64_t start, int64_t stop, int64_t step, List items) {
    Value v = Seq(std::move(items), SeqType::kRange);
    v.range_ = std::make_shared<const std::array<int64_t, 3>>(std::array<int64_t, 3>{start, stop, step});
    return v;
  }
  static Value MakeDict(Dict d) {
    Value v(Kind::kDict);
    for (const auto& [key, item] : d.items) {
      v.depth_ = std::max<int>(v.depth_, std::max(key.depth_, item.depth_) + 1);
    }
    CheckDepth(v.depth_);
    v.dict_ = std::make_shared<const Dict>(std::move(d));
    return v;
  }
  static Value MakeNamespace(Namespace* ns) {
    Value v(Kind::kNamespace);
    v.ptr_ = ns;
    return v;
  }
  static Value MakeLoop(LoopState* loop) {
    Value v(Kind::kLoop);
    v.ptr_ = loop;
    return v;
  }
  static Value MakeGenerator(Generator* gen) {
    Value v(Kind::kGenerator);
    v.ptr_ = gen;
    return v;
  }
  static Value MakeCallable(std::shared_ptr<const Callable> fn);
  // Marks a string as jinja2 Markup (|safe, |escape): it renders the same, but
  // `is escaped` is true for it.
  Value AsMarkup() const {
    Value v = *this;
    v.markup_ = true;
    return v;
  }

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_int() const { return kind_ == Kind::kInt; }
  bool is_float() const { return kind_ == Kind::kFloat; }
  bool is_number() const { return kind_ == Kind::kInt || kind_ == Kind::kFloat || kind_ == Kind::kBool; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_seq() const { return kind_ == Kind::kSeq; }
  bool is_list() const { return kind_ == Kind::kSeq && seq_type_ == SeqType::kList; }
  bool is_tuple() const { return kind_ == Kind::kSeq && seq_type_ == SeqType::kTuple; }
  bool is_dict() const { return kind_ == Kind::kDict; }
  bool is_namespace() const { return kind_ == Kind::kNamespace; }
  bool is_loop() const { return kind_ == Kind::kLoop; }
  bool is_generator() const { return kind_ == Kind::kGenerator; }
  bool is_callable() const { return kind_ == Kind::kCallable; }
  bool is_markup() const { return markup_; }

  bool as_bool() const { return int_ != 0; }
  int64_t as_int() const { return int_; }  // int or bool
  double as_float() const { return kind_ == Kind::kFloat ? float_ : static_cast<double>(int_); }
  const std::string& str() const { return *str_; }
  const List& seq() const { return *seq_; }
  SeqType seq_type() const { return seq_type_; }
  const std::array<int64_t, 3>& range() const { return *range_; }
  const Dict& dict() const { return *dict_; }
  Namespace* ns() const { return static_cast<Namespace*>(ptr_); }
  LoopState* loop() const { return static_cast<LoopState*>(ptr_); }
  Generator* gen() const { return static_cast<Generator*>(ptr_); }
  const Callable& fn() const { return *fn_; }
  // The message an Undefined raises when used ("'x' is undefined").
  std::string undefined_hint() const { return str_ ? *str_ : std::string("value is undefined"); }

  // Python's type name, as used in error messages ("str", "dict", "NoneType").
  std::string TypeName() const;
  // How deeply containers nest inside this value (0 for scalars). Capped at
  // kMaxDepth, so that printing, comparing and destroying values never recurses
  // without bound.
  int depth() const { return depth_; }
  static constexpr int kMaxDepth = 256;

 private:
  explicit Value(Kind k) : kind_(k) {}
  static void CheckDepth(int depth) {
    if (depth > kMaxDepth) ThrowExhausted("values nest more than 256 levels deep");
  }

  Kind kind_;
  SeqType seq_type_ = SeqType::kList;
  bool markup_ = false;
  int16_t depth_ = 0;
  int64_t int_ = 0;
  double float_ = 0;
  std::shared_ptr<const std::string> str_;  // string, or the Undefined's hint
  std::shared_ptr<const List> seq_;
  std::shared_ptr<const std::array<int64_t, 3>> range_;
  std::shared_ptr<const Dict> dict_;
  void* ptr_ = nullptr;  // arena-owned Namespace / LoopState / Generator
  std::shared_ptr<const Callable> fn_;
};

// Something callable: a builtin global, a bound method, a macro, `caller`, loop.cycle.
struct Callable {
  std::string name;
  // Builtins and bound methods (`self` is the bound object, or Undefined).
  std::function<Value(Interpreter&, const Value& self, Arguments&)> builtin;
  Value self;
  // Macros and `caller`.
  const MacroNode* macro = nullptr;
  Scope* closure = nullptr;
  // `caller` of a {% call %} block, passed into the macro when it is called.
  bool is_caller = false;
};

// ---- Python semantics ------------------------------------------------------------

// bool(v). Raises nothing (every value has a truth value here).
bool Truthy(const Value& v);
// str(v) as jinja2 renders `{{ v }}`. Throws UNIMPLEMENTED for objects whose str()
// shows a memory address (functions, generators), which cannot be reproduced.
std::string ToStr(const Value& v);
// repr(v).
std::string Repr(const Value& v);
// v1 == v2 with Python's rules (1 == 1.0 == True, list != tuple, dicts unordered).
bool Equals(const Value& a, const Value& b);
// a < b; throws TypeError-like INVALID_ARGUMENT for unorderable types.
bool Less(const Value& a, const Value& b);
// Whether v can be a dict key / set member (str, int, float, bool, None, tuple of those).
bool Hashable(const Value& v);

// Python's float repr ("1.0", "1e+16", "0.30000000000000004", "inf", "nan").
std::string FloatRepr(double d);
// Python's str.isspace for one code point.
bool IsPySpace(char32_t cp);

// json.dumps(v, ensure_ascii=False, indent=indent, separators=..., sort_keys=...), as
// transformers' tojson filter calls it. indent < 0: None; indent_str set: a string indent.
struct JsonDumpOptions {
  bool has_indent = false;
  std::string indent;  // the indent unit when has_indent
  std::string item_separator = ", ";
  std::string key_separator = ": ";
  bool sort_keys = false;
  bool ensure_ascii = false;
};
std::string JsonDumps(const Value& v, const JsonDumpOptions& options);

// The template's view of a JSON input value (objects keep their key order).
Value FromJson(const nlohmann::ordered_json& j);

// ---- UTF-8 ---------------------------------------------------------------------------

// Decodes UTF-8 to code points; invalid bytes decode as U+FFFD-free surrogates of
// themselves is not needed: inputs are validated (nlohmann::json and the lexer both
// reject invalid UTF-8), so malformed sequences decode byte-by-byte as U+DC80+byte
// (Python's surrogateescape) and encode back unchanged.
std::u32string DecodeUtf8(std::string_view s);
std::string EncodeUtf8(std::u32string_view s);
void AppendUtf8(char32_t cp, std::string* out);
// Number of code points.
size_t Utf8Length(std::string_view s);
// Well-formed UTF-8 (what Python's str accepts: no overlong forms or surrogates).
bool ValidUtf8(std::string_view s);

}  // namespace sluice::chat::internal

#endif  // SLUICE_ENGINE_CHAT_TEMPLATE_VALUE_H_
