#include "server/generation_call.h"

#include <algorithm>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace sluice::server {

using engine::FinishReason;
using engine::RequestChannel;
using engine::RequestEvent;

absl::Status NotReadyError() {
  return absl::UnavailableError("the model is still loading; retry when health is SERVING");
}

absl::Status NormalizeChatMessages(nlohmann::ordered_json* messages, const std::string& field) {
  if (!messages->is_array()) return absl::InvalidArgumentError(absl::StrCat(field, ": must be an array"));
  if (messages->empty()) return absl::InvalidArgumentError(absl::StrCat(field, ": at least one message is needed"));
  for (size_t i = 0; i < messages->size(); ++i) {
    nlohmann::ordered_json& m = (*messages)[i];
    const std::string at = absl::StrCat(field, "[", i, "]");
    if (!m.is_object()) return absl::InvalidArgumentError(absl::StrCat(at, ": must be an object"));
    auto role = m.find("role");
    if (role == m.end() || !role->is_string() || role->get_ref<const std::string&>().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(at, ".role: must be a non-empty string"));
    }
    auto content = m.find("content");
    if (content == m.end() || content->is_null()) {
      // As vLLM: templates test and concatenate content (Qwen3's `'</think>' in
      // message.content`), which null would break for an assistant turn of only tool calls.
      m["content"] = "";
    } else if (content->is_array()) {
      std::string joined;
      for (size_t k = 0; k < content->size(); ++k) {
        const auto& part = (*content)[k];
        const std::string part_at = absl::StrCat(at, ".content[", k, "]");
        if (!part.is_object()) return absl::InvalidArgumentError(absl::StrCat(part_at, ": must be an object"));
        auto type = part.find("type");
        auto text = part.find("text");
        if (type == part.end() || !type->is_string() || *type != "text") {
          return absl::InvalidArgumentError(
              absl::StrCat(part_at, ".type: only \"text\" content parts are supported"));
        }
        if (text == part.end() || !text->is_string()) {
          return absl::InvalidArgumentError(absl::StrCat(part_at, ".text: must be a string"));
        }
        if (k > 0) joined += '\n';
        joined += text->get_ref<const std::string&>();
      }
      *content = joined;
    } else if (!content->is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(at, ".content: must be a string, null or a list of text parts"));
    }
    auto tool_calls = m.find("tool_calls");
    if (tool_calls == m.end()) continue;
    if (tool_calls->is_null()) {
      m.erase(tool_calls);
      continue;
    }
    if (!tool_calls->is_array()) return absl::InvalidArgumentError(absl::StrCat(at, ".tool_calls: must be an array"));
    for (size_t k = 0; k < tool_calls->size(); ++k) {
      auto& call = (*tool_calls)[k];
      const std::string call_at = absl::StrCat(at, ".tool_calls[", k, "]");
      if (!call.is_object()) return absl::InvalidArgumentError(absl::StrCat(call_at, ": must be an object"));
      auto function = call.find("function");
      if (function == call.end() || !function->is_object()) {
        return absl::InvalidArgumentError(absl::StrCat(call_at, ".function: must be an object"));
      }
      auto name = function->find("name");
      if (name == function->end() || !name->is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(call_at, ".function.name: must be a string"));
      }
      auto arguments = function->find("arguments");
      if (arguments == function->end() || arguments->is_null()) {
        (*function)["arguments"] = nlohmann::ordered_json::object();
      } else if (arguments->is_string()) {
        // Templates index into the arguments (Qwen's writes them back as JSON), so pass an
        // object when the text is one; anything else stays text.
        auto parsed = nlohmann::ordered_json::parse(arguments->get_ref<const std::string&>(), nullptr,
                                                    /*allow_exceptions=*/false);
        if (parsed.is_object()) *arguments = std::move(parsed);
      } else if (!arguments->is_object()) {
        return absl::InvalidArgumentError(absl::StrCat(call_at, ".function.arguments: must be JSON text"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> RenderChat(const chat::ChatTemplateInputs& chat, const ServingModel& model) {
  if (model.chat_template == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "input.messages: this model has no chat template (",
        model.chat_template_error.empty() ? std::string("none loaded") : model.chat_template_error,
        "); send a prompt (text or tokens) instead"));
  }
  if (!chat.messages.is_array() || chat.messages.empty()) {
    return absl::InvalidArgumentError("input.messages: at least one message is needed");
  }
  auto rendered = model.chat_template->Render(chat);
  if (!rendered.ok()) {
    return absl::Status(rendered.status().code(),
                        absl::StrCat("input.messages: the chat template: ", rendered.status().message()));
  }
  return rendered;
}

absl::StatusOr<engine::GenerationRequest> TranslateParams(const GenerationParams& p, const ServingModel& model,
                                                          const RequestLimits& limits, std::string* rendered_prompt) {
  engine::GenerationRequest r;
  switch (p.input) {
    case GenerationParams::Input::kText: {
      if (model.tokenizer == nullptr) {
        return absl::FailedPreconditionError(
            "input.text: this model ships no tokenizer.json; send input.tokens instead");
      }
      auto ids = model.tokenizer->Encode(p.text, p.add_special_tokens);
      if (!ids.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("input.text: ", ids.status().message()));
      }
      r.prompt = *std::move(ids);
      break;
    }
    case GenerationParams::Input::kTokens:
      r.prompt = p.tokens;
      break;
    case GenerationParams::Input::kMessages: {
      if (model.tokenizer == nullptr) {
        return absl::FailedPreconditionError("input.messages: this model ships no tokenizer.json");
      }
      auto prompt = RenderChat(p.chat, model);
      if (!prompt.ok()) return prompt.status();
      // The template writes the special tokens itself (as transformers does with
      // apply_chat_template(tokenize=True)).
      auto ids = model.tokenizer->Encode(*prompt, /*add_special_tokens=*/false);
      if (!ids.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("input.messages: ", ids.status().message()));
      }
      r.prompt = *std::move(ids);
      if (rendered_prompt != nullptr) *rendered_prompt = *std::move(prompt);
      break;
    }
    case GenerationParams::Input::kNone:
      return absl::InvalidArgumentError("input: set either text, tokens or messages");
  }
  if (limits.max_prompt_tokens > 0 && static_cast<int64_t>(r.prompt.size()) > limits.max_prompt_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("input: the prompt has ", r.prompt.size(),
                                                   " tokens, over the limit --max_prompt_tokens=",
                                                   limits.max_prompt_tokens));
  }
  r.sampling.temperature = p.temperature;
  r.sampling.top_k = p.top_k;
  r.sampling.top_p = p.top_p == 0.f ? 1.f : p.top_p;
  r.sampling.min_p = p.min_p;
  r.sampling.repetition_penalty = p.repetition_penalty == 0.f ? 1.f : p.repetition_penalty;
  r.sampling.presence_penalty = p.presence_penalty;
  r.sampling.frequency_penalty = p.frequency_penalty;
  if (p.seed.has_value()) {
    r.sampling.seed = *p.seed;
  } else {
    static thread_local std::mt19937_64 rng(std::random_device{}());
    r.sampling.seed = rng();
  }
  if (p.max_tokens > static_cast<uint64_t>(INT32_MAX) || p.min_tokens > static_cast<uint64_t>(INT32_MAX)) {
    return absl::InvalidArgumentError("stopping.max_tokens/min_tokens: too large");
  }
  if (limits.max_output_tokens > 0 && p.max_tokens > static_cast<uint64_t>(limits.max_output_tokens)) {
    return absl::InvalidArgumentError(absl::StrCat("stopping.max_tokens: ", p.max_tokens,
                                                   " is over the limit --max_output_tokens=",
                                                   limits.max_output_tokens));
  }
  if (static_cast<int64_t>(p.stop_token_ids.size()) > limits.max_stop_token_ids) {
    return absl::InvalidArgumentError(absl::StrCat("stopping.stop_token_ids: ", p.stop_token_ids.size(),
                                                   " ids, over the limit of ", limits.max_stop_token_ids));
  }
  r.stopping.max_tokens = static_cast<int32_t>(p.max_tokens);
  r.stopping.min_tokens = static_cast<int32_t>(p.min_tokens);
  r.stopping.stop_token_ids = p.stop_token_ids;
  r.stopping.ignore_eos = p.ignore_eos;
  if (!p.stop.empty() && model.tokenizer == nullptr) {
    return absl::FailedPreconditionError("stopping.stop: stop strings need the model's tokenizer");
  }
  if (static_cast<int64_t>(p.stop.size()) > limits.max_stop_strings) {
    return absl::InvalidArgumentError(absl::StrCat("stopping.stop: ", p.stop.size(),
                                                   " stop strings, over the limit --max_stop_strings=",
                                                   limits.max_stop_strings));
  }
  for (const auto& stop : p.stop) {
    if (stop.empty()) return absl::InvalidArgumentError("stopping.stop: empty stop string");
    if (static_cast<int64_t>(stop.size()) > limits.max_stop_string_bytes) {
      return absl::InvalidArgumentError(absl::StrCat("stopping.stop: a stop string of ", stop.size(),
                                                     " bytes, over the limit --max_stop_string_bytes=",
                                                     limits.max_stop_string_bytes));
    }
  }
  r.budget.skip_ratio = p.skip_ratio;
  r.budget.experts_per_token = static_cast<int32_t>(p.experts_per_token);
  r.budget.attention_gate_floor = p.attention_gate_floor;
  for (const auto& [first, last] : p.skip_layers) {
    r.budget.skip_layers.push_back({static_cast<int32_t>(first), static_cast<int32_t>(std::max(first, last))});
  }
  r.priority = p.priority;
  if (p.logprobs_top_n.has_value()) {
    if (*p.logprobs_top_n > static_cast<uint32_t>(limits.max_logprobs)) {
      return absl::InvalidArgumentError(absl::StrCat("logprobs.top_n: ", *p.logprobs_top_n,
                                                     " is over the limit --max_logprobs=", limits.max_logprobs));
    }
    r.logprobs_top_n = static_cast<int32_t>(*p.logprobs_top_n);
  }
  r.request_id = p.request_id;
  return r;
}

