#include "engine/chat_template/chat_template.h"

#include <filesystem>
#include <fstream>
#include <new>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/chat_template/chat_template_impl.h"
#include "engine/chat_template/parser.h"

namespace sluice::chat {
namespace internal {
namespace {

absl::Status ToStatus(const TemplateError& e) {
  if (e.pos.line < 0) return absl::Status(e.code, e.message);  // raise_exception: verbatim
  if (e.pos.line == 0) return absl::Status(e.code, absl::StrCat("chat template: ", e.message));
  return absl::Status(e.code, absl::StrCat("chat template line ", e.pos.line, ":", e.pos.col, ": ", e.message));
}

// jinja2 rejects unknown filter and test names when it compiles the template,
// except directly inside an if statement or an inline if (a "soft frame"), where
// the error waits until the filter runs.
void ValidateExpr(const Expr* e, bool soft) {
  if (e == nullptr) return;
  if (e->kind == ExprKind::kCondExpr) soft = true;
  if (!soft && e->kind == ExprKind::kFilter && !IsJinjaFilter(e->name)) {
    ThrowInvalid("No filter named '" + e->name + "'.", e->pos);
  }
  if (!soft && e->kind == ExprKind::kTest && !IsJinjaTest(e->name)) {
    ThrowInvalid("No test named '" + e->name + "'.", e->pos);
  }
  ValidateExpr(e->a.get(), soft);
  ValidateExpr(e->b.get(), soft);
  ValidateExpr(e->c.get(), soft);
  for (const auto& item : e->items) ValidateExpr(item.get(), soft);
  for (const auto& kw : e->kwargs) ValidateExpr(kw.value.get(), soft);
}

void ValidateBody(const Body& body, bool soft) {
  for (const auto& s : body) {
    switch (s->kind) {
      case StmtKind::kIf:
        for (const auto& [cond, b] : s->branches) {
          ValidateExpr(cond.get(), true);
          ValidateBody(b, true);
        }
        ValidateBody(s->else_body, true);
        break;
      case StmtKind::kFor:
        ValidateExpr(s->expr.get(), soft);
        ValidateExpr(s->filter.get(), false);
        ValidateBody(s->body, false);
        ValidateBody(s->else_body, false);
        break;
      case StmtKind::kMacro:
        for (const auto& p : s->macro->params) ValidateExpr(p.default_value.get(), false);
        ValidateBody(s->macro->body, false);
        break;
      case StmtKind::kCallBlock:
        ValidateExpr(s->expr.get(), soft);
        for (const auto& p : s->macro->params) ValidateExpr(p.default_value.get(), false);
        ValidateBody(s->macro->body, false);
        break;
      case StmtKind::kSetBlock:
      case StmtKind::kFilterBlock:
        ValidateExpr(s->filter.get(), false);
        ValidateBody(s->body, false);
        break;
      case StmtKind::kWith:
        for (const auto& [name, value] : s->assignments) ValidateExpr(value.get(), soft);
        ValidateBody(s->body, false);
        break;
      case StmtKind::kScope:
        ValidateBody(s->body, soft);
        break;
      default:
        ValidateExpr(s->expr.get(), soft);
        break;
    }
  }
}

absl::StatusOr<std::string> ReadFile(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return absl::NotFoundError(absl::StrCat("cannot read ", path.string()));
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A special token in tokenizer_config.json: a string, or an AddedToken object.
std::optional<std::string> TokenString(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

// Names of a message's reasoning, as transformers' _alias_reasoning_fields reads them.
constexpr const char* kReasoningFields[] = {"reasoning_content", "thinking", "reasoning"};

// transformers' preprocessing of each message: keys whose value is None dropped
// (_normalize_chat_messages), then the reasoning aliased under `thinking` and
// `reasoning_content` (_alias_reasoning_fields).
Value PrepareMessage(const nlohmann::ordered_json& m) {
  if (!m.is_object()) {
    ThrowInvalid("Chat messages should be dicts, but got " + std::string(m.type_name()));
  }
  Dict d;
  for (auto it = m.begin(); it != m.end(); ++it) {
    if (it.value().is_null()) continue;
    d.items.emplace_back(FromJson(it.key()), FromJson(it.value()));
  }
  const Value* reasoning = nullptr;
  for (const char* field : kReasoningFields) {
    const Value* v = d.Find(Value::String(field));
    if (v != nullptr && !v->is_none()) {
      reasoning = v;
      break;
    }
  }
  if (reasoning != nullptr) {
    const Value r = *reasoning;
    Dict aliased;
    aliased.Set(Value::String("thinking"), r);
    for (const auto& [k, v] : d.items) aliased.Set(k, v);
    aliased.Set(Value::String("reasoning_content"), r);
    d = std::move(aliased);
  }
  return Value::MakeDict(std::move(d));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Template>> ParseToStatus(const std::string& source) {
  try {
    auto tmpl = ParseTemplate(source);
    ValidateBody(tmpl->body, false);
    return tmpl;
  } catch (const TemplateError& e) {
    return ToStatus(e);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("chat template: out of memory while parsing");
  }
}

absl::StatusOr<std::string> ChatTemplateImpl::Render(const ChatTemplateInputs& inputs) const {
  try {
    // The variables the template sees, as transformers' apply_chat_template (and
    // vLLM's chat_template_kwargs merging) pass them.
    if (!inputs.messages.is_array()) ThrowInvalid("messages must be a list");
    if (inputs.messages.empty()) {
      ThrowInvalid("Cannot apply chat template to an empty conversation. Provide at least one message.");
    }
    nlohmann::ordered_json tools = inputs.tools;
    nlohmann::ordered_json documents;  // null
    bool add_generation_prompt_set = false;
    Value add_generation_prompt = Value::Bool(inputs.add_generation_prompt);
    std::vector<std::pair<std::string, Value>> kwargs;
    if (!inputs.extra.is_null() && !inputs.extra.is_object()) ThrowInvalid("chat_template_kwargs must be an object");
    if (inputs.extra.is_object()) {
      for (auto it = inputs.extra.begin(); it != inputs.extra.end(); ++it) {
        const std::string& key = it.key();
        const auto& value = it.value();
        if (key == "messages" || key == "conversation" || key == "chat_template" || key == "tokenize") {
          ThrowInvalid("chat_template_kwargs may not set '" + key + "'");
        }
        if (key == "continue_final_message" || key == "return_assistant_tokens_mask" ||
            key == "sanitize_control_tokens") {
          if (!value.is_null() && !(value.is_boolean() && !value.get<bool>())) {
            ThrowUnimplemented("chat_template_kwargs '" + key + "' is not supported");
          }
          continue;
        }
        if (key == "padding" || key == "truncation" || key == "max_length" || key == "return_tensors" ||
            key == "return_dict" || key == "tokenizer_kwargs") {
          continue;  // apply_chat_template's own tokenization options, never template variables
        }
        if (key == "add_generation_prompt") {
          add_generation_prompt = FromJson(value);
          add_generation_prompt_set = true;
          continue;
        }
        if (key == "tools") {
          tools = value;
          continue;
        }
        if (key == "documents") {
          documents = value;
          continue;
        }
        kwargs.emplace_back(key, FromJson(value));
      }
    }
    (void)add_generation_prompt_set;
    if (!tools.is_null()) {
      if (!tools.is_array()) ThrowInvalid("tools must be a list of tool definitions");
      for (const auto& t : tools) {
        if (!t.is_object()) ThrowInvalid("Tools should be JSON schemas (objects)");
      }
    }
    // Named templates: "tool_use" when tools are given and it exists, else "default".
    const Template* tmpl = nullptr;
    for (const auto& named : templates_) {
      if (!tools.is_null() && named.name == "tool_use") tmpl = named.tmpl.get();
    }
    if (tmpl == nullptr) {
      for (const auto& named : templates_) {
        if (named.name == "default") tmpl = named.tmpl.get();
      }
    }
    if (tmpl == nullptr) {
      return absl::FailedPreconditionError("chat template: the model has several chat templates and no default");
    }

    List messages;
    for (const auto& m : inputs.messages) messages.push_back(PrepareMessage(m));

    std::vector<std::pair<std::string, Value>> globals;
    for (const auto& [name, token] : special_tokens_) globals.emplace_back(name, Value::String(token));
    for (auto& kv : kwargs) {  // kwargs overwrite special tokens
      bool replaced = false;
      for (auto& g : globals) {
        if (g.first == kv.first) {
          g.second = kv.second;
          replaced = true;
        }
      }
      if (!replaced) globals.push_back(kv);
    }
    globals.emplace_back("messages", Value::Seq(std::move(messages)));
    globals.emplace_back("tools", FromJson(tools));
    globals.emplace_back("documents", FromJson(documents));
    globals.emplace_back("add_generation_prompt", add_generation_prompt);

    Interpreter interpreter(*tmpl, limits_);
    return interpreter.Render(globals);
  } catch (const TemplateError& e) {
    return ToStatus(e);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("chat template: out of memory while rendering");
  } catch (const std::length_error&) {
    return absl::ResourceExhaustedError("chat template: a value grew too large");
  }
}

}  // namespace internal

absl::StatusOr<std::unique_ptr<ChatTemplate>> ChatTemplate::FromSource(const std::string& source,
                                                                       const std::string& bos_token,
                                                                       const std::string& eos_token) {
  auto tmpl = internal::ParseToStatus(source);
  if (!tmpl.ok()) return tmpl.status();
  std::vector<internal::ChatTemplateImpl::Named> templates;
  templates.push_back({"default", std::move(*tmpl)});
  std::vector<std::pair<std::string, std::string>> special;
  if (!bos_token.empty()) special.emplace_back("bos_token", bos_token);
  if (!eos_token.empty()) special.emplace_back("eos_token", eos_token);
  return std::unique_ptr<ChatTemplate>(new internal::ChatTemplateImpl(std::move(templates), std::move(special)));
}

absl::StatusOr<std::unique_ptr<ChatTemplate>> ChatTemplate::Load(const std::string& model_dir) {
  namespace fs = std::filesystem;
  const fs::path dir(model_dir);
  nlohmann::json config = nlohmann::json::object();
  std::error_code ec;
  const fs::path config_path = dir / "tokenizer_config.json";
  if (fs::exists(config_path, ec)) {
    auto text = internal::ReadFile(config_path);
    if (!text.ok()) return text.status();
    try {
      config = nlohmann::json::parse(*text);
    } catch (const nlohmann::json::exception& e) {
      return absl::InvalidArgumentError(absl::StrCat(config_path.string(), ": ", e.what()));
    }
    if (!config.is_object()) return absl::InvalidArgumentError(config_path.string() + ": not a JSON object");
  }
  nlohmann::json special_map = nlohmann::json::object();
  const fs::path special_path = dir / "special_tokens_map.json";
  if (fs::exists(special_path, ec)) {
    auto text = internal::ReadFile(special_path);
    if (text.ok()) {
      try {
        special_map = nlohmann::json::parse(*text);
      } catch (const nlohmann::json::exception&) {
        special_map = nlohmann::json::object();
      }
      if (!special_map.is_object()) special_map = nlohmann::json::object();
    }
  }

  // Sources: chat_template.jinja wins; else tokenizer_config.json's chat_template.
  std::vector<std::pair<std::string, std::string>> sources;
  const fs::path jinja_path = dir / "chat_template.jinja";
  if (fs::exists(jinja_path, ec)) {
    auto text = internal::ReadFile(jinja_path);
    if (!text.ok()) return text.status();
    sources.emplace_back("default", *text);
  } else if (config.contains("chat_template")) {
    const auto& ct = config["chat_template"];
    if (ct.is_string()) {
      sources.emplace_back("default", ct.get<std::string>());
    } else if (ct.is_array()) {
      for (const auto& entry : ct) {
        if (!entry.is_object() || !entry.contains("name") || !entry.contains("template") ||
            !entry["name"].is_string() || !entry["template"].is_string()) {
          return absl::InvalidArgumentError(config_path.string() +
                                            ": chat_template entries must be {name, template} objects");
        }
        sources.emplace_back(entry["name"].get<std::string>(), entry["template"].get<std::string>());
      }
    } else if (!ct.is_null()) {
      return absl::InvalidArgumentError(config_path.string() + ": chat_template must be a string or a list");
    }
  }
  if (sources.empty()) return absl::NotFoundError(absl::StrCat("no chat template in ", model_dir));

  std::vector<internal::ChatTemplateImpl::Named> templates;
  for (auto& [name, source] : sources) {
    auto tmpl = internal::ParseToStatus(source);
    if (!tmpl.ok()) {
      return absl::Status(tmpl.status().code(),
                          absl::StrCat(model_dir, ": chat template '", name, "': ", tmpl.status().message()));
    }
    templates.push_back({name, std::move(*tmpl)});
  }

  // transformers' special_tokens_map: the named special tokens that are set, as strings.
  std::vector<std::pair<std::string, std::string>> special;
  for (const char* attr : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}) {
    std::optional<std::string> token;
    if (config.contains(attr)) {
      token = internal::TokenString(config[attr]);
    } else if (special_map.contains(attr)) {
      token = internal::TokenString(special_map[attr]);
    }
    if (token) special.emplace_back(attr, *token);
  }
  return std::unique_ptr<ChatTemplate>(new internal::ChatTemplateImpl(std::move(templates), std::move(special)));
}

}  // namespace sluice::chat
