// The parsed template: expressions and statements of the supported Jinja subset.
#ifndef SLUICE_ENGINE_CHAT_TEMPLATE_AST_H_
#define SLUICE_ENGINE_CHAT_TEMPLATE_AST_H_

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "engine/chat_template/errors.h"
#include "engine/chat_template/value.h"

namespace sluice::chat::internal {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct KeywordArg {
  std::string name;
  ExprPtr value;
};

enum class ExprKind {
  kLiteral,   // value
  kName,      // name
  kList,      // items
  kTuple,     // items
  kDict,      // items (key, value pairs flattened: k0, v0, k1, v1, ...)
  kGetAttr,   // a.name
  kGetItem,   // a[b]
  kSlice,     // a[b:c:d]  (b, c, d may be null)
  kCall,      // a(args, kwargs)
  kFilter,    // a|name(args, kwargs); a is null inside {% filter %}
  kTest,      // a is [not] name(args)
  kNot,       // not a
  kNeg,       // -a
  kPos,       // +a
  kBinary,    // a op b: + - * / // % ** ~
  kAnd,
  kOr,
  kCompare,   // a op0 b op1 c ... (ops: == != < <= > >= in notin)
  kCondExpr,  // b if a else c  (a: cond, b: then, c: else or null)
};

struct Expr {
  ExprKind kind;
  SourcePos pos;
  Value value;              // kLiteral
  std::string name;         // kName, kGetAttr, kFilter, kTest; kBinary: the operator
  ExprPtr a, b, c;          // operands
  std::vector<ExprPtr> items;   // kList/kTuple/kDict; kCall/kFilter/kTest positional args; kCompare operands
  std::vector<KeywordArg> kwargs;
  std::vector<std::string> ops;  // kCompare
  bool negated = false;          // kTest: `is not`
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

enum class StmtKind {
  kData,       // text
  kOutput,     // {{ expr }}
  kIf,         // branches (cond, body)...; else_body
  kFor,        // targets in iter [if filter]: body [else else_body]
  kSet,        // targets (names) or ns.attr = expr
  kSetBlock,   // {% set name %}body{% endset %} with optional filter chain
  kMacro,
  kCallBlock,  // {% call(params) macro(args) %}body{% endcall %}
  kFilterBlock,
  kBreak,
  kContinue,
  kWith,       // {% with a = 1, b = 2 %}body{% endwith %}
  kScope,      // a body rendered as is ({% generation %})
};

struct MacroParam {
  std::string name;
  ExprPtr default_value;  // null: required
};

struct MacroNode {
  std::string name;
  std::vector<MacroParam> params;
  Body body;
  SourcePos pos;
  bool uses_caller = false;
  bool uses_varargs = false;
  bool uses_kwargs = false;
};

struct Stmt {
  StmtKind kind;
  SourcePos pos;
  std::string text;                              // kData
  ExprPtr expr;                                  // kOutput, kFor (iter), kSet (value), kCallBlock (call)
  std::vector<std::pair<ExprPtr, Body>> branches;  // kIf
  Body body;
  Body else_body;
  std::vector<std::string> targets;  // kFor, kSet (more than one: tuple unpacking), kSetBlock
  std::string ns_attr;               // kSet: `{% set targets[0].ns_attr = ... %}`
  ExprPtr filter;                    // kFor's `if`; kSetBlock / kFilterBlock filter chain
  std::vector<std::pair<std::string, ExprPtr>> assignments;  // kWith
  std::shared_ptr<MacroNode> macro;  // kMacro, kCallBlock (the caller)
};

struct Template {
  Body body;
};

}  // namespace sluice::chat::internal

#endif  // SLUICE_ENGINE_CHAT_TEMPLATE_AST_H_
