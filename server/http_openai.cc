#include "server/http_openai.h"

#include <cfloat>
#include <cmath>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace sluice::server::openai {
namespace {

const char* JsonTypeName(const Json& v) {
  switch (v.type()) {
    case Json::value_t::null: return "null";
    case Json::value_t::boolean: return "a boolean";
    case Json::value_t::string: return "a string";
    case Json::value_t::array: return "an array";
    case Json::value_t::object: return "an object";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned: return "an integer";
    case Json::value_t::number_float: return "a number";
    default: return "something else";
  }
}

// Typed access to one JSON object's fields. Absent and null fields leave the output as it
// is (OpenAI's clients send null for "not set"); a wrong type is an error naming the field.
class Fields {
 public:
  Fields(const Json& object, ApiError* error, std::string prefix = "")
      : object_(object), error_(error), prefix_(std::move(prefix)) {}

  const Json* Get(const char* name) const {
    auto it = object_.find(name);
    if (it == object_.end() || it->is_null()) return nullptr;
    return &*it;
  }
  bool Has(const char* name) const { return Get(name) != nullptr; }

  bool Fail(const std::string& param, const std::string& message) const {
    error_->http_status = 400;
    error_->type = "invalid_request_error";
    error_->param = param;
    error_->message = message;
    return false;
  }
  bool WrongType(const char* name, const char* want, const Json& v) const {
    return Fail(Param(name), absl::StrCat("'", Param(name), "' must be ", want, ", got ", JsonTypeName(v)));
  }
  std::string Param(const char* name) const { return prefix_ + name; }

  bool Number(const char* name, float* out) const {
    const Json* v = Get(name);
    if (v == nullptr) return true;
    if (!v->is_number()) return WrongType(name, "a number", *v);
    const double d = v->get<double>();
    if (!std::isfinite(d) || std::fabs(d) > FLT_MAX) {
      return Fail(Param(name), absl::StrCat("'", Param(name), "' must be a finite number"));
    }
    *out = static_cast<float>(d);
    return true;
  }
  // Integers in [min, max]; an integral float (2.0) counts.
  bool Integer(const char* name, int64_t* out, int64_t min, int64_t max) const {
    const Json* v = Get(name);
    if (v == nullptr) return true;
    return IntegerValue(*v, Param(name), out, min, max);
  }
  bool IntegerValue(const Json& v, const std::string& param, int64_t* out, int64_t min, int64_t max) const {
    int64_t value = 0;
    if (v.is_number_unsigned()) {
      const uint64_t u = v.get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) return OutOfRange(param, min, max);
      value = static_cast<int64_t>(u);
    } else if (v.is_number_integer()) {
      value = v.get<int64_t>();
    } else if (v.is_number_float()) {
      const double d = v.get<double>();
      if (!std::isfinite(d) || d != std::floor(d)) {
        return Fail(param, absl::StrCat("'", param, "' must be an integer, got ", d));
      }
      if (d < -9.2e18 || d > 9.2e18) return OutOfRange(param, min, max);
      value = static_cast<int64_t>(d);
    } else {
      return Fail(param, absl::StrCat("'", param, "' must be an integer, got ", JsonTypeName(v)));
    }
    if (value < min || value > max) return OutOfRange(param, min, max);
    *out = value;
    return true;
  }
  bool OutOfRange(const std::string& param, int64_t min, int64_t max) const {
    return Fail(param, absl::StrCat("'", param, "' must be an integer in [", min, ", ", max, "]"));
  }
  bool Bool(const char* name, bool* out) const {
    const Json* v = Get(name);
    if (v == nullptr) return true;
    if (!v->is_boolean()) return WrongType(name, "a boolean", *v);
    *out = v->get<bool>();
    return true;
  }
  bool String(const char* name, std::string* out) const {
    const Json* v = Get(name);
    if (v == nullptr) return true;
    if (!v->is_string()) return WrongType(name, "a string", *v);
    *out = v->get<std::string>();
    return true;
  }
  bool Object(const char* name, const Json** out) const {
    const Json* v = Get(name);
    *out = nullptr;
    if (v == nullptr) return true;
    if (!v->is_object()) return WrongType(name, "an object", *v);
    *out = v;
    return true;
  }

 private:
  const Json& object_;
  ApiError* error_;
  std::string prefix_;
};

