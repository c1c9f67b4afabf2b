#include "engine/chat_template/interpreter.h"

#include <cmath>
#include <limits>
#include <string>
#include <utility>

namespace sluice::chat::internal {

// ---- scopes --------------------------------------------------------------------------------

const Value* Scope::Find(std::string_view name) const {
  for (const auto& [k, v] : vars) {
    if (k == name) return &v;
  }
  return nullptr;
}

void Scope::Set(const std::string& name, Value value) {
  for (auto& [k, v] : vars) {
    if (k == name) {
      v = std::move(value);
      return;
    }
  }
  vars.emplace_back(name, std::move(value));
}

namespace {

constexpr size_t kMaxArenaObjects = 1'000'000;

[[noreturn]] void ThrowUndefined(const Value& v) { ThrowInvalid(v.undefined_hint()); }

std::string ObjectTypeRepr(const Value& v) {
  if (v.is_none()) return "None";
  return v.TypeName() + " object";
}

bool CheckedAdd(int64_t a, int64_t b, int64_t* out) { return !__builtin_add_overflow(a, b, out); }
bool CheckedSub(int64_t a, int64_t b, int64_t* out) { return !__builtin_sub_overflow(a, b, out); }
bool CheckedMul(int64_t a, int64_t b, int64_t* out) { return !__builtin_mul_overflow(a, b, out); }

[[noreturn]] void Overflow() { ThrowUnimplemented("integer arithmetic beyond 64 bits is not supported"); }

int64_t FloorDiv(int64_t a, int64_t b) {
  if (b == 0) ThrowInvalid("integer division or modulo by zero");
  if (a == std::numeric_limits<int64_t>::min() && b == -1) Overflow();
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

int64_t FloorMod(int64_t a, int64_t b) {
  if (b == 0) ThrowInvalid("integer division or modulo by zero");
  if (b == -1) return 0;
  int64_t r = a % b;
  if (r != 0 && ((r < 0) != (b < 0))) r += b;
  return r;
}

// CPython's float_divmod.
void FloatDivMod(double vx, double wx, double* floordiv, double* mod_out) {
  double mod = std::fmod(vx, wx);
  double div = (vx - mod) / wx;
  if (mod != 0) {
    if ((wx < 0) != (mod < 0)) {
      mod += wx;
      div -= 1.0;
    }
  } else {
    mod = std::copysign(0.0, wx);
  }
  double fd;
  if (div != 0) {
    fd = std::floor(div);
    if (div - fd > 0.5) fd += 1.0;
  } else {
    fd = std::copysign(0.0, vx / wx);
  }
  *floordiv = fd;
  *mod_out = mod;
}

[[noreturn]] void UnsupportedOperands(const std::string& op, const Value& a, const Value& b) {
  ThrowInvalid("unsupported operand type(s) for " + op + ": '" + a.TypeName() + "' and '" + b.TypeName() + "'");
}

}  // namespace

struct Interpreter::CursorState {
  List items;
  size_t pos = 0;
  Generator* gen = nullptr;
};

// Bounds the nesting of Exec/Eval frames.
struct EvalGuard {
  explicit EvalGuard(Interpreter* in) : in(in) {
    if (++in->eval_depth_ > in->limits_.max_eval_depth) {
      ThrowExhausted("chat template evaluation nests too deeply");
    }
  }
  ~EvalGuard() { --in->eval_depth_; }
  Interpreter* in;
};

Interpreter::Interpreter(const Template& tmpl, const Limits& limits) : tmpl_(tmpl), limits_(limits) {}

Interpreter::~Interpreter() = default;

void Interpreter::Step() {
  if (++steps_ > limits_.max_steps) ThrowExhausted("chat template rendering exceeded its work limit");
}

void Interpreter::CheckSize(size_t bytes) {
  if (static_cast<int64_t>(bytes) > limits_.max_output_bytes) {
    ThrowExhausted("chat template output exceeds " + std::to_string(limits_.max_output_bytes) + " bytes");
  }
  // Building big values costs work in proportion.
  steps_ += static_cast<int64_t>(bytes / 256);
  Step();
}

void Interpreter::Charge(size_t units) {
  steps_ += static_cast<int64_t>(std::min<size_t>(units, static_cast<size_t>(limits_.max_steps)));
  Step();
}

Scope* Interpreter::NewScope(Scope* parent) {
  if (scopes_.size() + namespaces_.size() + generators_.size() + loops_.size() > kMaxArenaObjects) {
    ThrowExhausted("chat template created too many objects");
  }
  scopes_.push_back(std::make_unique<Scope>());
  scopes_.back()->parent = parent;
  return scopes_.back().get();
}

Namespace* Interpreter::NewNamespace() {
  if (scopes_.size() + namespaces_.size() + generators_.size() + loops_.size() > kMaxArenaObjects) {
    ThrowExhausted("chat template created too many objects");
  }
  namespaces_.push_back(std::make_unique<Namespace>());
  return namespaces_.back().get();
}

Value Interpreter::NewGenerator(std::string type_name, std::function<bool(Value*)> next) {
  if (scopes_.size() + namespaces_.size() + generators_.size() + loops_.size() > kMaxArenaObjects) {
    ThrowExhausted("chat template created too many objects");
  }
  auto gen = std::make_unique<Generator>();
  gen->type_name = std::move(type_name);
  gen->next = std::move(next);
  generators_.push_back(std::move(gen));
  return Value::MakeGenerator(generators_.back().get());
}

std::shared_ptr<Interpreter::CursorState> Interpreter::Cursor(const Value& iterable) {
  auto c = std::make_shared<CursorState>();
  if (iterable.is_generator()) {
    c->gen = iterable.gen();
  } else {
    c->items = Iterate(iterable);
  }
  return c;
}

bool Interpreter::Pull(CursorState& c, Value* out) {
  if (c.gen != nullptr) {
    Generator* g = c.gen;
    if (g->exhausted) return false;
    if (g->running) ThrowInvalid("generator already executing");
    g->running = true;
    bool ok;
    try {
      ok = g->next(out);
    } catch (...) {
      g->running = false;
      g->exhausted = true;  // a Python generator that raised is finished
      throw;
    }
    g->running = false;
    if (!ok) g->exhausted = true;
    Step();
    return ok;
  }
  if (c.pos >= c.items.size()) return false;
  *out = c.items[c.pos++];
  return true;
}

List Interpreter::Iterate(const Value& v) {
  List out;
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return out;
    case Value::Kind::kString: {
      const std::string& s = v.str();
      for (size_t i = 0; i < s.size();) {
        size_t len = 1;
        const auto b = static_cast<unsigned char>(s[i]);
        if (b >= 0xF0) {
          len = 4;
        } else if (b >= 0xE0) {
          len = 3;
        } else if (b >= 0xC0) {
          len = 2;
        }
        out.push_back(Value::String(s.substr(i, len)));
        i += len;
      }
      CheckSize(out.size() * 16);
      return out;
    }
    case Value::Kind::kSeq:
      CheckSize(v.seq().size() * 16);
      return v.seq();
    case Value::Kind::kDict:
      CheckSize(v.dict().items.size() * 16);
      for (const auto& kv : v.dict().items) out.push_back(kv.first);
      return out;
    case Value::Kind::kGenerator: {
      CursorState c;
      c.gen = v.gen();
      Value item;
      while (Pull(c, &item)) out.push_back(item);
      return out;
    }
    case Value::Kind::kLoop:
      ThrowUnimplemented("iterating over a loop object is not supported");
    default:
      ThrowInvalid("'" + v.TypeName() + "' object is not iterable");
  }
}

// ---- attribute and item access -------------------------------------------------------------

Value Interpreter::LoopAttr(LoopState* loop, const std::string& name) {
  if (loop->detached && (name == "length" || name == "revindex" || name == "revindex0" || name == "last" ||
                         name == "nextitem")) {
    ThrowUnimplemented("loop." + name + " of a filtered loop after the loop ended is not supported");
  }
  auto length = [&]() -> int64_t {
    if (!loop->length) {
      List rest;
      for (size_t i = loop->pos; i < loop->items.size(); ++i) rest.push_back(loop->items[i]);
      if (loop->gen != nullptr) {
        CursorState c;
        c.gen = loop->gen;
        Value item;
        while (Pull(c, &item)) rest.push_back(item);
      }
      loop->items = std::move(rest);
      loop->pos = 0;
      loop->gen = nullptr;
      loop->length = static_cast<int64_t>(loop->items.size()) + (loop->index0 + 1) + (loop->after ? 1 : 0);
    }
    return *loop->length;
  };
  if (name == "index0") return Value::Int(loop->index0);
  if (name == "index") return Value::Int(loop->index0 + 1);
  if (name == "first") return Value::Bool(loop->index0 == 0);
  if (name == "length") return Value::Int(length());
  if (name == "revindex") return Value::Int(length() - loop->index0);
  if (name == "revindex0") return Value::Int(length() - loop->index0 - 1);
  if (name == "last") return Value::Bool(!LoopPeek(loop));
  if (name == "depth") return Value::Int(loop->depth0 + 1);
  if (name == "depth0") return Value::Int(loop->depth0);
  if (name == "previtem") {
    if (loop->index0 == 0) return Value::Undefined("there is no previous item");
    return loop->before;
  }
  if (name == "nextitem") {
    if (!LoopPeek(loop)) return Value::Undefined("there is no next item");
    return *loop->after;
  }
  if (name == "cycle" || name == "changed") {
    auto fn = std::make_shared<Callable>();
    fn->name = "loop." + name;
    fn->self = Value::MakeLoop(loop);
    const bool cycle = name == "cycle";
    fn->builtin = [cycle](Interpreter&, const Value& self, Arguments& args) -> Value {
      if (!args.kw.empty()) ThrowInvalid("loop." + std::string(cycle ? "cycle" : "changed") + "() takes no keyword arguments");
      LoopState* l = self.loop();
      if (cycle) {
        if (args.pos.empty()) ThrowInvalid("no items for cycling given");
        return args.pos[static_cast<size_t>(l->index0) % args.pos.size()];
      }
      if (!l->last_changed || l->last_changed->size() != args.pos.size() ||
          !Equals(Value::Tuple(*l->last_changed), Value::Tuple(args.pos))) {
        l->last_changed = args.pos;
        return Value::Bool(true);
      }
      return Value::Bool(false);
    };
    return Value::MakeCallable(fn);
  }
  return Value::Undefined("'LoopContext object' has no attribute '" + name + "'");
}

bool Interpreter::LoopNext(LoopState* loop, Value* out) {
  if (loop->after) {
    *out = std::move(*loop->after);
    loop->after.reset();
  } else if (loop->after_end) {
    return false;
  } else if (loop->pos < loop->items.size()) {
    *out = loop->items[loop->pos++];
  } else if (loop->gen != nullptr) {
    CursorState c;
    c.gen = loop->gen;
    if (!Pull(c, out)) {
      loop->after_end = true;
      return false;
    }
  } else {
    loop->after_end = true;
    return false;
  }
  ++loop->index0;
  loop->before = std::move(loop->current);
  loop->current = *out;
  return true;
}

bool Interpreter::LoopPeek(LoopState* loop) {
  if (loop->after) return true;
  if (loop->after_end) return false;
  Value v;
  if (loop->pos < loop->items.size()) {
    loop->after = loop->items[loop->pos++];
    return true;
  }
  if (loop->gen != nullptr) {
    CursorState c;
    c.gen = loop->gen;
    if (Pull(c, &v)) {
      loop->after = std::move(v);
      return true;
    }
  }
  loop->after_end = true;
  return false;
}

Value Interpreter::PyGetAttr(const Value& obj, const std::string& name) {
  if (obj.is_undefined()) ThrowUndefined(obj);
  if (!name.empty() && name[0] == '_') {
    return Value::Undefined("access to attribute '" + name + "' of '" + obj.TypeName() + "' object is unsafe.");
  }
  switch (obj.kind()) {
    case Value::Kind::kNamespace:
      if (const Value* v = obj.ns()->Find(name)) return *v;
      break;
    case Value::Kind::kLoop:
      return LoopAttr(obj.loop(), name);
    default:
      if (auto m = BuiltinMethod(obj, name)) return *m;
      break;
  }
  return Value::Undefined("'" + ObjectTypeRepr(obj) + "' has no attribute '" + name + "'");
}

Value Interpreter::GetAttr(const Value& obj, const std::string& name) {
  if (obj.is_undefined()) ThrowUndefined(obj);
  if (obj.is_dict()) {
    if (!name.empty() && name[0] == '_') {
      return Value::Undefined("access to attribute '" + name + "' of 'dict' object is unsafe.");
    }
    if (auto m = BuiltinMethod(obj, name)) return *m;
    if (const Value* v = obj.dict().Find(Value::String(name))) return *v;
    return Value::Undefined("'dict object' has no attribute '" + name + "'");
  }
  return PyGetAttr(obj, name);
}

namespace {

// Python's sequence index: nullopt when out of range.
std::optional<size_t> SeqIndex(int64_t i, size_t n) {
  if (i < 0) i += static_cast<int64_t>(n);
  if (i < 0 || i >= static_cast<int64_t>(n)) return std::nullopt;
  return static_cast<size_t>(i);
}

}  // namespace

Value Interpreter::GetItem(const Value& obj, const Value& key) {
  if (obj.is_undefined()) ThrowUndefined(obj);
  auto fallback = [&]() -> Value {
    if (key.is_string()) return GetAttrFallback(obj, key.str());
    return Value::Undefined("'" + ObjectTypeRepr(obj) + "' has no element " + Repr(key));
  };
  switch (obj.kind()) {
    case Value::Kind::kDict:
      if (Hashable(key)) {
        if (const Value* v = obj.dict().Find(key)) return *v;
      }
      return fallback();
    case Value::Kind::kSeq:
      if ((key.is_int() || key.is_bool()) &&
          (obj.is_list() || obj.is_tuple() || obj.seq_type() == SeqType::kRange)) {
        if (auto i = SeqIndex(key.as_int(), obj.seq().size())) return obj.seq()[*i];
        return Value::Undefined("'" + ObjectTypeRepr(obj) + "' has no element " + Repr(key));
      }
      return fallback();
    case Value::Kind::kString:
      if (key.is_int() || key.is_bool()) {
        const std::u32string s = DecodeUtf8(obj.str());
        if (auto i = SeqIndex(key.as_int(), s.size())) {
          std::string c;
          AppendUtf8(s[*i], &c);
          return Value::String(std::move(c));
        }
        return Value::Undefined("'str object' has no element " + Repr(key));
      }
      return fallback();
    default:
      return fallback();
  }
}

Value Interpreter::GetAttrFallback(const Value& obj, const std::string& name) {
  // jinja2's getitem falls back to getattr for string keys (a sandboxed getattr).
  if (!name.empty() && name[0] == '_') {
    return Value::Undefined("access to attribute '" + name + "' of '" + obj.TypeName() + "' object is unsafe.");
  }
  switch (obj.kind()) {
    case Value::Kind::kNamespace:
      if (const Value* v = obj.ns()->Find(name)) return *v;
      break;
    case Value::Kind::kLoop:
      return LoopAttr(obj.loop(), name);
    default:
      if (auto m = BuiltinMethod(obj, name)) return *m;
  }
  return Value::Undefined("'" + ObjectTypeRepr(obj) + "' has no attribute '" + name + "'");
}

bool Interpreter::Contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Value::Kind::kString:
      if (!item.is_string()) {
        ThrowInvalid("'in <string>' requires string as left operand, not " + item.TypeName());
      }
      return container.str().find(item.str()) != std::string::npos;
    case Value::Kind::kSeq:
      for (const Value& v : container.seq()) {
        if (Equals(v, item)) return true;
      }
      return false;
    case Value::Kind::kDict:
      if (!Hashable(item)) ThrowInvalid("unhashable type: '" + item.TypeName() + "'");
      return container.dict().Find(item) != nullptr;
    case Value::Kind::kUndefined:
      return false;
    case Value::Kind::kGenerator: {
      CursorState c;
      c.gen = container.gen();
      Value v;
      while (Pull(c, &v)) {
        if (Equals(v, item)) return true;
      }
      return false;
    }
    case Value::Kind::kLoop:
      ThrowUnimplemented("'in' on a loop object is not supported");
    default:
      ThrowInvalid("argument of type '" + container.TypeName() + "' is not iterable");
  }
}

