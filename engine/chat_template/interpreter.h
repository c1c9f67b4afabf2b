// Renders a parsed template: a tree-walking interpreter with jinja2's runtime
// semantics (scoping of set/for/macro, Undefined, loop objects, lazy generators),
// and limits so that hostile templates fail cleanly instead of exhausting the
// stack, memory or time. One Interpreter per render; the Template is shared.
#ifndef SLUICE_ENGINE_CHAT_TEMPLATE_INTERPRETER_H_
#define SLUICE_ENGINE_CHAT_TEMPLATE_INTERPRETER_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "engine/chat_template/ast.h"
#include "engine/chat_template/value.h"

namespace sluice::chat::internal {

struct Limits {
  int64_t max_output_bytes = 64 << 20;   // any rendered buffer or string value
  int64_t max_steps = 20'000'000;        // expression and statement evaluations
  int max_call_depth = 64;               // nested macro / caller calls
  int max_eval_depth = 512;              // nested Exec/Eval frames, all calls included
};

struct Scope {
  Scope* parent = nullptr;
  std::vector<std::pair<std::string, Value>> vars;
  bool captured = false;  // a macro closes over it: it must outlive its statement

  const Value* Find(std::string_view name) const;
  void Set(const std::string& name, Value value);
};

struct LoopState {
  // Remaining items: `items[pos...]`, then whatever `gen` still yields.
  List items;
  size_t pos = 0;
  Generator* gen = nullptr;
  std::optional<int64_t> length;  // known up front for sized iterables
  int64_t index0 = -1;
  std::optional<Value> after;     // one item of lookahead (loop.last, loop.nextitem)
  bool after_end = false;         // the lookahead found the end
  Value before;                   // previous item
  Value current;
  std::optional<List> last_changed;
  int depth0 = 0;
  // The loop statement finished while a lazy source (a filtered loop's generator)
  // could still be pulled: later length/last/nextitem lookups are refused.
  bool detached = false;
};

// Call arguments of a builtin, a filter (after its input) or a test.
struct Arguments {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
};

class Interpreter {
 public:
  Interpreter(const Template& tmpl, const Limits& limits);
  ~Interpreter();

  // Renders with `globals` as the template's variables (messages, tools, ...).
  std::string Render(const std::vector<std::pair<std::string, Value>>& globals);

  // ---- used by the builtins (builtins.cc) -------------------------------------------------

  Namespace* NewNamespace();
  // A lazy generator: `next` stores the next item and returns true, or returns false at the end.
  Value NewGenerator(std::string type_name, std::function<bool(Value*)> next);
  // Pulls one item from an iterable cursor made by Cursor().
  struct CursorState;
  std::shared_ptr<CursorState> Cursor(const Value& iterable);
  bool Pull(CursorState& cursor, Value* out);
  // Every item of an iterable (consumes generators). TypeError for non-iterables.
  List Iterate(const Value& iterable);

  Value GetAttr(const Value& obj, const std::string& name);      // obj.name
  Value GetItem(const Value& obj, const Value& key);             // obj[key]
  Value PyGetAttr(const Value& obj, const std::string& name);    // Python attributes only (|attr)
  Value GetAttrFallback(const Value& obj, const std::string& name);  // obj[name]'s getattr fallback
  bool Contains(const Value& container, const Value& item);      // item in container
  Value CallValue(const Value& fn, Arguments& args);
  Value CallFilter(const std::string& name, const Value& input, Arguments& args);
  bool CallTest(const std::string& name, const Value& input, Arguments& args);
  // The template's `+`, used by |sum.
  Value Add(const Value& a, const Value& b);

  // Checks a new string's size against the output limit.
  void CheckSize(size_t bytes);
  // Charges `units` evaluation steps for bulk work (building big values).
  void Charge(size_t units);
  SourcePos current_pos() const { return pos_; }

 private:
  enum class Flow { kNormal, kBreak, kContinue };

  Flow Exec(const Body& body, std::string* out);
  Flow ExecStmt(const Stmt& s, std::string* out);
  void ExecFor(const Stmt& s, std::string* out);
  Value Eval(const Expr& e);
  Value EvalInner(const Expr& e);
  Value EvalBinary(const std::string& op, const Value& a, const Value& b);
  Value EvalFilterChain(const Expr& e, const Value* block_input);
  void EvalArgs(const Expr& e, Arguments* args);
  Value CallMacro(const Callable& fn, Arguments& args);
  Value Lookup(const std::string& name) const;
  void Emit(std::string* out, std::string_view text);
  Value MakeMacro(const std::shared_ptr<MacroNode>& macro, bool is_caller);
  Value LoopAttr(LoopState* loop, const std::string& name);
  bool LoopNext(LoopState* loop, Value* out);
  bool LoopPeek(LoopState* loop);
  void Assign(const std::vector<std::string>& targets, const Value& value);
  Scope* NewScope(Scope* parent);

  void Step();

  const Template& tmpl_;
  Limits limits_;
  Scope* scope_ = nullptr;
  SourcePos pos_;
  int64_t steps_ = 0;
  int call_depth_ = 0;
  int eval_depth_ = 0;
  std::deque<std::unique_ptr<Scope>> scopes_;
  std::deque<std::unique_ptr<Namespace>> namespaces_;
  std::deque<std::unique_ptr<Generator>> generators_;
  std::deque<std::unique_ptr<LoopState>> loops_;

  friend struct EvalGuard;
};

// Builtins (builtins.cc).
Value ApplyBuiltinFilter(Interpreter& in, const std::string& name, const Value& input, Arguments& args);
bool ApplyBuiltinTest(Interpreter& in, const std::string& name, const Value& input, Arguments& args);
// The bound method `name` of a str / dict / list value, or nullopt when the type has
// no such attribute (then the lookup falls back as jinja2's does). Throws
// UNIMPLEMENTED for real Python attributes outside the subset.
std::optional<Value> BuiltinMethod(const Value& self, const std::string& name);
// Globals: range, dict, namespace, raise_exception, strftime_now, and stubs that
// fail when called (cycler, joiner, lipsum).
std::vector<std::pair<std::string, Value>> BuiltinGlobals();
// jinja2's filter and test names (known, and whether supported here).
bool IsJinjaFilter(const std::string& name);
bool IsJinjaTest(const std::string& name);

}  // namespace sluice::chat::internal

#endif  // SLUICE_ENGINE_CHAT_TEMPLATE_INTERPRETER_H_
