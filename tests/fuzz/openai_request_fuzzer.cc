// Fuzz target: arbitrary bytes as the body of POST /v1/completions and of POST
// /v1/chat/completions, through the HTTP server's JSON translation
// (server::openai::ParseRequest), the shared validation and chat templating
// (server::TranslateParams, with the Qwen3 chat template when ../shared has it, else a
// ChatML one) and the engine's own checks (Engine::Validate), against the demo model
// deploy/models/sluice-tiny (tokenizer included). The same bytes, taken as model output,
// also go through the Qwen reasoning / tool-call splitter.
//
// Properties:
//  - nothing crashes, throws or hits undefined behaviour, for any body;
//  - a refused body is a 400 with a message, and its error body is the OpenAI shape;
//  - translation is faithful: the prompt text, max_tokens (or max_completion_tokens),
//    temperature, seed, stop strings and stream flags arrive as sent; n is 1;
//  - what translation or the engine refuses is a client error (400 or 501) naming a
//    cause; a messages input renders to a prompt whose tokens are the request's prompt;
//  - the usage JSON (which echoes the sent budget) serializes;
//  - the splitter gives the same reasoning, content and tool calls whether the text comes
//    whole or in three pieces cut at points the input decides.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/chat_template/chat_template.h"
#include "engine/chat_template/qwen_output_parser.h"
#include "engine/engine.h"
#include "engine/tokenizer/tokenizer.h"
#include "server/generation_call.h"
#include "server/http_openai.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

using sluice::server::GenerationParams;
using sluice::server::ServingModel;
using sluice::server::openai::ApiError;
using sluice::server::openai::Endpoint;
using sluice::server::openai::Json;
using sluice::server::openai::ParsedRequest;

// How far inputs got, printed at exit: a corpus that never reaches translation tests little.
struct {
  uint64_t inputs = 0, parsed[2] = {0, 0}, translated[2] = {0, 0}, accepted[2] = {0, 0}, tool_calls = 0;
} g_stats;

const char kChatMl[] =
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

std::string ChatTemplateSource() {
  std::ifstream in(SLUICE_FUZZ_QWEN3_TOKENIZER_CONFIG);
  if (!in) return kChatMl;
  std::stringstream text;
  text << in.rdbuf();
  Json config = Json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (!config.is_object() || !config.contains("chat_template") || !config["chat_template"].is_string()) {
    return kChatMl;
  }
  return config["chat_template"].get<std::string>();
}

ServingModel& Model() {
  static ServingModel* const model = [] {
    auto* m = new ServingModel();
    m->model_dir = SLUICE_FUZZ_TINY_MODEL_DIR;
    sluice::engine::EngineOptions o;
    o.model_dir = m->model_dir;
    o.threads = 1;
    o.max_num_seqs = 1;
    o.max_num_batched_tokens = 64;
    o.max_queue = 1;
    o.kv_cache_memory = 16 << 20;
    auto engine = sluice::engine::Engine::Create(o);
    if (!engine.ok()) {
      std::fprintf(stderr, "cannot load %s: %s\n", o.model_dir.c_str(), engine.status().ToString().c_str());
      std::abort();
    }
    m->engine = *std::move(engine);
    auto tok = sluice::tokenizer::Tokenizer::LoadFromDirectory(m->model_dir);
    if (!tok.ok()) std::abort();
    m->tokenizer = *std::move(tok);
    auto chat = sluice::chat::ChatTemplate::FromSource(ChatTemplateSource(), "", "<|endoftext|>");
    if (!chat.ok()) {
      std::fprintf(stderr, "cannot load the chat template: %s\n", chat.status().ToString().c_str());
      std::abort();
    }
    m->chat_template = *std::move(chat);
    std::atexit([] {
      Model().engine->Shutdown();
      std::fprintf(stderr,
                   "openai_request: %llu inputs; parsed %llu completions / %llu chat; translated %llu / %llu; "
                   "accepted by the engine %llu / %llu; tool calls split out %llu\n",
                   (unsigned long long)g_stats.inputs, (unsigned long long)g_stats.parsed[0],
                   (unsigned long long)g_stats.parsed[1], (unsigned long long)g_stats.translated[0],
                   (unsigned long long)g_stats.translated[1], (unsigned long long)g_stats.accepted[0],
                   (unsigned long long)g_stats.accepted[1], (unsigned long long)g_stats.tool_calls);
    });
    return m;
  }();
  return *model;
}