// ---- calls ---------------------------------------------------------------------------------

Value Interpreter::MakeMacro(const std::shared_ptr<MacroNode>& macro, bool is_caller) {
  auto fn = std::make_shared<Callable>();
  fn->name = macro->name;
  fn->macro = macro.get();
  fn->closure = scope_;
  fn->is_caller = is_caller;
  scope_->captured = true;
  return Value::MakeCallable(fn);
}

Value Interpreter::CallValue(const Value& fn, Arguments& args) {
  if (fn.is_undefined()) ThrowUndefined(fn);
  if (fn.is_loop()) ThrowUnimplemented("recursive loops (calling loop) are not supported");
  if (!fn.is_callable()) ThrowInvalid("'" + fn.TypeName() + "' object is not callable");
  const Callable& c = fn.fn();
  if (c.macro != nullptr) return CallMacro(c, args);
  return c.builtin(*this, c.self, args);
}

Value Interpreter::CallMacro(const Callable& fn, Arguments& args) {
  const MacroNode& m = *fn.macro;
  if (++call_depth_ > limits_.max_call_depth) {
    ThrowExhausted("chat template macro calls nest more than " + std::to_string(limits_.max_call_depth) +
                   " deep");
  }
  const size_t count = m.params.size();
  std::vector<std::optional<Value>> values(count);
  for (size_t i = 0; i < count && i < args.pos.size(); ++i) values[i] = args.pos[i];
  std::vector<std::pair<std::string, Value>> kwargs = args.kw;
  auto take_kw = [&](const std::string& name) -> std::optional<Value> {
    for (auto it = kwargs.begin(); it != kwargs.end(); ++it) {
      if (it->first == name) {
        Value v = std::move(it->second);
        kwargs.erase(it);
        return v;
      }
    }
    return std::nullopt;
  };
  bool explicit_caller = false;
  for (const auto& p : m.params) explicit_caller = explicit_caller || p.name == "caller";
  bool found_caller = false;
  if (args.pos.size() < count) {
    for (size_t i = args.pos.size(); i < count; ++i) {
      values[i] = take_kw(m.params[i].name);
      if (m.params[i].name == "caller") found_caller = true;
    }
  } else {
    found_caller = explicit_caller;
  }
  std::optional<Value> caller;
  if (m.uses_caller && !found_caller) {
    caller = take_kw("caller");
    if (!caller) caller = Value::Undefined("No caller defined");
  }
  Value kwargs_value;
  if (m.uses_kwargs) {
    Dict d;
    for (auto& [k, v] : kwargs) d.Set(Value::String(k), v);
    kwargs_value = Value::MakeDict(std::move(d));
  } else if (!kwargs.empty()) {
    for (const auto& kv : kwargs) {
      if (kv.first == "caller") {
        ThrowInvalid("macro '" + m.name + "' was invoked with two values for the special caller argument");
      }
    }
    ThrowInvalid("macro '" + m.name + "' takes no keyword argument '" + kwargs.front().first + "'");
  }
  Value varargs;
  if (m.uses_varargs) {
    List extra;
    for (size_t i = count; i < args.pos.size(); ++i) extra.push_back(args.pos[i]);
    varargs = Value::Tuple(std::move(extra));
  } else if (args.pos.size() > count) {
    ThrowInvalid("macro '" + m.name + "' takes not more than " + std::to_string(count) + " argument(s)");
  }

  auto owned = std::make_unique<Scope>();
  owned->parent = fn.closure;
  Scope* saved = scope_;
  scope_ = owned.get();
  for (size_t i = 0; i < count; ++i) {
    const MacroParam& p = m.params[i];
    if (values[i]) {
      scope_->Set(p.name, *values[i]);
    } else if (p.default_value) {
      scope_->Set(p.name, Eval(*p.default_value));
    } else {
      scope_->Set(p.name, Value::Undefined("parameter '" + p.name + "' was not provided"));
    }
  }
  if (caller) scope_->Set("caller", *caller);
  if (m.uses_kwargs) scope_->Set("kwargs", kwargs_value);
  if (m.uses_varargs) scope_->Set("varargs", varargs);
  std::string out;
  Exec(m.body, &out);
  scope_ = saved;
  if (owned->captured) scopes_.push_back(std::move(owned));
  --call_depth_;
  return Value::String(std::move(out));
}

