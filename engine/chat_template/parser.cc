#include "engine/chat_template/parser.h"

#include <functional>
#include <initializer_list>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "engine/chat_template/lexer.h"

namespace sluice::chat::internal {
namespace {

constexpr int kMaxParseDepth = 256;

// Tags jinja2 knows that are outside the subset.
const std::set<std::string>& UnsupportedTags() {
  static const auto* tags = new std::set<std::string>{
      "block", "extends", "include", "import", "from", "autoescape", "do", "trans", "pluralize", "debug"};
  return *tags;
}

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : t_(std::move(tokens)) {}

  std::unique_ptr<Template> Run() {
    auto tmpl = std::make_unique<Template>();
    tmpl->body = Subparse({});
    if (Cur().type != TokenType::kEof) Fail("unexpected " + Describe(Cur()));
    return tmpl;
  }

 private:
  // ---- token stream -------------------------------------------------------------------

  const Token& Cur() const { return t_[i_]; }
  const Token& Look() const { return t_[i_ + 1 < t_.size() ? i_ + 1 : i_]; }
  const Token& Next() {
    const Token& tok = t_[i_];
    if (i_ + 1 < t_.size()) ++i_;
    return tok;
  }
  bool IsOp(const Token& tok, const char* op) const { return tok.type == TokenType::kOperator && tok.text == op; }
  bool IsName(const Token& tok, const char* name) const { return tok.type == TokenType::kName && tok.text == name; }
  bool CurOp(const char* op) const { return IsOp(Cur(), op); }
  bool CurName(const char* name) const { return IsName(Cur(), name); }
  bool SkipOp(const char* op) {
    if (!CurOp(op)) return false;
    Next();
    return true;
  }
  bool SkipName(const char* name) {
    if (!CurName(name)) return false;
    Next();
    return true;
  }

  static std::string Describe(const Token& tok) {
    switch (tok.type) {
      case TokenType::kName:
        return "name '" + tok.text + "'";
      case TokenType::kOperator:
        return "'" + tok.text + "'";
      case TokenType::kString:
        return "string literal";
      case TokenType::kInteger:
      case TokenType::kFloat:
        return "number '" + tok.text + "'";
      default:
        return TokenTypeName(tok.type);
    }
  }

  [[noreturn]] void Fail(const std::string& msg) { ThrowInvalid(msg, Cur().pos); }
  [[noreturn]] void FailAt(const std::string& msg, SourcePos pos) { ThrowInvalid(msg, pos); }

  void ExpectOp(const char* op) {
    if (!SkipOp(op)) Fail(std::string("expected '") + op + "', got " + Describe(Cur()));
  }
  const Token& ExpectName() {
    if (Cur().type != TokenType::kName) Fail("expected a name, got " + Describe(Cur()));
    return Next();
  }
  void ExpectName(const char* name) {
    if (!SkipName(name)) Fail(std::string("expected '") + name + "', got " + Describe(Cur()));
  }
  void ExpectBlockEnd() {
    if (Cur().type != TokenType::kBlockEnd) Fail("expected end of statement block, got " + Describe(Cur()));
    Next();
  }

  struct DepthGuard {
    DepthGuard(Parser* p) : p(p) {
      if (++p->depth_ > kMaxParseDepth) p->Fail("template nests more than 256 levels deep");
    }
    ~DepthGuard() { --p->depth_; }
    Parser* p;
  };
  // A left-deep chain (a + b + c ..., a.b.c ..., a|f|g ...) nests one level per link.
  struct ChainGuard {
    explicit ChainGuard(Parser* p) : p(p) {}
    void Step() {
      ++n;
      if (++p->depth_ > kMaxParseDepth) p->Fail("template nests more than 256 levels deep");
    }
    ~ChainGuard() { p->depth_ -= n; }
    Parser* p;
    int n = 0;
  };