bool IsClientError(const absl::Status& s) {
  const int http = sluice::server::openai::HttpStatusOf(s.code());
  return (http == 400 || http == 501) && !s.message().empty();
}

void CheckErrorBody(const ApiError& e) {
  SLUICE_FUZZ_CHECK(!e.message.empty());
  const Json body = Json::parse(sluice::server::openai::ErrorBody(e), nullptr, /*allow_exceptions=*/false);
  SLUICE_FUZZ_CHECK(body.is_object() && body.size() == 1 && body.contains("error"));
  const Json& err = body["error"];
  SLUICE_FUZZ_CHECK(err.size() == 4 && err["message"].is_string() && err["type"].is_string());
  SLUICE_FUZZ_CHECK(err["param"].is_null() || err["param"].is_string());
  SLUICE_FUZZ_CHECK(err["code"].is_null() || err["code"].is_string());
}

// The fields whose translation is checked against the body itself.
void CheckFaithful(const std::string& body, Endpoint endpoint, const ParsedRequest& r) {
  const Json doc = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  SLUICE_FUZZ_CHECK(doc.is_object());
  const GenerationParams& p = r.params;
  auto has = [&](const char* k) { return doc.contains(k) && !doc[k].is_null(); };
  if (has("n")) SLUICE_FUZZ_CHECK(doc["n"] == 1);
  const char* max_key = endpoint == Endpoint::kChat && has("max_completion_tokens") ? "max_completion_tokens"
                                                                                    : "max_tokens";
  if (has(max_key)) SLUICE_FUZZ_CHECK(static_cast<double>(p.max_tokens) == doc[max_key].get<double>());
  if (!has("max_tokens") && !(endpoint == Endpoint::kChat && has("max_completion_tokens"))) {
    SLUICE_FUZZ_CHECK(p.max_tokens == 0);
  }
  if (has("temperature")) {
    SLUICE_FUZZ_CHECK(p.temperature == static_cast<float>(doc["temperature"].get<double>()));
  }
  SLUICE_FUZZ_CHECK(p.seed.has_value() == has("seed"));
  if (has("stop") && doc["stop"].is_string()) SLUICE_FUZZ_CHECK(p.stop.size() == 1 && p.stop[0] == doc["stop"]);
  if (has("stop") && doc["stop"].is_array()) SLUICE_FUZZ_CHECK(p.stop.size() == doc["stop"].size());
  SLUICE_FUZZ_CHECK(r.stream == (has("stream") && doc["stream"].get<bool>()));
  if (r.include_usage) SLUICE_FUZZ_CHECK(r.stream);
  SLUICE_FUZZ_CHECK(!r.logprobs || p.logprobs_top_n.has_value());
  if (p.logprobs_top_n.has_value()) SLUICE_FUZZ_CHECK(*p.logprobs_top_n <= 20);
  if (endpoint == Endpoint::kChat) {
    SLUICE_FUZZ_CHECK(p.input == GenerationParams::Input::kMessages);
    SLUICE_FUZZ_CHECK(p.chat.messages.is_array() && p.chat.messages.size() == doc["messages"].size());
    for (const Json& m : p.chat.messages) SLUICE_FUZZ_CHECK(m["role"].is_string() && m["content"].is_string());
  } else if (doc["prompt"].is_string()) {
    SLUICE_FUZZ_CHECK(p.input == GenerationParams::Input::kText && p.text == doc["prompt"]);
  } else {
    SLUICE_FUZZ_CHECK(p.input == GenerationParams::Input::kText || p.input == GenerationParams::Input::kTokens);
  }
}