constexpr int64_t kInt32Max = INT32_MAX;
constexpr int kMaxJsonDepth = 64;

bool ParseBudget(const Json& sluice, ParsedRequest* out, ApiError* error) {
  Fields f(sluice, error, "sluice.");
  for (const auto& [key, value] : sluice.items()) {
    if (key != "budget" && key != "priority") {
      return f.Fail("sluice." + key, absl::StrCat("'sluice.", key,
                                                  "' is not a sluice extension field (known: budget, priority)"));
    }
  }
  int64_t priority = 0;
  if (!f.Integer("priority", &priority, INT32_MIN, INT32_MAX)) return false;
  if (f.Has("priority")) out->params.priority = static_cast<int32_t>(priority);
  const Json* budget = nullptr;
  if (!f.Object("budget", &budget)) return false;
  if (budget == nullptr) return true;
  out->budget = *budget;
  Fields b(*budget, error, "sluice.budget.");
  for (const auto& [key, value] : budget->items()) {
    if (key != "skip_ratio" && key != "experts_per_token" && key != "attention_gate_floor" && key != "skip_layers") {
      return b.Fail("sluice.budget." + key,
                    absl::StrCat("'sluice.budget.", key,
                                 "' is not a budget control (known: skip_ratio, experts_per_token, "
                                 "attention_gate_floor, skip_layers)"));
    }
  }
  GenerationParams& p = out->params;
  if (!b.Number("skip_ratio", &p.skip_ratio) || !b.Number("attention_gate_floor", &p.attention_gate_floor)) {
    return false;
  }
  int64_t experts = 0;
  if (!b.Integer("experts_per_token", &experts, 0, kInt32Max)) return false;
  p.experts_per_token = static_cast<uint32_t>(experts);
  if (const Json* layers = b.Get("skip_layers")) {
    if (!layers->is_array()) return b.WrongType("skip_layers", "an array", *layers);
    for (size_t i = 0; i < layers->size(); ++i) {
      const Json& span = (*layers)[i];
      const std::string param = absl::StrCat("sluice.budget.skip_layers[", i, "]");
      int64_t first = 0;
      int64_t last = 0;
      if (span.is_array()) {
        if (span.size() != 2) return b.Fail(param, absl::StrCat("'", param, "' must be a layer or [first, last]"));
        if (!b.IntegerValue(span[0], param, &first, 0, kInt32Max) ||
            !b.IntegerValue(span[1], param, &last, 0, kInt32Max)) {
          return false;
        }
      } else if (span.is_object()) {
        Fields s(span, error, param + ".");
        if (!s.Has("first")) return b.Fail(param + ".first", absl::StrCat("'", param, ".first' is required"));
        if (!s.Integer("first", &first, 0, kInt32Max) || !s.Integer("last", &last, 0, kInt32Max)) return false;
      } else {
        if (!b.IntegerValue(span, param, &first, 0, kInt32Max)) return false;
        last = first;
      }
      p.skip_layers.emplace_back(static_cast<uint32_t>(first), static_cast<uint32_t>(last));
    }
  }
  return true;
}

// The prompt of /v1/completions: a string, one token array, or a batch of one of either.
bool ParsePrompt(const Json& prompt, GenerationParams* p, Fields& f) {
  const Json* single = &prompt;
  if (prompt.is_array() && !prompt.empty() && (prompt[0].is_string() || prompt[0].is_array())) {
    if (prompt.size() != 1) {
      return f.Fail("prompt", absl::StrCat("'prompt' has ", prompt.size(),
                                           " prompts; only one prompt per request is supported"));
    }
    single = &prompt[0];
  }
  if (single->is_string()) {
    p->input = GenerationParams::Input::kText;
    p->text = single->get<std::string>();
    return true;
  }
  if (single->is_array()) {
    p->input = GenerationParams::Input::kTokens;
    p->tokens.reserve(single->size());
    for (const Json& id : *single) {
      int64_t v = 0;
      if (!f.IntegerValue(id, "prompt", &v, INT32_MIN, INT32_MAX)) {
        return f.Fail("prompt", "'prompt' must be a string, an array of token ids, or a batch of one of those");
      }
      p->tokens.push_back(static_cast<int32_t>(v));
    }
    return true;
  }
  return f.Fail("prompt", absl::StrCat("'prompt' must be a string or an array of token ids, got ",
                                       JsonTypeName(*single)));
}