  ExprPtr NewExpr(ExprKind kind, SourcePos pos) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->pos = pos;
    return e;
  }

  // ---- statements ---------------------------------------------------------------------

  // Parses until a block whose first name is one of `end_tokens` (left current).
  Body Subparse(std::initializer_list<const char*> end_tokens) {
    DepthGuard guard(this);
    Body body;
    while (Cur().type != TokenType::kEof) {
      const Token& tok = Cur();
      if (tok.type == TokenType::kData) {
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::kData;
        s->pos = tok.pos;
        s->text = tok.text;
        body.push_back(std::move(s));
        Next();
      } else if (tok.type == TokenType::kVarBegin) {
        Next();
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::kOutput;
        s->pos = Cur().pos;
        s->expr = ParseTuple(/*with_condexpr=*/true, {});
        if (Cur().type != TokenType::kVarEnd) Fail("expected end of print statement, got " + Describe(Cur()));
        Next();
        body.push_back(std::move(s));
      } else if (tok.type == TokenType::kBlockBegin) {
        Next();
        for (const char* end : end_tokens) {
          if (CurName(end)) return body;
        }
        body.push_back(ParseStatement());
        ExpectBlockEnd();
      } else {
        Fail("unexpected " + Describe(tok));
      }
    }
    if (end_tokens.size() > 0) {
      std::string names;
      for (const char* end : end_tokens) names += std::string(names.empty() ? "" : " or ") + "'" + end + "'";
      Fail("unexpected end of template, expected " + names);
    }
    return body;
  }

  // After a statement's header: `%}` then the body up to one of `end_tokens`.
  Body ParseStatements(std::initializer_list<const char*> end_tokens, bool drop_needle) {
    SkipOp(":");
    ExpectBlockEnd();
    Body body = Subparse(end_tokens);
    if (drop_needle) Next();
    return body;
  }

  StmtPtr NewStmt(StmtKind kind, SourcePos pos) {
    auto s = std::make_unique<Stmt>();
    s->kind = kind;
    s->pos = pos;
    return s;
  }

  StmtPtr ParseStatement() {
    const Token& tok = Cur();
    if (tok.type != TokenType::kName) Fail("tag name expected");
    const std::string& name = tok.text;
    const SourcePos pos = tok.pos;
    if (name == "if") return ParseIf();
    if (name == "for") return ParseFor();
    if (name == "set") return ParseSet();
    if (name == "macro") return ParseMacro();
    if (name == "call") return ParseCallBlock();
    if (name == "filter") return ParseFilterBlock();
    if (name == "with") return ParseWith();
    if (name == "print") {
      Next();
      auto s = NewStmt(StmtKind::kOutput, pos);
      auto tuple = NewExpr(ExprKind::kTuple, pos);
      while (Cur().type != TokenType::kBlockEnd) {
        if (!tuple->items.empty()) ExpectOp(",");
        tuple->items.push_back(ParseExpression(true));
      }
      // print a, b writes each, like separate {{ }}; modelled as a body of outputs.
      auto scope = NewStmt(StmtKind::kScope, pos);
      for (auto& item : tuple->items) {
        auto out = NewStmt(StmtKind::kOutput, item->pos);
        out->expr = std::move(item);
        scope->body.push_back(std::move(out));
      }
      return scope;
    }
    if (name == "break" || name == "continue") {
      Next();
      if (loop_depth_ == 0) FailAt("'" + name + "' outside of a for loop", pos);
      return NewStmt(name == "break" ? StmtKind::kBreak : StmtKind::kContinue, pos);
    }
    if (name == "generation") {  // transformers' AssistantTracker: renders its body
      Next();
      auto s = NewStmt(StmtKind::kScope, pos);
      s->body = ParseStatements({"endgeneration"}, true);
      return s;
    }
    if (UnsupportedTags().count(name)) {
      ThrowUnimplemented("the '" + name + "' tag is not supported in chat templates", pos);
    }
    FailAt("Encountered unknown tag '" + name + "'", pos);
  }