void CheckTranslation(const ParsedRequest& r, const ServingModel& model) {
  const int e = r.endpoint == Endpoint::kChat ? 1 : 0;
  std::string prompt;
  auto request = sluice::server::TranslateParams(r.params, model, sluice::server::RequestLimits(), &prompt);
  if (!request.ok()) {
    SLUICE_FUZZ_CHECK(IsClientError(request.status()));
    CheckErrorBody(sluice::server::openai::ErrorFromStatus(request.status(), r.endpoint));
    return;
  }
  ++g_stats.translated[e];
  if (r.params.input == GenerationParams::Input::kMessages) {
    auto ids = model.tokenizer->Encode(prompt, /*add_special_tokens=*/false);
    SLUICE_FUZZ_CHECK(ids.ok() && *ids == request->prompt);
  }
  const absl::Status valid = model.engine->Validate(*request);
  if (!valid.ok()) {
    SLUICE_FUZZ_CHECK(IsClientError(valid));
    CheckErrorBody(sluice::server::openai::ErrorFromStatus(valid, r.endpoint));
    return;
  }
  ++g_stats.accepted[e];
  for (int32_t id : request->prompt) SLUICE_FUZZ_CHECK(id >= 0 && id < model.tokenizer->vocab_size());
  sluice::engine::UsageStats usage;
  usage.prompt_tokens = static_cast<int32_t>(request->prompt.size());
  const std::string text = sluice::server::openai::UsageJson(usage, r.budget)
                               .dump(-1, ' ', false, Json::error_handler_t::replace);
  SLUICE_FUZZ_CHECK(!text.empty());
}

struct Split {
  std::string reasoning, content, calls;
  int32_t invalid = 0;
  bool operator==(const Split& o) const {
    return reasoning == o.reasoning && content == o.content && calls == o.calls && invalid == o.invalid;
  }
};

Split RunParser(const std::vector<std::string_view>& pieces, sluice::chat::QwenOutputParser::Start start) {
  sluice::chat::QwenOutputParser parser({start, /*tool_calls=*/true});
  Split out;
  auto add = [&](const sluice::chat::ParsedDelta& d) {
    out.reasoning += d.reasoning;
    out.content += d.content;
    for (const auto& c : d.tool_calls) {
      ++g_stats.tool_calls;
      out.calls += std::to_string(c.index) + c.name + "\x1f" + c.arguments + "\x1e";
    }
  };
  for (std::string_view p : pieces) add(parser.Push(p));
  add(parser.Finish());
  out.invalid = parser.invalid_tool_calls();
  return out;
}

void CheckParser(std::string_view text) {
  size_t h = 1469598103934665603ull;
  for (char c : text) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  const size_t a = text.empty() ? 0 : h % (text.size() + 1);
  const size_t b = text.empty() ? 0 : a + (h >> 32) % (text.size() - a + 1);
  using Start = sluice::chat::QwenOutputParser::Start;
  for (Start start : {Start::kReasoning, Start::kDetect, Start::kContent}) {
    const Split whole = RunParser({text}, start);
    const Split cut = RunParser({text.substr(0, a), text.substr(a, b - a), text.substr(b)}, start);
    SLUICE_FUZZ_CHECK(whole == cut);
    // What is not a tag or a parsed call is kept: nothing grows out of nowhere.
    SLUICE_FUZZ_CHECK(whole.reasoning.size() + whole.content.size() <= text.size());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const ServingModel& model = Model();
  const std::string body(reinterpret_cast<const char*>(data), size);
  ++g_stats.inputs;
  for (Endpoint endpoint : {Endpoint::kCompletions, Endpoint::kChat}) {
    ParsedRequest r;
    ApiError error;
    if (!sluice::server::openai::ParseRequest(body, endpoint, &r, &error)) {
      SLUICE_FUZZ_CHECK(error.http_status == 400);
      CheckErrorBody(error);
      continue;
    }
    ++g_stats.parsed[endpoint == Endpoint::kChat ? 1 : 0];
    CheckFaithful(body, endpoint, r);
    CheckTranslation(r, model);
  }
  CheckParser(body);
  return 0;
}