Value Interpreter::CallFilter(const std::string& name, const Value& input, Arguments& args) {
  if (input.is_markup()) {
    static const char* const kMarkupSafe[] = {"safe",    "string", "length", "count", "e",    "escape",
                                              "forceescape", "default", "d",   "tojson", "list", "first",
                                              "last",    "join",   "upper",  "lower"};
    bool ok = false;
    for (const char* f : kMarkupSafe) ok = ok || name == f;
    if (name == "trim" && args.pos.empty() && args.kw.empty()) ok = true;
    if (!ok) ThrowUnimplemented("the filter '" + name + "' on a |safe (Markup) string is not supported");
  }
  return ApplyBuiltinFilter(*this, name, input, args);
}

bool Interpreter::CallTest(const std::string& name, const Value& input, Arguments& args) {
  return ApplyBuiltinTest(*this, name, input, args);
}

// ---- expressions ---------------------------------------------------------------------------

Value Interpreter::Lookup(const std::string& name) const {
  for (const Scope* s = scope_; s != nullptr; s = s->parent) {
    if (const Value* v = s->Find(name)) return *v;
  }
  return Value::Undefined("'" + name + "' is undefined");
}

void Interpreter::EvalArgs(const Expr& e, Arguments* args) {
  for (const auto& a : e.items) args->pos.push_back(Eval(*a));
  for (const auto& kw : e.kwargs) {
    for (const auto& existing : args->kw) {
      if (existing.first == kw.name) ThrowInvalid("keyword argument repeated: " + kw.name);
    }
    args->kw.emplace_back(kw.name, Eval(*kw.value));
  }
}