  StmtPtr ParseIf() {
    auto s = NewStmt(StmtKind::kIf, Cur().pos);
    Next();
    while (true) {
      ExprPtr cond = ParseTuple(/*with_condexpr=*/false, {});
      Body body = ParseStatements({"elif", "else", "endif"}, false);
      s->branches.emplace_back(std::move(cond), std::move(body));
      const Token& tok = Next();
      if (tok.text == "elif") continue;
      if (tok.text == "else") s->else_body = ParseStatements({"endif"}, true);
      break;
    }
    return s;
  }

  // Assignment targets: names, or a tuple of names (for loops, set).
  std::vector<std::string> ParseTargets(bool allow_namespace, std::string* ns_attr,
                                        std::initializer_list<const char*> extra_end) {
    std::vector<std::string> names;
    bool is_tuple = false;
    while (true) {
      if (!names.empty()) ExpectOp(",");
      if (Cur().type == TokenType::kBlockEnd || CurOp(")")) break;
      bool end = false;
      for (const char* e : extra_end) end = end || CurName(e);
      if (end) break;
      const Token& tok = Cur();
      if (tok.type != TokenType::kName) Fail("can't assign to " + Describe(tok));
      if (tok.text == "true" || tok.text == "false" || tok.text == "none" || tok.text == "True" ||
          tok.text == "False" || tok.text == "None") {
        Fail("can't assign to const");
      }
      Next();
      names.push_back(tok.text);
      if (allow_namespace && CurOp(".")) {
        Next();
        const Token& attr = ExpectName();
        if (ns_attr->empty() && names.size() == 1 && !CurOp(",")) {
          *ns_attr = attr.text;
          return names;
        }
        ThrowUnimplemented("assigning to a namespace attribute inside a tuple is not supported", tok.pos);
      }
      if (CurOp(",")) {
        is_tuple = true;
      } else {
        break;
      }
    }
    if (names.empty()) Fail("expected an assignment target, got " + Describe(Cur()));
    (void)is_tuple;
    return names;
  }

  StmtPtr ParseFor() {
    auto s = NewStmt(StmtKind::kFor, Cur().pos);
    Next();
    std::string unused;
    s->targets = ParseTargets(false, &unused, {"in"});
    ExpectName("in");
    s->expr = ParseTuple(/*with_condexpr=*/false, {"recursive"});
    if (SkipName("if")) s->filter = ParseExpression(true);
    if (CurName("recursive")) ThrowUnimplemented("recursive for loops are not supported", Cur().pos);
    ++loop_depth_;
    s->body = ParseStatements({"endfor", "else"}, false);
    --loop_depth_;
    if (Next().text == "else") {
      const int saved = loop_depth_;
      loop_depth_ = 0;  // `break` in a loop's else block is outside the loop
      s->else_body = ParseStatements({"endfor"}, true);
      loop_depth_ = saved;
    }
    return s;
  }

  StmtPtr ParseSet() {
    const SourcePos pos = Cur().pos;
    Next();
    std::string ns_attr;
    std::vector<std::string> targets = ParseTargets(true, &ns_attr, {});
    if (SkipOp("=")) {
      auto s = NewStmt(StmtKind::kSet, pos);
      s->targets = std::move(targets);
      s->ns_attr = ns_attr;
      s->expr = ParseTuple(/*with_condexpr=*/true, {});
      return s;
    }
    if (!ns_attr.empty()) ThrowUnimplemented("block assignment to a namespace attribute is not supported", pos);
    if (targets.size() != 1) Fail("block assignment needs a single name");
    auto s = NewStmt(StmtKind::kSetBlock, pos);
    s->targets = std::move(targets);
    if (CurOp("|")) s->filter = ParseFilterChain(nullptr, false);
    s->body = ParseStatements({"endset"}, true);
    return s;
  }

