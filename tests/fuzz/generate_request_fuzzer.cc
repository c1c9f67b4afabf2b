// Fuzz target: arbitrary bytes as a serialized sluice.v1.GenerateRequest, through the
// server's translation (server::TranslateRequest) and the engine's own validation
// (Engine::Validate, what Submit checks before queueing), against two loaded models:
//   - deploy/models/sluice-tiny: dense Llama with a tokenizer, so text input, stop
//     strings and add_special_tokens take the tokenizer path; given a small ChatML
//     template here (it ships none), so chat `messages` are rendered and tokenized;
//   - tests/data/models/qwen3_next_gateskip_f32: hybrid MoE with gated attention and
//     GateSkip residual gates and no tokenizer, so every budget control is supported
//     and text or chat input must fail cleanly.
//
// Properties:
//  - translation and validation return a status for any message; they never crash,
//    throw or hit undefined behaviour, and reject only with INVALID_ARGUMENT,
//    FAILED_PRECONDITION or UNIMPLEMENTED plus a message;
//  - translation is faithful: token ids, limits, logprobs and the request id arrive as
//    sent; unset top_p / repetition_penalty become 1;
//  - whatever the engine accepts is what the scheduler and sampler assume without
//    re-checking: a non-empty prompt of in-vocabulary ids that leaves room in the
//    context for max_tokens, in-vocabulary stop ids, finite in-range sampling options,
//    logprobs top_n <= 20 and a budget the model supports; ResolveBudget then marks
//    only real layers, and one Sampler::Sample step over the model's vocabulary picks
//    an in-vocabulary token.
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#if __has_include(<google/protobuf/stubs/logging.h>)
#include <google/protobuf/stubs/logging.h>
#endif

#include "engine/engine.h"
#ifdef SLUICE_HAVE_CHAT_TEMPLATE
#include "engine/chat_template/chat_template.h"
#endif
#include "engine/model/forward_batch.h"
#include "engine/sampling/sampler.h"
#include "engine/tokenizer/tokenizer.h"
#include "server/generation_service.h"
#include "sluice/v1/generation.pb.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

using sluice::engine::Engine;
using sluice::engine::EngineOptions;
using sluice::engine::GenerationRequest;
using sluice::server::ServingModel;

struct Model {
  ServingModel serving;
  int64_t vocab_size = 0;
  int64_t num_layers = 0;
  int64_t experts_per_token = 0;
};

#ifdef SLUICE_HAVE_CHAT_TEMPLATE
// ChatML with tools, tool calls, reasoning and an enable_thinking switch: what chat
// templates use messages for, so that every field of a ChatMessage reaches the output.
constexpr char kChatTemplate[] =
    "{%- if tools %}{{- '<|im_start|>system\\n# Tools\\n' }}{%- for tool in tools %}"
    "{{- tool | tojson }}{{- '\\n' }}{%- endfor %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.reasoning_content is defined and message.reasoning_content %}"
    "{{- '<think>' + message.reasoning_content + '</think>' }}{%- endif %}"
    "{%- if message.content is string %}{{- message.content }}{%- endif %}"
    "{%- if message.tool_calls is defined and message.tool_calls %}{%- for call in message.tool_calls %}"
    "{{- '\\n<tool_call>\\n' + (call.function | tojson) + '\\n</tool_call>' }}{%- endfor %}{%- endif %}"
    "{%- if message.role == 'tool' and message.tool_call_id is defined %}{{- ' (' + message.tool_call_id + ')' }}"
    "{%- endif %}{{- '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and not enable_thinking %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}";
#endif

// How deep the inputs get; printed at exit when SLUICE_FUZZ_STATS is set.
struct Stats {
  size_t inputs = 0, parsed = 0, translated[2] = {0, 0}, accepted[2] = {0, 0};
} g_stats;

void Load(const std::string& dir, bool with_tokenizer, Model* model) {
  ServingModel& m = model->serving;
  m.model_dir = dir;
  EngineOptions o;
  o.model_dir = dir;
  o.threads = 1;
  o.max_num_seqs = 1;
  o.max_num_batched_tokens = 64;
  o.max_queue = 1;
  o.kv_cache_memory = 16 << 20;  // room for one full-context sequence of either model
  auto engine = Engine::Create(o);
  if (!engine.ok()) {
    std::fprintf(stderr, "cannot load %s: %s\n", dir.c_str(), engine.status().ToString().c_str());
    std::abort();
  }
  m.engine = *std::move(engine);
  if (with_tokenizer) {
    auto tok = sluice::tokenizer::Tokenizer::LoadFromDirectory(dir);
    if (!tok.ok()) {
      std::fprintf(stderr, "cannot load the tokenizer of %s: %s\n", dir.c_str(),
                   tok.status().ToString().c_str());
      std::abort();
    }
    m.tokenizer = *std::move(tok);
#ifdef SLUICE_HAVE_CHAT_TEMPLATE
    auto chat = sluice::chat::ChatTemplate::FromSource(kChatTemplate, "", "<|endoftext|>");
    if (!chat.ok()) {
      std::fprintf(stderr, "the fuzz chat template does not load: %s\n", chat.status().ToString().c_str());
      std::abort();
    }
    m.chat_template = *std::move(chat);
#endif
  }
  const auto& c = m.engine->model().config();
  model->vocab_size = c.vocab_size;
  model->num_layers = c.num_layers;
  model->experts_per_token = c.moe.experts_per_token;
}