Value Interpreter::Add(const Value& a, const Value& b) { return EvalBinary("+", a, b); }

Value Interpreter::EvalBinary(const std::string& op, const Value& a, const Value& b) {
  if (op == "~") {
    std::string s = ToStr(a);
    s += ToStr(b);
    CheckSize(s.size());
    return Value::String(std::move(s));
  }
  if (a.is_undefined()) ThrowUndefined(a);
  if (b.is_undefined()) ThrowUndefined(b);
  if ((a.is_markup() || b.is_markup()) && (op == "+" || op == "*" || op == "%")) {
    ThrowUnimplemented("'" + op + "' on a |safe (Markup) string is not supported");
  }
  const bool nums = a.is_number() && b.is_number();
  const bool floats = nums && (a.is_float() || b.is_float());
  if (op == "+") {
    if (floats) return Value::Float(a.as_float() + b.as_float());
    if (nums) {
      int64_t r;
      if (!CheckedAdd(a.as_int(), b.as_int(), &r)) Overflow();
      return Value::Int(r);
    }
    if (a.is_string() && b.is_string()) {
      CheckSize(a.str().size() + b.str().size());
      return Value::String(a.str() + b.str());
    }
    if (a.is_seq() && b.is_seq() && a.seq_type() == b.seq_type() && (a.is_list() || a.is_tuple())) {
      CheckSize((a.seq().size() + b.seq().size()) * 16);
      List r = a.seq();
      r.insert(r.end(), b.seq().begin(), b.seq().end());
      return Value::Seq(std::move(r), a.seq_type());
    }
    if (a.is_string()) ThrowInvalid("can only concatenate str (not \"" + b.TypeName() + "\") to str");
    if (a.is_list() || a.is_tuple()) {
      ThrowInvalid("can only concatenate " + a.TypeName() + " (not \"" + b.TypeName() + "\") to " + a.TypeName());
    }
    UnsupportedOperands("+", a, b);
  }
  if (op == "-") {
    if (floats) return Value::Float(a.as_float() - b.as_float());
    if (nums) {
      int64_t r;
      if (!CheckedSub(a.as_int(), b.as_int(), &r)) Overflow();
      return Value::Int(r);
    }
    UnsupportedOperands("-", a, b);
  }
  if (op == "*") {
    if (floats) return Value::Float(a.as_float() * b.as_float());
    if (nums) {
      int64_t r;
      if (!CheckedMul(a.as_int(), b.as_int(), &r)) Overflow();
      return Value::Int(r);
    }
    const Value* seq = nullptr;
    const Value* count = nullptr;
    if ((b.is_int() || b.is_bool()) && (a.is_string() || a.is_list() || a.is_tuple())) {
      seq = &a;
      count = &b;
    } else if ((a.is_int() || a.is_bool()) && (b.is_string() || b.is_list() || b.is_tuple())) {
      seq = &b;
      count = &a;
    }
    if (seq != nullptr) {
      const int64_t n = std::max<int64_t>(0, count->as_int());
      const size_t unit = seq->is_string() ? seq->str().size() : seq->seq().size() * 16;
      if (unit != 0 && n > limits_.max_output_bytes / static_cast<int64_t>(unit)) CheckSize(SIZE_MAX / 2);
      CheckSize(unit * static_cast<size_t>(n));
      if (seq->is_string()) {
        std::string r;
        r.reserve(seq->str().size() * n);
        for (int64_t i = 0; i < n; ++i) r += seq->str();
        return Value::String(std::move(r));
      }
      List r;
      for (int64_t i = 0; i < n; ++i) r.insert(r.end(), seq->seq().begin(), seq->seq().end());
      return Value::Seq(std::move(r), seq->seq_type());
    }
    UnsupportedOperands("*", a, b);
  }
  if (op == "/") {
    if (!nums) UnsupportedOperands("/", a, b);
    if (b.as_float() == 0) ThrowInvalid(floats ? "float division by zero" : "division by zero");
    return Value::Float(a.as_float() / b.as_float());
  }
  if (op == "//" || op == "%") {
    if (a.is_string() && op == "%") {
      ThrowUnimplemented("printf-style string formatting ('%') is not supported");
    }
    if (!nums) UnsupportedOperands(op, a, b);
    if (floats) {
      if (b.as_float() == 0) ThrowInvalid(op == "//" ? "float floor division by zero" : "float modulo");
      double fd, mod;
      FloatDivMod(a.as_float(), b.as_float(), &fd, &mod);
      return Value::Float(op == "//" ? fd : mod);
    }
    return Value::Int(op == "//" ? FloorDiv(a.as_int(), b.as_int()) : FloorMod(a.as_int(), b.as_int()));
  }
  if (op == "**") {
    if (!nums) UnsupportedOperands("** or pow()", a, b);
    if (!floats && b.as_int() >= 0) {
      int64_t base = a.as_int(), exp = b.as_int(), r = 1;
      while (exp > 0) {
        if (exp & 1) {
          if (!CheckedMul(r, base, &r)) Overflow();
        }
        exp >>= 1;
        if (exp > 0 && !CheckedMul(base, base, &base)) Overflow();
      }
      return Value::Int(r);
    }
    const double x = a.as_float(), y = b.as_float();
    if (x == 0 && y < 0) ThrowInvalid("0.0 cannot be raised to a negative power");
    if (x < 0 && y != std::floor(y)) ThrowUnimplemented("complex numbers are not supported");
    const double r = std::pow(x, y);
    if (std::isinf(r) && std::isfinite(x) && std::isfinite(y)) ThrowInvalid("(34, 'Numerical result out of range')");
    return Value::Float(r);
  }
  ThrowUnimplemented("operator '" + op + "' is not supported");
}