  void ParseSignature(MacroNode* m) {
    ExpectOp("(");
    bool have_default = false;
    while (!CurOp(")")) {
      if (!m->params.empty()) ExpectOp(",");
      if (CurOp(")")) Fail("expected a parameter name, got ')'");
      MacroParam p;
      p.name = ExpectName().text;
      if (SkipOp("=")) {
        p.default_value = ParseExpression(true);
        have_default = true;
      } else if (have_default) {
        Fail("non-default argument follows default argument");
      }
      m->params.push_back(std::move(p));
    }
    ExpectOp(")");
  }

  static void CollectNames(const Expr* e, std::set<std::string>* out) {
    if (e == nullptr) return;
    if (e->kind == ExprKind::kName) out->insert(e->name);
    CollectNames(e->a.get(), out);
    CollectNames(e->b.get(), out);
    CollectNames(e->c.get(), out);
    for (const auto& item : e->items) CollectNames(item.get(), out);
    for (const auto& kw : e->kwargs) CollectNames(kw.value.get(), out);
  }
  static void CollectNames(const Body& body, std::set<std::string>* out) {
    for (const auto& s : body) {
      CollectNames(s->expr.get(), out);
      CollectNames(s->filter.get(), out);
      for (const auto& [cond, b] : s->branches) {
        CollectNames(cond.get(), out);
        CollectNames(b, out);
      }
      CollectNames(s->body, out);
      CollectNames(s->else_body, out);
      for (const auto& [n, v] : s->assignments) CollectNames(v.get(), out);
      if (s->macro && s->kind == StmtKind::kCallBlock) CollectNames(s->macro->body, out);
    }
  }
  static void AnalyzeMacro(MacroNode* m) {
    std::set<std::string> names;
    CollectNames(m->body, &names);
    m->uses_caller = names.count("caller") > 0;
    m->uses_varargs = names.count("varargs") > 0;
    m->uses_kwargs = names.count("kwargs") > 0;
  }

  StmtPtr ParseMacro() {
    auto s = NewStmt(StmtKind::kMacro, Cur().pos);
    Next();
    s->macro = std::make_shared<MacroNode>();
    s->macro->pos = s->pos;
    s->macro->name = ExpectName().text;
    ParseSignature(s->macro.get());
    const int saved = loop_depth_;
    loop_depth_ = 0;
    s->macro->body = ParseStatements({"endmacro"}, true);
    loop_depth_ = saved;
    AnalyzeMacro(s->macro.get());
    return s;
  }

  StmtPtr ParseCallBlock() {
    auto s = NewStmt(StmtKind::kCallBlock, Cur().pos);
    Next();
    s->macro = std::make_shared<MacroNode>();
    s->macro->pos = s->pos;
    s->macro->name = "caller";
    if (CurOp("(")) ParseSignature(s->macro.get());
    s->expr = ParseExpression(true);
    if (s->expr->kind != ExprKind::kCall) FailAt("expected call", s->pos);
    const int saved = loop_depth_;
    loop_depth_ = 0;
    s->macro->body = ParseStatements({"endcall"}, true);
    loop_depth_ = saved;
    AnalyzeMacro(s->macro.get());
    return s;
  }

  StmtPtr ParseFilterBlock() {
    auto s = NewStmt(StmtKind::kFilterBlock, Cur().pos);
    Next();
    s->filter = ParseFilterChain(nullptr, true);
    s->body = ParseStatements({"endfilter"}, true);
    return s;
  }

  StmtPtr ParseWith() {
    auto s = NewStmt(StmtKind::kWith, Cur().pos);
    Next();
    while (Cur().type != TokenType::kBlockEnd) {
      if (!s->assignments.empty()) ExpectOp(",");
      const std::string name = ExpectName().text;
      ExpectOp("=");
      s->assignments.emplace_back(name, ParseExpression(true));
    }
    s->body = ParseStatements({"endwith"}, true);
    return s;
  }

