// The OpenAI wire format of the HTTP server: request bodies of /v1/chat/completions and
// /v1/completions into GenerationParams (every field type-checked, nothing silently
// reinterpreted), the error shape {"error": {"message", "type", "param", "code"}} with the
// HTTP status of each absl/gRPC code, and the JSON of usage and logprobs. No HTTP library
// here: the fuzz target (tests/fuzz/openai_request_fuzzer.cc) drives it directly.
#ifndef SLUICE_SERVER_HTTP_OPENAI_H_
#define SLUICE_SERVER_HTTP_OPENAI_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "engine/request.h"
#include "engine/tokenizer/tokenizer.h"
#include "server/generation_call.h"

namespace sluice::server::openai {

using Json = nlohmann::ordered_json;

enum class Endpoint { kChat, kCompletions };

struct ApiError {
  int http_status = 400;
  std::string type = "invalid_request_error";
  std::string message;
  std::string param;  // empty: null
  std::string code;   // empty: null
};

// {"error": {...}} as text.
std::string ErrorBody(const ApiError& error);

// The HTTP status and error of a status from the shared path (validation, admission, the
// engine's final status). The message's leading proto field name (e.g. "stopping.max_tokens")
// becomes the OpenAI parameter (max_tokens), which is also `param`.
ApiError ErrorFromStatus(const absl::Status& status, Endpoint endpoint);

// An HTTP status for an absl code: INVALID_ARGUMENT / FAILED_PRECONDITION / OUT_OF_RANGE
// 400, UNAUTHENTICATED 401, PERMISSION_DENIED 403, NOT_FOUND 404, RESOURCE_EXHAUSTED 429,
// CANCELLED 499, UNIMPLEMENTED 501, UNAVAILABLE 503, DEADLINE_EXCEEDED 504, else 500.
int HttpStatusOf(absl::StatusCode code);

struct ParsedRequest {
  Endpoint endpoint = Endpoint::kChat;
  GenerationParams params;
  std::string model;  // empty: not given (the served model)
  bool stream = false;
  bool include_usage = false;
  // vLLM's stream_options.continuous_usage_stats: every chunk carries the usage so far, and a
  // step's chunk goes out even when its text is held back (so a client can count tokens).
  bool continuous_usage = false;
  bool logprobs = false;  // return logprobs (top_logprobs alternatives each)
  int32_t top_logprobs = 0;
  bool has_tools = false;            // tools offered and tool_choice is not "none"
  bool thinking_disabled = false;    // chat_template_kwargs.enable_thinking == false
  std::string max_tokens_param = "max_tokens";  // the name the client used, for errors
  Json budget = Json::object();      // the sluice.budget object as sent, echoed in usage
};

// Parses and type-checks a request body. False with *error set on any problem (malformed
// JSON, a wrong type, a value OpenAI's API allows that sluice does not serve, like n > 1).
bool ParseRequest(std::string_view body, Endpoint endpoint, ParsedRequest* out, ApiError* error);

// usage: prompt/completion/total tokens, prompt_tokens_details.cached_tokens, and the
// sluice extension: executed and dense FLOPs, the budget as requested and what it skipped.
Json UsageJson(const engine::UsageStats& usage, const Json& budget);

// Logprobs of generated tokens. Token text is each id decoded alone (special tokens kept),
// as vLLM reports it; -inf becomes -9999.0 (JSON has no infinity).
class LogprobsWriter {
 public:
  explicit LogprobsWriter(const tokenizer::Tokenizer* tokenizer) : tokenizer_(tokenizer) {}
  // chat: {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}, ...]}
  Json Chat(const std::vector<engine::TokenLogprob>& logprobs) const;
  // completions: {"tokens", "token_logprobs", "top_logprobs", "text_offset"}; text_offset
  // continues from earlier calls on this writer.
  Json Completion(const std::vector<engine::TokenLogprob>& logprobs);

 private:
  std::string TokenText(int32_t id) const;
  const tokenizer::Tokenizer* tokenizer_;
  int64_t text_offset_ = 0;
};

// finish_reason for an engine reason: "length" or "stop".
const char* FinishReasonName(engine::FinishReason reason);

}  // namespace sluice::server::openai

#endif  // SLUICE_SERVER_HTTP_OPENAI_H_