namespace {

// PySlice_AdjustIndices.
void AdjustSlice(int64_t n, std::optional<int64_t> start, std::optional<int64_t> stop, int64_t step,
                 std::vector<size_t>* out) {
  int64_t lo, hi;
  if (step > 0) {
    lo = start.value_or(0);
    hi = stop.value_or(n);
    if (lo < 0) lo = std::max<int64_t>(0, lo + n);
    if (hi < 0) hi = std::max<int64_t>(0, hi + n);
    lo = std::min(lo, n);
    hi = std::min(hi, n);
    for (int64_t i = lo; i < hi; i += step) out->push_back(static_cast<size_t>(i));
  } else {
    lo = start.value_or(n - 1);
    hi = stop.has_value() ? *stop : -1 - n;  // "before the start"
    if (start.has_value()) {
      if (lo < 0) lo = std::max<int64_t>(-1, lo + n);
      lo = std::min(lo, n - 1);
    }
    if (stop.has_value()) {
      if (hi < 0) hi = std::max<int64_t>(-1, hi + n);
      hi = std::min(hi, n - 1);
    } else {
      hi = -1;
    }
    for (int64_t i = lo; i > hi; i += step) out->push_back(static_cast<size_t>(i));
  }
}

}  // namespace

Value Interpreter::Eval(const Expr& e) {
  Step();
  EvalGuard guard(this);
  try {
    return EvalInner(e);
  } catch (TemplateError& err) {
    if (err.pos.line == 0) err.pos = e.pos;
    throw;
  }
}

