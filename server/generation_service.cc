#include "server/generation_service.h"

#include <mutex>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/status_map.h"
#include "server/text_stream.h"

namespace sluice::server {
namespace {

using engine::FinishReason;
using engine::RequestChannel;
using engine::RequestEvent;

v1::FinishReason ToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength: return v1::FINISH_REASON_LENGTH;
    case FinishReason::kStopToken: return v1::FINISH_REASON_STOP_TOKEN;
    case FinishReason::kStopString: return v1::FINISH_REASON_STOP_STRING;
    case FinishReason::kNone: break;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}


void FillUsage(const engine::UsageStats& u, v1::Usage* out) {
  out->set_prompt_tokens(u.prompt_tokens);
  out->set_completion_tokens(u.completion_tokens);
  out->set_cached_tokens(u.cached_tokens);
  out->set_dense_flops(u.dense_flops);
  out->set_executed_flops(u.executed_flops);
  out->set_preemptions(u.preemptions);
  v1::BudgetReport* report = out->mutable_budget();
  report->set_branches_skipped(u.branches_skipped);
  report->set_branches_total(u.branches_total);
  report->set_mean_experts_per_token(u.mean_experts_per_token());
  report->set_attention_heads_skipped(u.attention_heads_skipped);
  report->set_attention_heads_total(u.attention_heads_total);
  report->set_layers_skipped(u.layers_skipped);
}

void FillLogprobs(const std::vector<engine::TokenLogprob>& in,
                  google::protobuf::RepeatedPtrField<v1::TokenLogprob>* out) {
  for (const auto& lp : in) {
    auto* p = out->Add();
    p->set_token_id(lp.token_id);
    p->set_logprob(lp.logprob);
    for (const auto& [id, v] : lp.top) {
      auto* t = p->add_top();
      t->set_token_id(id);
      t->set_logprob(v);
    }
  }
}

absl::Time DeadlineOf(grpc::CallbackServerContext* context) {
  const auto deadline = context->deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return absl::InfiniteFuture();
  return absl::FromChrono(deadline);
}

absl::Status NotReady() {
  return absl::UnavailableError("the model is still loading; retry when health is SERVING");
}

// The state a reactor shares with its channel's listener. The listener runs on the
// engine thread and may fire after the reactor is done; `reactor` is cleared (under mu)
// in OnDone, so a late listener finds nothing to call.
template <typename Reactor>
struct ListenerHub {
  std::recursive_mutex mu;
  Reactor* reactor = nullptr;
  static void Attach(const std::shared_ptr<ListenerHub>& hub, RequestChannel* channel) {
    channel->SetListener([hub] {
      std::lock_guard<std::recursive_mutex> lock(hub->mu);
      if (hub->reactor != nullptr) hub->reactor->OnEvents();
    });
  }
};

// Everything a generate call does with the engine's events, shared by unary and stream.
class GenerationCall {
 public:
  GenerationCall(ServingModel* model, Metrics* metrics, const RequestLimits& limits)
      : model_(model), metrics_(metrics), limits_(limits), arrival_(absl::Now()) {}

  // Validates and translates the request and prepares the channel and text stream. A
  // failure is counted as a rejection.
  absl::StatusOr<engine::GenerationRequest> Start(grpc::CallbackServerContext* context,
                                                  const v1::GenerateRequest& proto) {
    if (model_ == nullptr) {
      Reject(RejectReason::kUnavailable);
      return NotReady();
    }
    auto request = TranslateRequest(proto, *model_, limits_);
    if (!request.ok()) {
      Reject(RejectReasonOf(request.status()));
      return request.status();
    }
    request->deadline = DeadlineOf(context);
    deadline_ = request->deadline;
    std::vector<std::string> stops(proto.stopping().stop().begin(), proto.stopping().stop().end());
    text_.emplace(model_->tokenizer.get(), std::move(stops));
    request_id_ = proto.request_id();
    channel_ = std::make_shared<RequestChannel>();
    return request;
  }

  std::shared_ptr<RequestChannel>& channel() { return channel_; }

  // Hands the request to the engine; a refusal is counted as a rejection.
  absl::Status Submit(engine::GenerationRequest request) {
    const engine::ComputeBudget budget = request.budget;
    absl::Status status = model_->engine->Submit(std::move(request), channel_);
    if (!status.ok()) {
      Reject(RejectReasonOf(status));
    } else if (metrics_ != nullptr) {
      metrics_->RequestAdmitted(budget);
    }
    return status;
  }