// The proto field names the shared path's messages start with, and their OpenAI names.
struct Rename {
  const char* proto;
  const char* chat;
  const char* completions;
};
constexpr Rename kRenames[] = {
    {"input.messages", "messages", "prompt"},
    {"input.tokens", "messages", "prompt"},
    {"input.text", "messages", "prompt"},
    {"input", "messages", "prompt"},
    {"stopping.max_tokens/min_tokens", "max_tokens", "max_tokens"},
    {"stopping.max_tokens", "max_tokens", "max_tokens"},
    {"stopping.min_tokens", "min_tokens", "min_tokens"},
    {"stopping.stop_token_ids", "stop_token_ids", "stop_token_ids"},
    {"stopping.stop", "stop", "stop"},
    {"stopping", "max_tokens", "max_tokens"},
    {"logprobs.top_n", "top_logprobs", "logprobs"},
    {"sampling.", "", ""},
    {"budget.", "sluice.budget.", "sluice.budget."},
};

}  // namespace

int HttpStatusOf(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk: return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange: return 400;
    case absl::StatusCode::kUnauthenticated: return 401;
    case absl::StatusCode::kPermissionDenied: return 403;
    case absl::StatusCode::kNotFound: return 404;
    case absl::StatusCode::kResourceExhausted: return 429;
    case absl::StatusCode::kCancelled: return 499;
    case absl::StatusCode::kUnimplemented: return 501;
    case absl::StatusCode::kUnavailable: return 503;
    case absl::StatusCode::kDeadlineExceeded: return 504;
    default: return 500;
  }
}

std::string ErrorBody(const ApiError& e) {
  Json error = {{"message", e.message},
                {"type", e.type},
                {"param", e.param.empty() ? Json(nullptr) : Json(e.param)},
                {"code", e.code.empty() ? Json(nullptr) : Json(e.code)}};
  return Json{{"error", std::move(error)}}.dump(-1, ' ', false, Json::error_handler_t::replace);
}

ApiError ErrorFromStatus(const absl::Status& status, Endpoint endpoint) {
  ApiError e;
  e.http_status = HttpStatusOf(status.code());
  std::string message(status.message());
  switch (e.http_status) {
    case 400: e.type = "invalid_request_error"; break;
    case 401: e.type = "authentication_error"; e.code = "invalid_api_key"; break;
    case 404: e.type = "invalid_request_error"; break;
    case 429: e.type = "rate_limit_error"; e.code = "queue_full"; break;
    case 499: e.type = "cancelled"; break;
    case 501: e.type = "not_implemented_error"; e.code = "unimplemented"; break;
    case 503: e.type = "service_unavailable_error"; e.code = "unavailable"; break;
    case 504: e.type = "timeout_error"; e.code = "deadline_exceeded"; break;
    default: e.type = "server_error"; e.code = "internal_error"; break;
  }
  for (const Rename& r : kRenames) {
    const std::string_view proto = r.proto;
    if (message.compare(0, proto.size(), proto) != 0) continue;
    const bool prefix_only = proto.back() == '.';
    const size_t end = prefix_only ? message.find_first_of(" :", proto.size()) : proto.size();
    if (!prefix_only && end < message.size() && message[end] != ':' && message[end] != ' ' && message[end] != '[' &&
        message[end] != '.') {
      continue;
    }
    const std::string name = endpoint == Endpoint::kChat ? r.chat : r.completions;
    std::string param;
    if (prefix_only) {
      param = name + message.substr(proto.size(), end == std::string::npos ? std::string::npos : end - proto.size());
      message = param + (end == std::string::npos ? std::string() : message.substr(end));
    } else {
      // "input.messages[2].role: ..." → param "messages[2].role"
      const size_t param_end = message.find_first_of(" :", end);
      param = name + message.substr(end, param_end == std::string::npos ? std::string::npos : param_end - end);
      message = name + message.substr(end);
    }
    e.param = param;
    break;
  }
  e.message = std::move(message);
  return e;
}