  // ---- expressions --------------------------------------------------------------------

  bool IsTupleEnd(std::initializer_list<const char*> extra_end) const {
    const Token& tok = Cur();
    if (tok.type == TokenType::kVarEnd || tok.type == TokenType::kBlockEnd || IsOp(tok, ")") ||
        tok.type == TokenType::kEof) {
      return true;
    }
    for (const char* e : extra_end) {
      if (IsName(tok, e)) return true;
    }
    return false;
  }

  ExprPtr ParseTuple(bool with_condexpr, std::initializer_list<const char*> extra_end,
                     bool explicit_parens = false) {
    const SourcePos pos = Cur().pos;
    std::vector<ExprPtr> args;
    bool is_tuple = false;
    while (true) {
      if (!args.empty()) ExpectOp(",");
      if (IsTupleEnd(extra_end)) break;
      args.push_back(ParseExpression(with_condexpr));
      if (CurOp(",")) {
        is_tuple = true;
      } else {
        break;
      }
    }
    if (!is_tuple) {
      if (!args.empty()) return std::move(args[0]);
      if (!explicit_parens) Fail("Expected an expression, got " + Describe(Cur()));
    }
    auto e = NewExpr(ExprKind::kTuple, pos);
    e->items = std::move(args);
    return e;
  }

  ExprPtr ParseExpression(bool with_condexpr) {
    DepthGuard guard(this);
    return with_condexpr ? ParseCondExpr() : ParseOr();
  }

  ExprPtr ParseCondExpr() {
    SourcePos pos = Cur().pos;
    ExprPtr expr1 = ParseOr();
    ChainGuard chain(this);
    while (SkipName("if")) {
      chain.Step();
      ExprPtr expr2 = ParseOr();
      ExprPtr expr3;
      if (SkipName("else")) expr3 = ParseCondExpr();
      auto e = NewExpr(ExprKind::kCondExpr, pos);
      e->a = std::move(expr2);
      e->b = std::move(expr1);
      e->c = std::move(expr3);
      expr1 = std::move(e);
      pos = Cur().pos;
    }
    return expr1;
  }

  ExprPtr ParseOr() {
    ExprPtr left = ParseAnd();
    ChainGuard chain(this);
    while (CurName("or")) {
      chain.Step();
      const SourcePos pos = Next().pos;
      auto e = NewExpr(ExprKind::kOr, pos);
      e->a = std::move(left);
      e->b = ParseAnd();
      left = std::move(e);
    }
    return left;
  }

  ExprPtr ParseAnd() {
    ExprPtr left = ParseNot();
    ChainGuard chain(this);
    while (CurName("and")) {
      chain.Step();
      const SourcePos pos = Next().pos;
      auto e = NewExpr(ExprKind::kAnd, pos);
      e->a = std::move(left);
      e->b = ParseNot();
      left = std::move(e);
    }
    return left;
  }

  ExprPtr ParseNot() {
    if (CurName("not")) {
      DepthGuard guard(this);
      const SourcePos pos = Next().pos;
      auto e = NewExpr(ExprKind::kNot, pos);
      e->a = ParseNot();
      return e;
    }
    return ParseCompare();
  }

  ExprPtr ParseCompare() {
    const SourcePos pos = Cur().pos;
    ExprPtr expr = ParseMath1();
    std::vector<std::string> ops;
    std::vector<ExprPtr> operands;
    ChainGuard chain(this);
    while (true) {
      chain.Step();
      const Token& tok = Cur();
      std::string op;
      if (tok.type == TokenType::kOperator &&
          (tok.text == "==" || tok.text == "!=" || tok.text == "<" || tok.text == "<=" || tok.text == ">" ||
           tok.text == ">=")) {
        op = tok.text;
        Next();
      } else if (IsName(tok, "in")) {
        op = "in";
        Next();
      } else if (IsName(tok, "not") && IsName(Look(), "in")) {
        op = "notin";
        Next();
        Next();
      } else {
        break;
      }
      ops.push_back(op);
      operands.push_back(ParseMath1());
    }
    if (ops.empty()) return expr;
    auto e = NewExpr(ExprKind::kCompare, pos);
    e->a = std::move(expr);
    e->items = std::move(operands);
    e->ops = std::move(ops);
    return e;
  }