// Loaded on first use and never destroyed; the engine threads (idle: nothing is
// submitted) are stopped at exit so that none runs while the process tears down.
std::vector<Model>& Models() {
  static std::vector<Model>* const models = [] {
    auto* v = new std::vector<Model>(2);
    Load(SLUICE_FUZZ_TINY_MODEL_DIR, /*with_tokenizer=*/true, &(*v)[0]);
    Load(SLUICE_FUZZ_MOE_MODEL_DIR, /*with_tokenizer=*/false, &(*v)[1]);
#if __has_include(<google/protobuf/stubs/logging.h>)
    // Invalid UTF-8 in a string field fails the parse, and protobuf logs each one.
    static google::protobuf::LogSilencer silencer;
#endif
    std::atexit([] {
      for (Model& m : Models()) m.serving.engine->Shutdown();
      if (std::getenv("SLUICE_FUZZ_STATS") != nullptr) {
        std::fprintf(stderr, "inputs %zu, parsed %zu; per model: translated %zu / %zu, accepted %zu / %zu\n",
                     g_stats.inputs, g_stats.parsed, g_stats.translated[0], g_stats.translated[1],
                     g_stats.accepted[0], g_stats.accepted[1]);
      }
    });
    return v;
  }();
  return *models;
}

bool IsRejection(absl::StatusCode code) {
  return code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kFailedPrecondition ||
         code == absl::StatusCode::kUnimplemented;
}

// A chat template render may also hit its limits (output size, steps, nesting).
bool IsTranslationRejection(const sluice::v1::GenerateRequest& proto, absl::StatusCode code) {
  return IsRejection(code) ||
         (code == absl::StatusCode::kResourceExhausted && !proto.has_text() && !proto.has_tokens());
}

void CheckTranslation(const sluice::v1::GenerateRequest& proto, const GenerationRequest& r,
                      const Model& m) {
  if (proto.has_tokens()) {
    SLUICE_FUZZ_CHECK(r.prompt.size() == static_cast<size_t>(proto.tokens().ids_size()));
    for (int i = 0; i < proto.tokens().ids_size(); ++i) SLUICE_FUZZ_CHECK(r.prompt[i] == proto.tokens().ids(i));
  } else {  // text or chat messages: tokenized, so only with a tokenizer
    SLUICE_FUZZ_CHECK(m.serving.tokenizer != nullptr);
    for (int32_t id : r.prompt) SLUICE_FUZZ_CHECK(id >= 0 && id < m.serving.tokenizer->vocab_size());
  }
  const auto& s = proto.sampling();
  SLUICE_FUZZ_CHECK(r.sampling.top_k == s.top_k());
  SLUICE_FUZZ_CHECK(s.top_p() == 0.f ? r.sampling.top_p == 1.f
                                     : std::bit_cast<uint32_t>(r.sampling.top_p) ==
                                           std::bit_cast<uint32_t>(s.top_p()));
  SLUICE_FUZZ_CHECK(s.repetition_penalty() != 0.f || r.sampling.repetition_penalty == 1.f);
  if (s.has_seed()) SLUICE_FUZZ_CHECK(r.sampling.seed == s.seed());
  const auto& st = proto.stopping();
  SLUICE_FUZZ_CHECK(r.stopping.max_tokens >= 0 && static_cast<uint32_t>(r.stopping.max_tokens) == st.max_tokens());
  SLUICE_FUZZ_CHECK(r.stopping.min_tokens >= 0 && static_cast<uint32_t>(r.stopping.min_tokens) == st.min_tokens());
  SLUICE_FUZZ_CHECK(r.stopping.stop_token_ids.size() == static_cast<size_t>(st.stop_token_ids_size()));
  SLUICE_FUZZ_CHECK(r.stopping.ignore_eos == st.ignore_eos());
  SLUICE_FUZZ_CHECK(r.budget.skip_layers.size() == static_cast<size_t>(proto.budget().skip_layers_size()));
  SLUICE_FUZZ_CHECK(proto.has_logprobs() ? r.logprobs_top_n >= 0 && r.logprobs_top_n <= 20
                                         : r.logprobs_top_n == -1);
  SLUICE_FUZZ_CHECK(r.priority == proto.priority());
  SLUICE_FUZZ_CHECK(r.request_id == proto.request_id());
}

