// What the gRPC front door (generation_service.cc) and the OpenAI-compatible HTTP one
// (http_server.cc) share, so that both validate, admit, count and finish a request the
// same way:
//   - GenerationParams: a generate request in neither transport's shape; each front door
//     fills it from its own wire format (a proto, a JSON body);
//   - TranslateParams: validation against the limits and translation into the engine's
//     GenerationRequest, chat templating and tokenization included;
//   - GenerationCall: submit, metrics accounting (rejections, admission, TTFT/ITL,
//     finished/timed-out), text deltas with stop strings, and the final status.
// No transport headers here: neither gRPC nor HTTP.
#ifndef SLUICE_SERVER_GENERATION_CALL_H_
#define SLUICE_SERVER_GENERATION_CALL_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/chat_template/chat_template.h"
#include "engine/engine.h"
#include "engine/tokenizer/tokenizer.h"
#include "server/metrics.h"
#include "server/text_stream.h"

namespace sluice::server {

// What the servers serve; filled in once the model has loaded.
struct ServingModel {
  std::unique_ptr<engine::Engine> engine;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;  // null when the model ships none
  std::string model_dir;
  // The model's chat template; null when it ships none (or it failed to load), and then
  // chat_template_error says why, for the error a `messages` request gets.
  std::unique_ptr<chat::ChatTemplate> chat_template;
  std::string chat_template_error;
};

// Per-request limits (flags of the same names; the README's limits table). Each
// violation is INVALID_ARGUMENT naming the limit and the value.
struct RequestLimits {
  int64_t max_prompt_tokens = 0;   // 0: the model's context
  int64_t max_output_tokens = 0;   // stopping.max_tokens; 0: the context
  int32_t max_stop_strings = 16;
  int32_t max_stop_string_bytes = 1024;
  int32_t max_logprobs = 20;       // logprobs.top_n
  int32_t max_stop_token_ids = 64;
};

// A generate request as both front doors describe it. Field meanings and defaults are
// those of sluice.v1.GenerateRequest (proto/sluice/v1/generation.proto); error messages
// name the proto's fields (the HTTP layer renames them to OpenAI's parameters).
struct GenerationParams {
  enum class Input { kNone, kText, kTokens, kMessages };
  Input input = Input::kNone;
  std::string text;                 // kText
  bool add_special_tokens = false;  // kText
  std::vector<int32_t> tokens;      // kTokens
  chat::ChatTemplateInputs chat;    // kMessages: rendered with the model's template

  float temperature = 0.f;
  int32_t top_k = 0;
  float top_p = 0.f;  // 0: 1
  float min_p = 0.f;
  float repetition_penalty = 0.f;  // 0: 1
  float presence_penalty = 0.f;
  float frequency_penalty = 0.f;
  std::optional<uint64_t> seed;  // unset: a random one

  uint64_t max_tokens = 0;  // 0: up to the context
  uint64_t min_tokens = 0;
  std::vector<int32_t> stop_token_ids;
  std::vector<std::string> stop;
  bool ignore_eos = false;

  float skip_ratio = 0.f;
  uint32_t experts_per_token = 0;
  float attention_gate_floor = 0.f;
  std::vector<std::pair<uint32_t, uint32_t>> skip_layers;  // [first, last]; last < first: just first

  int32_t priority = 0;
  std::optional<uint32_t> logprobs_top_n;  // set: logprobs are returned
  std::string request_id;
};

// Validates every field against the limits and the model (chat template, tokenizer) and
// returns the engine request. Errors are INVALID_ARGUMENT / FAILED_PRECONDITION naming the
// field. The engine's own checks (Engine::Validate) run later, in Submit. For a messages
// input, `rendered_prompt` (if given) receives the prompt the template rendered.
absl::StatusOr<engine::GenerationRequest> TranslateParams(const GenerationParams& params,
                                                          const ServingModel& model,
                                                          const RequestLimits& limits,
                                                          std::string* rendered_prompt = nullptr);

// Renders a `messages` input with the model's chat template (the prompt text, before
// tokenization). FAILED_PRECONDITION when the model has no template.
absl::StatusOr<std::string> RenderChat(const chat::ChatTemplateInputs& chat, const ServingModel& model);

// Brings OpenAI-style chat messages into the shape chat templates expect, as vLLM and
// transformers do: each message an object with a string role; content a string, a list of
// {"type": "text", "text": ...} parts (joined with newlines; other part types are
// INVALID_ARGUMENT), or null/absent (an empty string, as vLLM passes it); a tool call's
// JSON-text arguments parsed into an object. `field` names
// the messages in errors ("input.messages").
absl::Status NormalizeChatMessages(nlohmann::ordered_json* messages, const std::string& field);

absl::Status NotReadyError();

// Everything a generate call does with the engine's events, whichever transport carries
// it. Not thread-safe: one consumer drives it.
class GenerationCall {
 public:
  GenerationCall(ServingModel* model, Metrics* metrics, const RequestLimits& limits)
      : model_(model), metrics_(metrics), limits_(limits), arrival_(absl::Now()) {}

  // Validates and translates the request and prepares the channel and text stream. A
  // failure is counted as a rejection.
  absl::StatusOr<engine::GenerationRequest> Start(const GenerationParams& params, absl::Time deadline,
                                                  std::string* rendered_prompt = nullptr);

  std::shared_ptr<engine::RequestChannel>& channel() { return channel_; }

  // Hands the request to the engine; a refusal is counted as a rejection.
  absl::Status Submit(engine::GenerationRequest request);

  // Applies one event (metrics, detokenization, stop strings); returns the text delta.
  absl::StatusOr<std::string> Apply(const engine::RequestEvent& event);

  // The final event's outcome, once the stop-string rule is applied.
  absl::Status FinalStatus(const engine::RequestEvent& event, engine::FinishReason* reason) const;

  // Whatever text was held back, at the end.
  std::string FinishText();

  // Counts the request's end: a deadline is a rejection; anything else that ran is a
  // finished request, with its latencies.
  void RecordFinish(const absl::Status& status, engine::FinishReason reason, const engine::UsageStats& usage);

  // Counts a refusal that happened outside Start/Submit (e.g. a transport-level check).
  void Reject(RejectReason reason);

  const std::string& request_id() const { return request_id_; }
  bool stopped_by_text() const { return stopped_by_text_; }
  absl::Time arrival() const { return arrival_; }

 private:
  ServingModel* model_;
  Metrics* metrics_;
  const RequestLimits& limits_;
  const absl::Time arrival_;
  absl::Time deadline_ = absl::InfiniteFuture();
  absl::Time last_token_ = absl::InfinitePast();
  std::optional<TextStream> text_;
  std::shared_ptr<engine::RequestChannel> channel_;
  std::string request_id_;
  bool stopped_by_text_ = false;
};

}  // namespace sluice::server

#endif  // SLUICE_SERVER_GENERATION_CALL_H_