Value Interpreter::EvalInner(const Expr& e) {
  switch (e.kind) {
    case ExprKind::kLiteral:
      return e.value;
    case ExprKind::kName:
      return Lookup(e.name);
    case ExprKind::kList:
    case ExprKind::kTuple: {
      List items;
      items.reserve(e.items.size());
      for (const auto& item : e.items) items.push_back(Eval(*item));
      return Value::Seq(std::move(items), e.kind == ExprKind::kList ? SeqType::kList : SeqType::kTuple);
    }
    case ExprKind::kDict: {
      Dict d;
      for (size_t i = 0; i + 1 < e.items.size(); i += 2) {
        Value k = Eval(*e.items[i]);
        Value v = Eval(*e.items[i + 1]);
        if (!Hashable(k)) ThrowInvalid("unhashable type: '" + k.TypeName() + "'");
        d.Set(std::move(k), std::move(v));
      }
      return Value::MakeDict(std::move(d));
    }
    case ExprKind::kGetAttr:
      return GetAttr(Eval(*e.a), e.name);
    case ExprKind::kGetItem: {
      Value obj = Eval(*e.a);
      Value key = Eval(*e.b);
      return GetItem(obj, key);
    }
    case ExprKind::kSlice: {
      Value obj = Eval(*e.a);
      Value parts[3];
      for (int i = 0; i < 3; ++i) parts[i] = e.items[i] ? Eval(*e.items[i]) : Value::None();
      if (obj.is_undefined()) ThrowUndefined(obj);
      std::optional<int64_t> idx[3];
      for (int i = 0; i < 3; ++i) {
        if (parts[i].is_none()) continue;
        if (!parts[i].is_int() && !parts[i].is_bool()) {
          // jinja2 compiles slices to a plain Python subscription: errors propagate.
          ThrowInvalid("slice indices must be integers or None or have an __index__ method");
        }
        idx[i] = parts[i].as_int();
      }
      const int64_t step = idx[2].value_or(1);
      if (step == 0) ThrowInvalid("slice step cannot be zero");
      std::vector<size_t> picks;
      if (obj.is_string()) {
        const std::u32string s = DecodeUtf8(obj.str());
        AdjustSlice(static_cast<int64_t>(s.size()), idx[0], idx[1], step, &picks);
        std::u32string r;
        for (size_t i : picks) r.push_back(s[i]);
        return Value::String(EncodeUtf8(r));
      }
      if (obj.is_list() || obj.is_tuple()) {
        AdjustSlice(static_cast<int64_t>(obj.seq().size()), idx[0], idx[1], step, &picks);
        List r;
        r.reserve(picks.size());
        for (size_t i : picks) r.push_back(obj.seq()[i]);
        CheckSize(r.size() * 16);
        return Value::Seq(std::move(r), obj.seq_type());
      }
      if (obj.is_seq() && obj.seq_type() == SeqType::kRange) {
        ThrowUnimplemented("slicing a range is not supported");
      }
      if (obj.is_dict()) ThrowInvalid("unhashable type: 'slice'");
      if (obj.is_loop() || obj.is_namespace() || obj.is_callable()) {
        ThrowUnimplemented("slicing a " + obj.TypeName() + " is not supported");
      }
      ThrowInvalid("'" + obj.TypeName() + "' object is not subscriptable");
    }
    case ExprKind::kCall: {
      Value fn = Eval(*e.a);
      Arguments args;
      EvalArgs(e, &args);
      return CallValue(fn, args);
    }
    case ExprKind::kFilter:
      return EvalFilterChain(e, nullptr);
    case ExprKind::kTest: {
      Value v = Eval(*e.a);
      Arguments args;
      EvalArgs(e, &args);
      const bool r = CallTest(e.name, v, args);
      return Value::Bool(e.negated ? !r : r);
    }
    case ExprKind::kNot:
      return Value::Bool(!Truthy(Eval(*e.a)));
    case ExprKind::kNeg:
    case ExprKind::kPos: {
      Value v = Eval(*e.a);
      if (v.is_undefined()) ThrowUndefined(v);
      if (!v.is_number()) {
        ThrowInvalid(std::string("bad operand type for unary ") + (e.kind == ExprKind::kNeg ? "-" : "+") + ": '" +
                     v.TypeName() + "'");
      }
      if (e.kind == ExprKind::kPos) return v.is_float() ? v : Value::Int(v.as_int());
      if (v.is_float()) return Value::Float(-v.as_float());
      if (v.as_int() == std::numeric_limits<int64_t>::min()) Overflow();
      return Value::Int(-v.as_int());
    }
    case ExprKind::kBinary: {
      Value a = Eval(*e.a);
      Value b = Eval(*e.b);
      return EvalBinary(e.name, a, b);
    }
    case ExprKind::kAnd: {
      Value a = Eval(*e.a);
      if (!Truthy(a)) return a;
      return Eval(*e.b);
    }
    case ExprKind::kOr: {
      Value a = Eval(*e.a);
      if (Truthy(a)) return a;
      return Eval(*e.b);
    }
    case ExprKind::kCompare: {
      Value left = Eval(*e.a);
      for (size_t i = 0; i < e.ops.size(); ++i) {
        Value right = Eval(*e.items[i]);
        const std::string& op = e.ops[i];
        bool r;
        if (op == "==") {
          r = Equals(left, right);
        } else if (op == "!=") {
          r = !Equals(left, right);
        } else if (op == "<") {
          r = Less(left, right);
        } else if (op == ">") {
          r = Less(right, left);
        } else if (op == "<=") {
          r = Less(left, right) || Equals(left, right);
        } else if (op == ">=") {
          r = Less(right, left) || Equals(left, right);
        } else if (op == "in") {
          r = Contains(right, left);
        } else {
          r = !Contains(right, left);
        }
        if (!r) return Value::Bool(false);
        left = std::move(right);
      }
      return Value::Bool(true);
    }
    case ExprKind::kCondExpr: {
      if (Truthy(Eval(*e.a))) return Eval(*e.b);
      if (e.c) return Eval(*e.c);
      return Value::Undefined("the inline if-expression evaluated to false and no else section was defined");
    }
  }
  ThrowUnimplemented("unsupported expression");
}