void CheckAccepted(const GenerationRequest& r, const Model& m) {
  const Engine& engine = *m.serving.engine;
  const int64_t max_len = engine.max_model_len();
  SLUICE_FUZZ_CHECK(!r.prompt.empty());
  for (int32_t id : r.prompt) SLUICE_FUZZ_CHECK(id >= 0 && id < m.vocab_size);
  const int64_t prompt_len = static_cast<int64_t>(r.prompt.size());
  SLUICE_FUZZ_CHECK(prompt_len < max_len);
  SLUICE_FUZZ_CHECK(r.stopping.max_tokens >= 0 && r.stopping.min_tokens >= 0);
  SLUICE_FUZZ_CHECK(prompt_len + r.stopping.max_tokens <= max_len);
  for (int32_t id : r.stopping.stop_token_ids) SLUICE_FUZZ_CHECK(id >= 0 && id < m.vocab_size);
  const auto& s = r.sampling;
  SLUICE_FUZZ_CHECK(std::isfinite(s.temperature) && s.temperature >= 0);
  SLUICE_FUZZ_CHECK(s.top_k >= 0 && s.top_p > 0 && s.top_p <= 1 && s.min_p >= 0 && s.min_p < 1);
  SLUICE_FUZZ_CHECK(s.repetition_penalty > 0 && std::isfinite(s.repetition_penalty));
  SLUICE_FUZZ_CHECK(std::abs(s.presence_penalty) <= 2 && std::abs(s.frequency_penalty) <= 2);
  SLUICE_FUZZ_CHECK(r.logprobs_top_n >= -1 && r.logprobs_top_n <= 20);
  const auto& b = r.budget;
  SLUICE_FUZZ_CHECK(b.skip_ratio >= 0 && b.skip_ratio <= 0.9f);
  SLUICE_FUZZ_CHECK(b.experts_per_token >= 0 && b.experts_per_token <= m.experts_per_token);
  SLUICE_FUZZ_CHECK(b.attention_gate_floor >= 0 && b.attention_gate_floor < 1);
  for (const auto& span : b.skip_layers) {
    SLUICE_FUZZ_CHECK(span.first >= 0 && span.first <= span.last && span.last < m.num_layers);
  }

  // What Scheduler::Enqueue does next with the budget.
  const sluice::engine::SequenceBudget resolved = sluice::engine::ResolveBudget(b, m.num_layers);
  SLUICE_FUZZ_CHECK(resolved.skip_layer.empty() ||
                    static_cast<int64_t>(resolved.skip_layer.size()) == m.num_layers);
  SLUICE_FUZZ_CHECK(resolved.num_skipped_layers >= 0 && resolved.num_skipped_layers <= m.num_layers);
  SLUICE_FUZZ_CHECK(resolved.num_skipped_layers == 0 || !b.skip_layers.empty());

  // One sampling step over the model's vocabulary, with the prompt as history and the
  // stop ids banned, as the scheduler calls it before min_tokens are reached.
  std::vector<float> logits(static_cast<size_t>(m.vocab_size));
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = std::sin(0.37f * static_cast<float>(i)) * 4.f;
  sluice::engine::Sampler sampler(s, r.logprobs_top_n);
  sluice::engine::TokenLogprob logprob;
  const int32_t token = sampler.Sample(absl::MakeSpan(logits), r.prompt, /*num_generated=*/0,
                                       r.stopping.stop_token_ids, /*step=*/0, &logprob);
  SLUICE_FUZZ_CHECK(token >= 0 && token < m.vocab_size);
  if (r.logprobs_top_n >= 0) {
    SLUICE_FUZZ_CHECK(logprob.token_id == token && logprob.logprob <= 0.f);
    SLUICE_FUZZ_CHECK(static_cast<int32_t>(logprob.top.size()) == r.logprobs_top_n);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<Model>& models = Models();
  ++g_stats.inputs;
  sluice::v1::GenerateRequest proto;
  if (!proto.ParseFromArray(data, static_cast<int>(size))) return 0;
  ++g_stats.parsed;
  for (size_t i = 0; i < models.size(); ++i) {
    const Model& m = models[i];
    auto request = sluice::server::TranslateRequest(proto, m.serving);
    if (!request.ok()) {
      SLUICE_FUZZ_CHECK(IsTranslationRejection(proto, request.status().code()));
      SLUICE_FUZZ_CHECK(!request.status().message().empty());
      continue;
    }
    ++g_stats.translated[i];
    CheckTranslation(proto, *request, m);
    const absl::Status valid = m.serving.engine->Validate(*request);
    if (!valid.ok()) {
      SLUICE_FUZZ_CHECK(IsRejection(valid.code()));
      SLUICE_FUZZ_CHECK(!valid.message().empty());
      continue;
    }
    ++g_stats.accepted[i];
    CheckAccepted(*request, m);
  }
  return 0;
}