  // Applies one event; returns the text delta. Sets *done with the final status.
  absl::StatusOr<std::string> Apply(const RequestEvent& event) {
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

  // The final event's outcome, once the stop-string rule is applied.
  absl::Status FinalStatus(const RequestEvent& event, FinishReason* reason) {
    if (stopped_by_text_) {
      *reason = FinishReason::kStopString;
      return absl::OkStatus();
    }
    *reason = event.finish_reason;
    return event.status;
  }

  std::string FinishText() { return stopped_by_text_ ? std::string() : text_->Finish(); }
  // Counts the request's end: a deadline is a rejection; anything else that ran is a
  // finished request, with its latencies.
  void RecordFinish(const absl::Status& status, FinishReason reason, const engine::UsageStats& usage) {
    if (metrics_ == nullptr) return;
    // A client whose deadline passes cancels the call itself, often before the engine
    // sees the deadline: that too is a deadline, as the client was told.
    if (status.code() == absl::StatusCode::kDeadlineExceeded ||
        (status.code() == absl::StatusCode::kCancelled && absl::Now() >= deadline_)) {
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
  const std::string& request_id() const { return request_id_; }
  bool stopped_by_text() const { return stopped_by_text_; }

 private:
  void Reject(RejectReason reason) {
    if (metrics_ != nullptr) metrics_->RequestRejected(reason);
  }

  ServingModel* model_;
  Metrics* metrics_;
  const RequestLimits& limits_;
  const absl::Time arrival_;
  absl::Time deadline_ = absl::InfiniteFuture();
  absl::Time last_token_ = absl::InfinitePast();
  std::optional<TextStream> text_;
  std::shared_ptr<RequestChannel> channel_;
  std::string request_id_;
  bool stopped_by_text_ = false;
};

// Cuts a finished reactor loose from its channel: a listener call that races OnDone
// finds no reactor to call.
template <typename Hub>
void Detach(const std::shared_ptr<Hub>& hub, GenerationCall& call) {
  {
    std::lock_guard<std::recursive_mutex> lock(hub->mu);
    hub->reactor = nullptr;
  }
  if (call.channel()) call.channel()->SetListener(nullptr);
}

class UnaryGenerateReactor final : public grpc::ServerUnaryReactor {
 public:
  UnaryGenerateReactor(grpc::CallbackServerContext* context, const v1::GenerateRequest* request,
                       v1::GenerateResponse* response, ServingModel* model, Metrics* metrics,
                       const RequestLimits& limits)
      : response_(response), call_(model, metrics, limits), hub_(std::make_shared<Hub>()) {
    absl::StatusOr<engine::GenerationRequest> engine_request = call_.Start(context, *request);
    if (!engine_request.ok()) {
      Complete(ToGrpcStatus(engine_request.status()));
      return;
    }
    response_->set_request_id(call_.request_id());
    {
      std::lock_guard<std::recursive_mutex> lock(hub_->mu);
      hub_->reactor = this;
    }
    Hub::Attach(hub_, call_.channel().get());
    absl::Status status = call_.Submit(*std::move(engine_request));
    if (!status.ok()) {
      std::lock_guard<std::recursive_mutex> lock(hub_->mu);
      Complete(ToGrpcStatus(status));
    }
  }

  void OnEvents() {  // called with hub_->mu held
    RequestEvent event;
    while (!finished_ && call_.channel()->TryPop(&event)) {
      for (int32_t id : event.tokens) response_->add_token_ids(id);
      FillLogprobs(event.logprobs, response_->mutable_logprobs());
      auto delta = call_.Apply(event);
      if (!delta.ok()) {
        call_.channel()->Cancel();
        Complete(ToGrpcStatus(delta.status()));
        return;
      }
      response_->mutable_text()->append(*delta);
      if (event.final) {
        FinishReason reason;
        absl::Status status = call_.FinalStatus(event, &reason);
        response_->mutable_text()->append(call_.FinishText());
        response_->set_finish_reason(ToProto(reason));
        FillUsage(event.usage, response_->mutable_usage());
        call_.RecordFinish(status, reason, event.usage);
        Complete(ToGrpcStatus(status));
        return;
      }
    }
  }

  void OnCancel() override { call_.channel()->Cancel(); }

  void OnDone() override {
    Detach(hub_, call_);
    delete this;
  }

 private:
  using Hub = ListenerHub<UnaryGenerateReactor>;
  void Complete(const grpc::Status& status) {
    if (finished_) return;
    finished_ = true;
    Finish(status);
  }

  v1::GenerateResponse* response_;
  GenerationCall call_;
  std::shared_ptr<Hub> hub_;
  bool finished_ = false;
};

class StreamGenerateReactor final : public grpc::ServerWriteReactor<v1::GenerateStreamResponse> {
 public:
  StreamGenerateReactor(grpc::CallbackServerContext* context, const v1::GenerateRequest* request,
                        ServingModel* model, Metrics* metrics, const RequestLimits& limits)
      : call_(model, metrics, limits), hub_(std::make_shared<Hub>()) {
    absl::StatusOr<engine::GenerationRequest> engine_request = call_.Start(context, *request);
    if (!engine_request.ok()) {
      finished_ = true;
      Finish(ToGrpcStatus(engine_request.status()));
      return;
    }
    {
      std::lock_guard<std::recursive_mutex> lock(hub_->mu);
      hub_->reactor = this;
    }
    Hub::Attach(hub_, call_.channel().get());
    absl::Status status = call_.Submit(*std::move(engine_request));
    if (!status.ok()) {
      std::lock_guard<std::recursive_mutex> lock(hub_->mu);
      finished_ = true;
      Finish(ToGrpcStatus(status));
    }
  }

  // Engine thread (listener) or gRPC thread (OnWriteDone), always with hub_->mu held.
  // Events that queued while a write was in flight are merged into one message.
  void OnEvents() {
    if (writing_ || finished_) return;
    RequestEvent event;
    bool any = false;
    bool final = false;
    grpc::Status final_status;
    message_.Clear();
    message_.set_request_id(call_.request_id());
    while (call_.channel()->TryPop(&event)) {
      any = true;
      for (int32_t id : event.tokens) message_.add_token_ids(id);
      FillLogprobs(event.logprobs, message_.mutable_logprobs());
      auto delta = call_.Apply(event);
      if (!delta.ok()) {
        call_.channel()->Cancel();
        finished_ = true;
        Finish(ToGrpcStatus(delta.status()));
        return;
      }
      message_.mutable_text()->append(*delta);
      if (event.final) {
        FinishReason reason;
        absl::Status status = call_.FinalStatus(event, &reason);
        message_.mutable_text()->append(call_.FinishText());
        message_.set_finish_reason(ToProto(reason));
        FillUsage(event.usage, message_.mutable_usage());
        call_.RecordFinish(status, reason, event.usage);
        final = true;
        final_status = ToGrpcStatus(status);
        break;
      }
    }
    if (!any) return;
    if (final) {
      finished_ = true;
      if (final_status.ok()) {
        StartWriteAndFinish(&message_, grpc::WriteOptions(), grpc::Status::OK);
      } else {
        Finish(final_status);  // an error status carries no message
      }
      return;
    }
    writing_ = true;
    StartWrite(&message_);
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::recursive_mutex> lock(hub_->mu);
    writing_ = false;
    if (!ok) {  // the client went away; stop the sequence, the final event ends the call
      call_.channel()->Cancel();
    }
    OnEvents();
  }

  void OnCancel() override { call_.channel()->Cancel(); }

  void OnDone() override {
    Detach(hub_, call_);
    delete this;
  }

 private:
  using Hub = ListenerHub<StreamGenerateReactor>;
  GenerationCall call_;
  std::shared_ptr<Hub> hub_;
  v1::GenerateStreamResponse message_;
  bool writing_ = false;
  bool finished_ = false;
};

grpc::ServerUnaryReactor* FinishNow(grpc::CallbackServerContext* context, const absl::Status& status) {
  auto* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

}  // namespace

absl::StatusOr<engine::GenerationRequest> TranslateRequest(const v1::GenerateRequest& proto,
                                                           const ServingModel& model,
                                                           const RequestLimits& limits) {
  engine::GenerationRequest r;
  switch (proto.input_case()) {
    case v1::GenerateRequest::kText: {
      if (model.tokenizer == nullptr) {
        return absl::FailedPreconditionError(
            "input.text: this model ships no tokenizer.json; send input.tokens instead");
      }
      auto ids = model.tokenizer->Encode(proto.text(), proto.add_special_tokens());
      if (!ids.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("input.text: ", ids.status().message()));
      }
      r.prompt = *std::move(ids);
      break;
    }
    case v1::GenerateRequest::kTokens:
      r.prompt.assign(proto.tokens().ids().begin(), proto.tokens().ids().end());
      break;
    default:
      return absl::InvalidArgumentError("input: set either text or tokens");
  }
  if (limits.max_prompt_tokens > 0 && static_cast<int64_t>(r.prompt.size()) > limits.max_prompt_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("input: the prompt has ", r.prompt.size(),
                                                   " tokens, over the limit --max_prompt_tokens=",
                                                   limits.max_prompt_tokens));
  }
  const auto& s = proto.sampling();
  r.sampling.temperature = s.temperature();
  r.sampling.top_k = s.top_k();
  r.sampling.top_p = s.top_p() == 0.f ? 1.f : s.top_p();
  r.sampling.min_p = s.min_p();
  r.sampling.repetition_penalty = s.repetition_penalty() == 0.f ? 1.f : s.repetition_penalty();
  r.sampling.presence_penalty = s.presence_penalty();
  r.sampling.frequency_penalty = s.frequency_penalty();
  if (s.has_seed()) {
    r.sampling.seed = s.seed();
  } else {
    static thread_local std::mt19937_64 rng(std::random_device{}());
    r.sampling.seed = rng();
  }
  const auto& st = proto.stopping();
  if (st.max_tokens() > static_cast<uint32_t>(INT32_MAX) || st.min_tokens() > static_cast<uint32_t>(INT32_MAX)) {
    return absl::InvalidArgumentError("stopping.max_tokens/min_tokens: too large");
  }
  if (limits.max_output_tokens > 0 && st.max_tokens() > limits.max_output_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("stopping.max_tokens: ", st.max_tokens(),
                                                   " is over the limit --max_output_tokens=",
                                                   limits.max_output_tokens));
  }
  if (st.stop_token_ids_size() > limits.max_stop_token_ids) {
    return absl::InvalidArgumentError(absl::StrCat("stopping.stop_token_ids: ", st.stop_token_ids_size(),
                                                   " ids, over the limit of ", limits.max_stop_token_ids));
  }
  r.stopping.max_tokens = static_cast<int32_t>(st.max_tokens());
  r.stopping.min_tokens = static_cast<int32_t>(st.min_tokens());
  r.stopping.stop_token_ids.assign(st.stop_token_ids().begin(), st.stop_token_ids().end());
  r.stopping.ignore_eos = st.ignore_eos();
  if (st.stop_size() > 0 && model.tokenizer == nullptr) {
    return absl::FailedPreconditionError("stopping.stop: stop strings need the model's tokenizer");
  }
  if (st.stop_size() > limits.max_stop_strings) {
    return absl::InvalidArgumentError(absl::StrCat("stopping.stop: ", st.stop_size(),
                                                   " stop strings, over the limit --max_stop_strings=",
                                                   limits.max_stop_strings));
  }
  for (const auto& stop : st.stop()) {
    if (stop.empty()) return absl::InvalidArgumentError("stopping.stop: empty stop string");
    if (static_cast<int64_t>(stop.size()) > limits.max_stop_string_bytes) {
      return absl::InvalidArgumentError(absl::StrCat("stopping.stop: a stop string of ", stop.size(),
                                                     " bytes, over the limit --max_stop_string_bytes=",
                                                     limits.max_stop_string_bytes));
    }
  }
  const auto& b = proto.budget();
  r.budget.skip_ratio = b.skip_ratio();
  r.budget.experts_per_token = static_cast<int32_t>(b.experts_per_token());
  r.budget.attention_gate_floor = b.attention_gate_floor();
  for (const auto& span : b.skip_layers()) {
    r.budget.skip_layers.push_back({static_cast<int32_t>(span.first()),
                                    static_cast<int32_t>(std::max(span.first(), span.last()))});
  }
  r.priority = proto.priority();
  if (proto.has_logprobs()) {
    if (proto.logprobs().top_n() > static_cast<uint32_t>(limits.max_logprobs)) {
      return absl::InvalidArgumentError(absl::StrCat("logprobs.top_n: ", proto.logprobs().top_n(),
                                                     " is over the limit --max_logprobs=", limits.max_logprobs));
    }
    r.logprobs_top_n = static_cast<int32_t>(proto.logprobs().top_n());
  }
  r.request_id = proto.request_id();
  return r;
}

grpc::ServerUnaryReactor* GenerationService::Generate(grpc::CallbackServerContext* context,
                                                      const v1::GenerateRequest* request,
                                                      v1::GenerateResponse* response) {
  if (model() == nullptr) {
    if (metrics_ != nullptr) metrics_->RequestRejected(RejectReason::kUnavailable);
    return FinishNow(context, NotReady());
  }
  return new UnaryGenerateReactor(context, request, response, model(), metrics_, limits_);
}

grpc::ServerWriteReactor<v1::GenerateStreamResponse>* GenerationService::GenerateStream(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  if (model() == nullptr) {
    if (metrics_ != nullptr) metrics_->RequestRejected(RejectReason::kUnavailable);
    class Rejected final : public grpc::ServerWriteReactor<v1::GenerateStreamResponse> {
     public:
      Rejected() { Finish(ToGrpcStatus(NotReady())); }
      void OnDone() override { delete this; }
    };
    return new Rejected();
  }
  return new StreamGenerateReactor(context, request, model(), metrics_, limits_);
}

grpc::ServerUnaryReactor* GenerationService::Tokenize(grpc::CallbackServerContext* context,
                                                      const v1::TokenizeRequest* request,
                                                      v1::TokenizeResponse* response) {
  ServingModel* m = model();
  if (m == nullptr) return FinishNow(context, NotReady());
  if (m->tokenizer == nullptr) {
    return FinishNow(context, absl::FailedPreconditionError("this model ships no tokenizer.json"));
  }
  auto ids = m->tokenizer->Encode(request->text(), request->add_special_tokens());
  if (!ids.ok()) return FinishNow(context, absl::InvalidArgumentError(absl::StrCat("text: ", ids.status().message())));
  for (int32_t id : *ids) response->add_ids(id);
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* GenerationService::Detokenize(grpc::CallbackServerContext* context,
                                                        const v1::DetokenizeRequest* request,
                                                        v1::DetokenizeResponse* response) {
  ServingModel* m = model();
  if (m == nullptr) return FinishNow(context, NotReady());
  if (m->tokenizer == nullptr) {
    return FinishNow(context, absl::FailedPreconditionError("this model ships no tokenizer.json"));
  }
  std::vector<int32_t> ids(request->ids().begin(), request->ids().end());
  auto text = m->tokenizer->Decode(ids, request->skip_special_tokens());
  if (!text.ok()) return FinishNow(context, absl::InvalidArgumentError(absl::StrCat("ids: ", text.status().message())));
  response->set_text(*std::move(text));
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* GenerationService::GetModelInfo(grpc::CallbackServerContext* context,
                                                          const v1::GetModelInfoRequest* request,
                                                          v1::ModelInfo* info) {
  ServingModel* m = model();
  if (m == nullptr) return FinishNow(context, NotReady());
  const engine::ModelConfig& c = m->engine->model().config();
  info->set_model_type(c.model_type);
  info->set_architecture(c.architecture);
  info->set_vocab_size(c.vocab_size);
  info->set_hidden_size(c.hidden_size);
  info->set_num_layers(c.num_layers);
  info->set_num_attention_heads(c.num_attention_heads);
  info->set_num_key_value_heads(c.num_key_value_heads);
  info->set_head_dim(c.head_dim);
  info->set_max_model_len(m->engine->max_model_len());
  info->set_weight_dtype(c.weight_dtype);
  info->set_total_parameters(c.TotalParameters());
  info->set_active_parameters(c.ActiveParameters());
  for (const auto& t : c.layer_types) info->add_layer_types(t);
  info->set_num_experts(c.moe.num_experts);
  info->set_experts_per_token(c.moe.experts_per_token);
  for (const auto& control : m->engine->model().SupportedBudgetControls()) {
    info->add_supported_budget_controls(control);
  }
  for (const auto& part : c.not_served) info->add_not_served(part);
  info->set_model_path(m->model_dir);
  info->set_has_tokenizer(m->tokenizer != nullptr);
  info->set_bos_token_id(c.bos_token_id.value_or(-1));
  for (int32_t id : c.eos_token_ids) info->add_eos_token_ids(id);
  info->set_device(std::string(kernels::DeviceName(m->engine->model().device())));
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* GenerationService::GetEngineStats(grpc::CallbackServerContext* context,
                                                            const v1::GetEngineStatsRequest* request,
                                                            v1::EngineStats* out) {
  ServingModel* m = model();
  if (m == nullptr) return FinishNow(context, NotReady());
  const engine::SchedulerStats s = m->engine->Stats();
  out->set_running(s.running);
  out->set_waiting(s.waiting);
  out->set_total_kv_blocks(s.total_blocks);
  out->set_free_kv_blocks(s.free_blocks);
  out->set_total_state_slots(s.total_state_slots);
  out->set_free_state_slots(s.free_state_slots);
  out->set_steps(s.steps);
  out->set_preemptions(s.preemptions);
  out->set_finished(s.finished);
  out->set_itl_target_ms(s.itl_target_ms);
  out->set_prefill_cap(static_cast<uint32_t>(s.prefill_cap));
  return FinishNow(context, absl::OkStatus());
}

}  // namespace sluice::server