Value Interpreter::EvalFilterChain(const Expr& e, const Value* block_input) {
  if (e.kind != ExprKind::kFilter) return Eval(e);
  Value input;
  if (e.a) {
    input = e.a->kind == ExprKind::kFilter ? EvalFilterChain(*e.a, block_input) : Eval(*e.a);
  } else if (block_input != nullptr) {
    input = *block_input;
  }
  Arguments args;
  EvalArgs(e, &args);
  try {
    return CallFilter(e.name, input, args);
  } catch (TemplateError& err) {
    if (err.pos.line == 0) err.pos = e.pos;
    throw;
  }
}

// ---- statements ----------------------------------------------------------------------------

void Interpreter::Emit(std::string* out, std::string_view text) {
  out->append(text.data(), text.size());
  if (static_cast<int64_t>(out->size()) > limits_.max_output_bytes) CheckSize(out->size());
}

void Interpreter::Assign(const std::vector<std::string>& targets, const Value& value) {
  if (targets.size() == 1) {
    scope_->Set(targets[0], value);
    return;
  }
  List items = Iterate(value);
  if (items.size() < targets.size()) {
    ThrowInvalid("not enough values to unpack (expected " + std::to_string(targets.size()) + ", got " +
                 std::to_string(items.size()) + ")");
  }
  if (items.size() > targets.size()) {
    ThrowInvalid("too many values to unpack (expected " + std::to_string(targets.size()) + ")");
  }
  for (size_t i = 0; i < targets.size(); ++i) scope_->Set(targets[i], items[i]);
}

Interpreter::Flow Interpreter::Exec(const Body& body, std::string* out) {
  for (const auto& s : body) {
    const Flow f = ExecStmt(*s, out);
    if (f != Flow::kNormal) return f;
  }
  return Flow::kNormal;
}