  ExprPtr Binary(const std::string& op, ExprPtr l, ExprPtr r, SourcePos pos) {
    auto e = NewExpr(ExprKind::kBinary, pos);
    e->name = op;
    e->a = std::move(l);
    e->b = std::move(r);
    return e;
  }

  ExprPtr ParseMath1() {
    ExprPtr left = ParseConcat();
    ChainGuard chain(this);
    while (CurOp("+") || CurOp("-")) {
      chain.Step();
      const Token& tok = Next();
      const std::string op = tok.text;
      const SourcePos pos = tok.pos;
      left = Binary(op, std::move(left), ParseConcat(), pos);
    }
    return left;
  }

  ExprPtr ParseConcat() {
    ExprPtr left = ParseMath2();
    ChainGuard chain(this);
    while (CurOp("~")) {
      chain.Step();
      const SourcePos pos = Next().pos;
      left = Binary("~", std::move(left), ParseMath2(), pos);
    }
    return left;
  }

  ExprPtr ParseMath2() {
    ExprPtr left = ParsePow();
    ChainGuard chain(this);
    while (CurOp("*") || CurOp("/") || CurOp("//") || CurOp("%")) {
      chain.Step();
      const Token& tok = Next();
      const std::string op = tok.text;
      const SourcePos pos = tok.pos;
      left = Binary(op, std::move(left), ParsePow(), pos);
    }
    return left;
  }

  ExprPtr ParsePow() {
    ExprPtr left = ParseUnary(true);
    ChainGuard chain(this);
    while (CurOp("**")) {
      chain.Step();
      const SourcePos pos = Next().pos;
      left = Binary("**", std::move(left), ParseUnary(true), pos);
    }
    return left;
  }

  ExprPtr ParseUnary(bool with_filter) {
    DepthGuard guard(this);
    const SourcePos pos = Cur().pos;
    ExprPtr node;
    if (CurOp("-") || CurOp("+")) {
      const bool neg = Next().text == "-";
      node = NewExpr(neg ? ExprKind::kNeg : ExprKind::kPos, pos);
      node->a = ParseUnary(false);
    } else {
      node = ParsePrimary();
    }
    node = ParsePostfix(std::move(node));
    if (with_filter) node = ParseFilterExpr(std::move(node));
    return node;
  }