absl::StatusOr<engine::GenerationRequest> GenerationCall::Start(const GenerationParams& params,
                                                                absl::Time deadline, std::string* rendered_prompt) {
  if (model_ == nullptr) {
    Reject(RejectReason::kUnavailable);
    return NotReadyError();
  }
  auto request = TranslateParams(params, *model_, limits_, rendered_prompt);
  if (!request.ok()) {
    Reject(RejectReasonOf(request.status()));
    return request.status();
  }
  request->deadline = deadline;
  deadline_ = deadline;
  text_.emplace(model_->tokenizer.get(), params.stop);
  request_id_ = params.request_id;
  channel_ = std::make_shared<RequestChannel>();
  return request;
}

absl::Status GenerationCall::Submit(engine::GenerationRequest request) {
  const engine::ComputeBudget budget = request.budget;
  absl::Status status = model_->engine->Submit(std::move(request), channel_);
  if (!status.ok()) {
    Reject(RejectReasonOf(status));
  } else if (metrics_ != nullptr) {
    metrics_->RequestAdmitted(budget);
  }
  return status;
}

absl::StatusOr<std::string> GenerationCall::Apply(const RequestEvent& event) {
  if (!event.tokens.empty() && metrics_ != nullptr) {
    // Engine push times, so that a stream's merged writes do not hide the gaps.
    if (last_token_ == absl::InfinitePast()) {
      metrics_->FirstToken(absl::ToDoubleSeconds(event.time - arrival_));
    } else {
      metrics_->InterToken(absl::ToDoubleSeconds(event.time - last_token_));
    }
    last_token_ = event.time;
  }
  if (stopped_by_text_) return std::string();
  auto delta = text_->Push(event.tokens);
  if (!delta.ok()) return delta.status();
  if (text_->stopped()) {
    // The stop string is not part of the output; drop the engine sequence now.
    stopped_by_text_ = true;
    channel_->Cancel();
  }
  return delta;
}