Interpreter::Flow Interpreter::ExecStmt(const Stmt& s, std::string* out) {
  Step();
  EvalGuard guard(this);
  try {
    switch (s.kind) {
      case StmtKind::kData:
        Emit(out, s.text);
        return Flow::kNormal;
      case StmtKind::kOutput: {
        const Value v = Eval(*s.expr);
        Emit(out, ToStr(v));
        return Flow::kNormal;
      }
      case StmtKind::kIf:
        for (const auto& [cond, body] : s.branches) {
          if (Truthy(Eval(*cond))) return Exec(body, out);
        }
        return Exec(s.else_body, out);
      case StmtKind::kFor:
        ExecFor(s, out);
        return Flow::kNormal;
      case StmtKind::kSet: {
        Value v = Eval(*s.expr);
        if (!s.ns_attr.empty()) {
          Value target = Lookup(s.targets[0]);
          if (!target.is_namespace()) ThrowInvalid("cannot assign attribute on non-namespace object");
          if (s.ns_attr[0] == '_') {
            ThrowInvalid("Chat templates cannot store underscore-prefixed attributes on a namespace, but got '" +
                         s.ns_attr + "'");
          }
          target.ns()->Set(s.ns_attr, std::move(v));
        } else {
          Assign(s.targets, v);
        }
        return Flow::kNormal;
      }
      case StmtKind::kSetBlock: {
        auto owned = std::make_unique<Scope>();
        owned->parent = scope_;
        Scope* saved = scope_;
        scope_ = owned.get();
        std::string text;
        Exec(s.body, &text);
        scope_ = saved;
        if (owned->captured) scopes_.push_back(std::move(owned));
        Value v = Value::String(std::move(text));
        if (s.filter) v = EvalFilterChain(*s.filter, &v);
        scope_->Set(s.targets[0], std::move(v));
        return Flow::kNormal;
      }
      case StmtKind::kMacro: {
        scope_->Set(s.macro->name, MakeMacro(s.macro, false));
        return Flow::kNormal;
      }
      case StmtKind::kCallBlock: {
        const Expr& call = *s.expr;
        Value fn = Eval(*call.a);
        Arguments args;
        EvalArgs(call, &args);
        args.kw.emplace_back("caller", MakeMacro(s.macro, true));
        const Value r = CallValue(fn, args);
        Emit(out, ToStr(r));
        return Flow::kNormal;
      }
      case StmtKind::kFilterBlock: {
        auto owned = std::make_unique<Scope>();
        owned->parent = scope_;
        Scope* saved = scope_;
        scope_ = owned.get();
        std::string text;
        Exec(s.body, &text);
        scope_ = saved;
        if (owned->captured) scopes_.push_back(std::move(owned));
        const Value input = Value::String(std::move(text));
        Emit(out, ToStr(EvalFilterChain(*s.filter, &input)));
        return Flow::kNormal;
      }
      case StmtKind::kBreak:
        return Flow::kBreak;
      case StmtKind::kContinue:
        return Flow::kContinue;
      case StmtKind::kWith: {
        std::vector<Value> values;
        for (const auto& [name, expr] : s.assignments) values.push_back(Eval(*expr));
        auto owned = std::make_unique<Scope>();
        owned->parent = scope_;
        Scope* saved = scope_;
        scope_ = owned.get();
        for (size_t i = 0; i < values.size(); ++i) scope_->Set(s.assignments[i].first, values[i]);
        const Flow f = Exec(s.body, out);
        scope_ = saved;
        if (owned->captured) scopes_.push_back(std::move(owned));
        return f;
      }
      case StmtKind::kScope:
        return Exec(s.body, out);
    }
  } catch (TemplateError& err) {
    if (err.pos.line == 0) err.pos = s.pos;
    throw;
  }
  return Flow::kNormal;
}

void Interpreter::ExecFor(const Stmt& s, std::string* out) {
  const Value iterable = Eval(*s.expr);
  if (loops_.size() + scopes_.size() > kMaxArenaObjects) ThrowExhausted("chat template created too many objects");
  loops_.push_back(std::make_unique<LoopState>());
  LoopState* loop = loops_.back().get();
  Scope* outer = scope_;
  if (s.filter) {
    // `for x in xs if cond`: the loop sees a generator of the items that pass.
    auto cursor = Cursor(iterable);
    const Stmt* stmt = &s;
    Value gen = NewGenerator("generator", [this, cursor, stmt, outer](Value* item) -> bool {
      Value v;
      while (Pull(*cursor, &v)) {
        Scope tmp;
        tmp.parent = outer;
        Scope* saved = scope_;
        scope_ = &tmp;
        Assign(stmt->targets, v);
        const bool keep = Truthy(Eval(*stmt->filter));
        scope_ = saved;
        if (tmp.captured) ThrowUnimplemented("macros defined in a for loop's filter are not supported");
        if (keep) {
          *item = std::move(v);
          return true;
        }
      }
      return false;
    });
    loop->gen = gen.gen();
  } else if (iterable.is_generator()) {
    loop->gen = iterable.gen();
  } else {
    loop->items = Iterate(iterable);
    loop->length = static_cast<int64_t>(loop->items.size());
  }
  bool iterated = false;
  std::unique_ptr<Scope> iter_scope;
  Value item;
  while (LoopNext(loop, &item)) {
    Step();
    iterated = true;
    if (!iter_scope || iter_scope->captured) {
      if (iter_scope) scopes_.push_back(std::move(iter_scope));
      iter_scope = std::make_unique<Scope>();
      iter_scope->parent = outer;
    } else {
      iter_scope->vars.clear();
    }
    scope_ = iter_scope.get();
    Assign(s.targets, item);
    scope_->Set("loop", Value::MakeLoop(loop));
    const Flow f = Exec(s.body, out);
    scope_ = outer;
    if (f == Flow::kBreak) break;
  }
  if (iter_scope && iter_scope->captured) scopes_.push_back(std::move(iter_scope));
  if (s.filter) loop->detached = true;
  if (loop->length && loop->pos >= loop->items.size()) {
    loop->items.clear();
    loop->items.shrink_to_fit();
    loop->pos = 0;
  }
  if (!iterated && !s.else_body.empty()) {
    auto owned = std::make_unique<Scope>();
    owned->parent = outer;
    scope_ = owned.get();
    Exec(s.else_body, out);
    scope_ = outer;
    if (owned->captured) scopes_.push_back(std::move(owned));
  }
}

std::string Interpreter::Render(const std::vector<std::pair<std::string, Value>>& globals) {
  Scope* builtins = NewScope(nullptr);
  for (auto& [name, value] : BuiltinGlobals()) builtins->Set(name, value);
  Scope* root = NewScope(builtins);
  for (const auto& [name, value] : globals) root->Set(name, value);
  scope_ = root;
  std::string out;
  Exec(tmpl_.body, &out);
  return out;
}

}  // namespace sluice::chat::internal