  ExprPtr ParsePrimary() {
    DepthGuard guard(this);
    const Token& tok = Cur();
    const SourcePos pos = tok.pos;
    if (tok.type == TokenType::kName) {
      Next();
      auto e = NewExpr(ExprKind::kLiteral, pos);
      if (tok.text == "true" || tok.text == "True") {
        e->value = Value::Bool(true);
      } else if (tok.text == "false" || tok.text == "False") {
        e->value = Value::Bool(false);
      } else if (tok.text == "none" || tok.text == "None") {
        e->value = Value::None();
      } else {
        e->kind = ExprKind::kName;
        e->name = tok.text;
      }
      return e;
    }
    if (tok.type == TokenType::kString) {
      std::string s;
      while (Cur().type == TokenType::kString) s += Next().text;
      auto e = NewExpr(ExprKind::kLiteral, pos);
      e->value = Value::String(std::move(s));
      return e;
    }
    if (tok.type == TokenType::kInteger || tok.type == TokenType::kFloat) {
      Next();
      auto e = NewExpr(ExprKind::kLiteral, pos);
      e->value = tok.type == TokenType::kInteger ? Value::Int(tok.int_value) : Value::Float(tok.float_value);
      return e;
    }
    if (IsOp(tok, "(")) {
      Next();
      ExprPtr e = ParseTuple(true, {}, /*explicit_parens=*/true);
      ExpectOp(")");
      return e;
    }
    if (IsOp(tok, "[")) {
      Next();
      auto e = NewExpr(ExprKind::kList, pos);
      while (!CurOp("]")) {
        if (!e->items.empty()) ExpectOp(",");
        if (CurOp("]")) break;
        e->items.push_back(ParseExpression(true));
      }
      ExpectOp("]");
      return e;
    }
    if (IsOp(tok, "{")) {
      Next();
      auto e = NewExpr(ExprKind::kDict, pos);
      while (!CurOp("}")) {
        if (!e->items.empty()) ExpectOp(",");
        if (CurOp("}")) break;
        e->items.push_back(ParseExpression(true));
        ExpectOp(":");
        e->items.push_back(ParseExpression(true));
      }
      ExpectOp("}");
      return e;
    }
    Fail("unexpected " + Describe(tok));
  }