bool ParseRequest(std::string_view body, Endpoint endpoint, ParsedRequest* out, ApiError* error) {
  out->endpoint = endpoint;
  // Nesting is bounded: templates and the usage echo serialize parts of the body
  // recursively, and no OpenAI request nests deeper than a few levels.
  bool too_deep = false;
  Json::parser_callback_t depth_check = [&too_deep](int depth, Json::parse_event_t, Json&) {
    if (depth > kMaxJsonDepth) too_deep = true;
    return !too_deep;
  };
  Json doc = Json::parse(body.begin(), body.end(), depth_check, /*allow_exceptions=*/false);
  if (too_deep) {
    error->http_status = 400;
    error->message = absl::StrCat("the request body nests deeper than ", kMaxJsonDepth, " levels");
    return false;
  }
  if (doc.is_discarded()) {
    error->http_status = 400;
    error->message = "the request body is not valid JSON";
    return false;
  }
  Fields f(doc, error);
  if (!doc.is_object()) return f.Fail("", absl::StrCat("the request body must be a JSON object, got ", JsonTypeName(doc)));
  GenerationParams& p = out->params;
  const bool chat = endpoint == Endpoint::kChat;

  if (!f.String("model", &out->model) || !f.Bool("stream", &out->stream)) return false;
  const Json* stream_options = nullptr;
  if (!f.Object("stream_options", &stream_options)) return false;
  if (stream_options != nullptr) {
    if (!out->stream) return f.Fail("stream_options", "'stream_options' is only allowed with \"stream\": true");
    Fields so(*stream_options, error, "stream_options.");
    if (!so.Bool("include_usage", &out->include_usage) ||
        !so.Bool("continuous_usage_stats", &out->continuous_usage)) {
      return false;
    }
  }
  int64_t n = 1;
  if (!f.Integer("n", &n, INT64_MIN, INT64_MAX)) return false;
  if (n != 1) {
    return f.Fail("n", absl::StrCat("'n' is ", n, ": only n = 1 is supported (one choice per request)"));
  }
  int64_t best_of = 1;
  if (!f.Integer("best_of", &best_of, INT64_MIN, INT64_MAX)) return false;
  if (best_of != 1) return f.Fail("best_of", "'best_of' must be 1: sluice returns the one sample it draws");
  bool echo = false;
  if (!f.Bool("echo", &echo)) return false;
  if (echo) return f.Fail("echo", "'echo' is not supported");
  if (f.Has("suffix")) return f.Fail("suffix", "'suffix' is not supported");
  if (const Json* bias = f.Get("logit_bias")) {
    if (!bias->is_object()) return f.WrongType("logit_bias", "an object", *bias);
    if (!bias->empty()) return f.Fail("logit_bias", "'logit_bias' is not supported");
  }
  if (const Json* format = f.Get("response_format")) {
    if (!format->is_object()) return f.WrongType("response_format", "an object", *format);
    auto type = format->find("type");
    if (type == format->end() || !type->is_string() || *type != "text") {
      return f.Fail("response_format", "'response_format': only {\"type\": \"text\"} is supported");
    }
  }

  // Input.
  if (chat) {
    const Json* messages = f.Get("messages");
    if (messages == nullptr) return f.Fail("messages", "'messages' is required");
    if (!messages->is_array()) return f.WrongType("messages", "an array", *messages);
    p.input = GenerationParams::Input::kMessages;
    p.chat.messages = *messages;
    if (absl::Status s = NormalizeChatMessages(&p.chat.messages, "messages"); !s.ok()) {
      const std::string message(s.message());
      return f.Fail(message.substr(0, message.find_first_of(" :")), message);
    }
    if (!f.Bool("add_generation_prompt", &p.chat.add_generation_prompt)) return false;
    const Json* kwargs = nullptr;
    if (!f.Object("chat_template_kwargs", &kwargs)) return false;
    if (kwargs != nullptr) {
      p.chat.extra = *kwargs;
      auto thinking = kwargs->find("enable_thinking");
      out->thinking_disabled = thinking != kwargs->end() && thinking->is_boolean() && !thinking->get<bool>();
    }
    std::string tool_choice = "auto";
    if (const Json* choice = f.Get("tool_choice")) {
      if (!choice->is_string() || (*choice != "auto" && *choice != "none")) {
        return f.Fail("tool_choice", "'tool_choice': only \"auto\" and \"none\" are supported");
      }
      tool_choice = choice->get<std::string>();
    }
    if (const Json* tools = f.Get("tools")) {
      if (!tools->is_array()) return f.WrongType("tools", "an array", *tools);
      for (size_t i = 0; i < tools->size(); ++i) {
        const Json& tool = (*tools)[i];
        const std::string param = absl::StrCat("tools[", i, "]");
        if (!tool.is_object()) return f.Fail(param, absl::StrCat("'", param, "' must be an object"));
        auto function = tool.find("function");
        if (function == tool.end() || !function->is_object() || !function->contains("name") ||
            !(*function)["name"].is_string()) {
          return f.Fail(param + ".function", absl::StrCat("'", param, ".function' must be an object with a string name"));
        }
      }
      if (!tools->empty()) {
        p.chat.tools = *tools;
        out->has_tools = tool_choice != "none";
      }
    }
  } else {
    const Json* prompt = f.Get("prompt");
    if (prompt == nullptr) return f.Fail("prompt", "'prompt' is required");
    if (!ParsePrompt(*prompt, &p, f)) return false;
    p.add_special_tokens = true;  // as vLLM's completions: the tokenizer's BOS, if it adds one
    if (!f.Bool("add_special_tokens", &p.add_special_tokens)) return false;
  }

  // Sampling.
  if (!f.Number("temperature", &p.temperature) || !f.Number("min_p", &p.min_p) ||
      !f.Number("presence_penalty", &p.presence_penalty) || !f.Number("frequency_penalty", &p.frequency_penalty) ||
      !f.Number("repetition_penalty", &p.repetition_penalty)) {
    return false;
  }
  if (f.Has("temperature") && p.temperature < 0) return f.Fail("temperature", "'temperature' must be >= 0");
  if (f.Has("repetition_penalty") && p.repetition_penalty <= 0) {
    return f.Fail("repetition_penalty", "'repetition_penalty' must be > 0");
  }
  if (f.Has("top_p")) {
    if (!f.Number("top_p", &p.top_p)) return false;
    if (!(p.top_p > 0.f && p.top_p <= 1.f)) return f.Fail("top_p", "'top_p' must be in (0, 1]");
  }
  int64_t top_k = 0;
  if (!f.Integer("top_k", &top_k, -1, kInt32Max)) return false;
  p.top_k = top_k < 0 ? 0 : static_cast<int32_t>(top_k);  // vLLM's -1: no cut
  if (const Json* seed = f.Get("seed")) {
    if (seed->is_number_unsigned()) {
      p.seed = seed->get<uint64_t>();
    } else {
      int64_t v = 0;
      if (!f.Integer("seed", &v, INT64_MIN, INT64_MAX)) return false;
      p.seed = static_cast<uint64_t>(v);
    }
  }

  // Stopping.
  int64_t max_tokens = 0;
  if (!f.Integer("max_tokens", &max_tokens, 1, INT64_MAX)) return false;
  if (chat && f.Has("max_completion_tokens")) {
    out->max_tokens_param = "max_completion_tokens";
    if (!f.Integer("max_completion_tokens", &max_tokens, 1, INT64_MAX)) return false;
  }
  p.max_tokens = static_cast<uint64_t>(max_tokens);
  int64_t min_tokens = 0;
  if (!f.Integer("min_tokens", &min_tokens, 0, INT64_MAX)) return false;
  p.min_tokens = static_cast<uint64_t>(min_tokens);
  if (!f.Bool("ignore_eos", &p.ignore_eos)) return false;
  if (const Json* stop = f.Get("stop")) {
    if (stop->is_string()) {
      p.stop.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (const Json& s : *stop) {
        if (!s.is_string()) return f.Fail("stop", "'stop' must be a string or an array of strings");
        p.stop.push_back(s.get<std::string>());
      }
    } else {
      return f.WrongType("stop", "a string or an array of strings", *stop);
    }
  }
  if (const Json* ids = f.Get("stop_token_ids")) {
    if (!ids->is_array()) return f.WrongType("stop_token_ids", "an array", *ids);
    for (const Json& id : *ids) {
      int64_t v = 0;
      if (!f.IntegerValue(id, "stop_token_ids", &v, INT32_MIN, INT32_MAX)) return false;
      p.stop_token_ids.push_back(static_cast<int32_t>(v));
    }
  }

  // Logprobs: chat has logprobs (bool) + top_logprobs; completions has logprobs (the count).
  if (chat) {
    if (!f.Bool("logprobs", &out->logprobs)) return false;
    int64_t top = 0;
    if (!f.Integer("top_logprobs", &top, 0, 20)) return false;
    if (f.Has("top_logprobs") && !out->logprobs) {
      return f.Fail("top_logprobs", "'top_logprobs' needs \"logprobs\": true");
    }
    out->top_logprobs = static_cast<int32_t>(top);
  } else if (f.Has("logprobs")) {
    int64_t top = 0;
    if (!f.Integer("logprobs", &top, 0, 20)) return false;
    out->logprobs = true;
    out->top_logprobs = static_cast<int32_t>(top);
  }
  if (out->logprobs) p.logprobs_top_n = static_cast<uint32_t>(out->top_logprobs);

  int64_t priority = 0;
  if (!f.Integer("priority", &priority, INT32_MIN, INT32_MAX)) return false;
  p.priority = static_cast<int32_t>(priority);
  const Json* sluice = nullptr;
  if (!f.Object("sluice", &sluice)) return false;
  if (sluice != nullptr && !ParseBudget(*sluice, out, error)) return false;
  return true;
}