absl::Status GenerationCall::FinalStatus(const RequestEvent& event, FinishReason* reason) const {
  if (stopped_by_text_) {
    *reason = FinishReason::kStopString;
    return absl::OkStatus();
  }
  *reason = event.finish_reason;
  return event.status;
}

std::string GenerationCall::FinishText() { return stopped_by_text_ ? std::string() : text_->Finish(); }

void GenerationCall::RecordFinish(const absl::Status& status, FinishReason reason, const engine::UsageStats& usage) {
  if (metrics_ == nullptr) return;
  // A client whose deadline passes cancels the call itself, often before the engine
  // sees the deadline: that too is a deadline, as the client was told. The slack
  // covers the client's clock running ahead of the server's by the transit time and
  // the grpc-timeout header's rounding (the soak test counted only 145 of 1,223
  // client-side deadlines without it, with 512-token steps).
  constexpr absl::Duration kDeadlineSlack = absl::Milliseconds(250);
  if (status.code() == absl::StatusCode::kDeadlineExceeded ||
      (status.code() == absl::StatusCode::kCancelled && absl::Now() + kDeadlineSlack >= deadline_)) {
    metrics_->RequestTimedOut(usage);
    return;
  }
  FinishedReason label = FinishedReason::kError;
  if (status.ok()) {
    label = reason == FinishReason::kLength ? FinishedReason::kLength : FinishedReason::kStop;
  } else if (status.code() == absl::StatusCode::kCancelled || status.code() == absl::StatusCode::kUnavailable) {
    label = FinishedReason::kAbort;  // the client went away, or the server shut down
  }
  metrics_->RequestFinished(label, usage, absl::ToDoubleSeconds(absl::Now() - arrival_));
}

void GenerationCall::Reject(RejectReason reason) {
  if (metrics_ != nullptr) metrics_->RequestRejected(reason);
}

}  // namespace sluice::server