  ExprPtr ParsePostfix(ExprPtr node) {
    ChainGuard chain(this);
    while (true) {
      chain.Step();
      if (CurOp(".") || CurOp("[")) {
        node = ParseSubscript(std::move(node));
      } else if (CurOp("(")) {
        node = ParseCall(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr ParseFilterExpr(ExprPtr node) {
    ChainGuard chain(this);
    while (true) {
      chain.Step();
      if (CurOp("|")) {
        node = ParseFilterChain(std::move(node), false);
      } else if (CurName("is")) {
        node = ParseTest(std::move(node));
      } else if (CurOp("(")) {
        node = ParseCall(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr ParseSubscript(ExprPtr node) {
    DepthGuard guard(this);
    const Token& tok = Next();
    const SourcePos pos = tok.pos;
    if (tok.text == ".") {
      const Token& attr = Next();
      if (attr.type == TokenType::kName) {
        auto e = NewExpr(ExprKind::kGetAttr, pos);
        e->a = std::move(node);
        e->name = attr.text;
        return e;
      }
      if (attr.type != TokenType::kInteger) FailAt("expected name or number", attr.pos);
      auto idx = NewExpr(ExprKind::kLiteral, attr.pos);
      idx->value = Value::Int(attr.int_value);
      auto e = NewExpr(ExprKind::kGetItem, pos);
      e->a = std::move(node);
      e->b = std::move(idx);
      return e;
    }
    // '['
    std::vector<ExprPtr> args;
    while (!CurOp("]")) {
      if (!args.empty()) ExpectOp(",");
      args.push_back(ParseSubscribed());
    }
    ExpectOp("]");
    auto e = NewExpr(ExprKind::kGetItem, pos);
    e->a = std::move(node);
    if (args.size() == 1) {
      e->b = std::move(args[0]);
    } else {
      auto tuple = NewExpr(ExprKind::kTuple, pos);
      tuple->items = std::move(args);
      e->b = std::move(tuple);
    }
    if (e->b->kind == ExprKind::kTuple) {
      for (const auto& item : e->b->items) {
        if (item->kind == ExprKind::kSlice) ThrowUnimplemented("multi-dimensional slices are not supported", pos);
      }
    }
    if (e->b->kind == ExprKind::kSlice) {
      // a[b:c:d]: the object in `a`, start/stop/step (each may be null) in `items`.
      auto slice = std::move(e->b);
      auto s = NewExpr(ExprKind::kSlice, pos);
      s->a = std::move(e->a);
      s->items.push_back(std::move(slice->a));
      s->items.push_back(std::move(slice->b));
      s->items.push_back(std::move(slice->c));
      return s;
    }
    return e;
  }

  // One subscript: an expression or a slice `a:b:c` (parts optional).
  ExprPtr ParseSubscribed() {
    const SourcePos pos = Cur().pos;
    ExprPtr start, stop, step;
    if (CurOp(":")) {
      Next();
    } else {
      ExprPtr node = ParseExpression(true);
      if (!CurOp(":")) return node;
      Next();
      start = std::move(node);
    }
    if (!CurOp(":") && !CurOp("]") && !CurOp(",")) stop = ParseExpression(true);
    if (CurOp(":")) {
      Next();
      if (!CurOp("]") && !CurOp(",")) step = ParseExpression(true);
    }
    auto e = NewExpr(ExprKind::kSlice, pos);
    e->a = std::move(start);
    e->b = std::move(stop);
    e->c = std::move(step);
    return e;
  }

  void ParseCallArgs(Expr* e) {
    const SourcePos pos = Cur().pos;
    ExpectOp("(");
    bool require_comma = false;
    while (!CurOp(")")) {
      if (require_comma) {
        ExpectOp(",");
        if (CurOp(")")) break;
      }
      if (CurOp("*") || CurOp("**")) {
        ThrowUnimplemented("*args and **kwargs in calls are not supported", Cur().pos);
      }
      if (Cur().type == TokenType::kName && IsOp(Look(), "=")) {
        const std::string key = Next().text;
        Next();
        e->kwargs.push_back(KeywordArg{key, ParseExpression(true)});
      } else {
        if (!e->kwargs.empty()) FailAt("invalid syntax for function call expression", pos);
        e->items.push_back(ParseExpression(true));
      }
      require_comma = true;
    }
    ExpectOp(")");
  }

  ExprPtr ParseCall(ExprPtr node) {
    DepthGuard guard(this);
    auto e = NewExpr(ExprKind::kCall, Cur().pos);
    e->a = std::move(node);
    ParseCallArgs(e.get());
    return e;
  }

  ExprPtr ParseFilterChain(ExprPtr node, bool start_inline) {
    ChainGuard chain(this);
    while (CurOp("|") || start_inline) {
      chain.Step();
      if (!start_inline) Next();
      const Token& tok = ExpectName();
      auto e = NewExpr(ExprKind::kFilter, tok.pos);
      e->name = tok.text;
      while (CurOp(".")) {
        Next();
        e->name += "." + ExpectName().text;
      }
      if (CurOp("(")) ParseCallArgs(e.get());
      e->a = std::move(node);
      node = std::move(e);
      start_inline = false;
    }
    return node;
  }

  ExprPtr ParseTest(ExprPtr node) {
    DepthGuard guard(this);
    const SourcePos pos = Next().pos;  // 'is'
    const bool negated = SkipName("not");
    const Token& tok = ExpectName();
    auto e = NewExpr(ExprKind::kTest, pos);
    e->name = tok.text;
    while (CurOp(".")) {
      Next();
      e->name += "." + ExpectName().text;
    }
    e->negated = negated;
    const Token& cur = Cur();
    if (CurOp("(")) {
      ParseCallArgs(e.get());
    } else if ((cur.type == TokenType::kName || cur.type == TokenType::kString || cur.type == TokenType::kInteger ||
                cur.type == TokenType::kFloat || IsOp(cur, "[") || IsOp(cur, "{")) &&
               !IsName(cur, "else") && !IsName(cur, "or") && !IsName(cur, "and")) {
      if (IsName(cur, "is")) Fail("You cannot chain multiple tests with is");
      ExprPtr arg = ParsePrimary();
      e->items.push_back(ParsePostfix(std::move(arg)));
    }
    e->a = std::move(node);
    return e;
  }

  std::vector<Token> t_;
  size_t i_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
};

}  // namespace

std::unique_ptr<Template> ParseTemplate(std::string_view source) {
  Parser parser(Tokenize(source));
  return parser.Run();
}

}  // namespace sluice::chat::internal