Json UsageJson(const engine::UsageStats& u, const Json& budget) {
  Json report = {{"branches_skipped", u.branches_skipped},
                 {"branches_total", u.branches_total},
                 {"mean_experts_per_token", u.mean_experts_per_token()},
                 {"attention_heads_skipped", u.attention_heads_skipped},
                 {"attention_heads_total", u.attention_heads_total},
                 {"layers_skipped", u.layers_skipped}};
  Json sluice = {{"executed_flops", u.executed_flops},
                 {"dense_flops", u.dense_flops},
                 {"preemptions", u.preemptions},
                 {"budget", budget},
                 {"budget_report", std::move(report)}};
  return Json{{"prompt_tokens", u.prompt_tokens},
              {"completion_tokens", u.completion_tokens},
              {"total_tokens", u.prompt_tokens + u.completion_tokens},
              {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens}}},
              {"sluice", std::move(sluice)}};
}

namespace {
double FiniteLogprob(float v) { return std::isfinite(v) ? static_cast<double>(v) : -9999.0; }

Json Bytes(const std::string& text) {
  Json bytes = Json::array();
  for (unsigned char c : text) bytes.push_back(static_cast<int>(c));
  return bytes;
}
}  // namespace

std::string LogprobsWriter::TokenText(int32_t id) const {
  if (tokenizer_ == nullptr) return absl::StrCat("token_id:", id);
  const int32_t one[] = {id};
  auto text = tokenizer_->Decode(one, /*skip_special_tokens=*/false);
  return text.ok() ? *std::move(text) : absl::StrCat("token_id:", id);
}

Json LogprobsWriter::Chat(const std::vector<engine::TokenLogprob>& logprobs) const {
  Json content = Json::array();
  for (const auto& lp : logprobs) {
    const std::string token = TokenText(lp.token_id);
    Json top = Json::array();
    for (const auto& [id, value] : lp.top) {
      const std::string alt = TokenText(id);
      top.push_back({{"token", alt}, {"logprob", FiniteLogprob(value)}, {"bytes", Bytes(alt)}});
    }
    content.push_back(
        {{"token", token}, {"logprob", FiniteLogprob(lp.logprob)}, {"bytes", Bytes(token)}, {"top_logprobs", std::move(top)}});
  }
  return Json{{"content", std::move(content)}};
}

Json LogprobsWriter::Completion(const std::vector<engine::TokenLogprob>& logprobs) {
  Json tokens = Json::array();
  Json token_logprobs = Json::array();
  Json top_logprobs = Json::array();
  Json offsets = Json::array();
  for (const auto& lp : logprobs) {
    const std::string token = TokenText(lp.token_id);
    tokens.push_back(token);
    token_logprobs.push_back(FiniteLogprob(lp.logprob));
    Json top = Json::object();
    for (const auto& [id, value] : lp.top) top[TokenText(id)] = FiniteLogprob(value);
    top_logprobs.push_back(std::move(top));
    offsets.push_back(text_offset_);
    text_offset_ += static_cast<int64_t>(token.size());
  }
  return Json{{"tokens", std::move(tokens)},
              {"token_logprobs", std::move(token_logprobs)},
              {"top_logprobs", std::move(top_logprobs)},
              {"text_offset", std::move(offsets)}};
}

const char* FinishReasonName(engine::FinishReason reason) {
  return reason == engine::FinishReason::kLength ? "length" : "stop";
}

}  // namespace sluice::server::openai
