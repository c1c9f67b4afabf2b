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

// Proto → params → a started call (validated, translated, counted if refused).
absl::StatusOr<engine::GenerationRequest> StartCall(GenerationCall& call, grpc::CallbackServerContext* context,
                                                    const v1::GenerateRequest& proto) {
  auto params = ParamsFromProto(proto);
  if (!params.ok()) {
    call.Reject(RejectReasonOf(params.status()));
    return params.status();
  }
  return call.Start(*params, DeadlineOf(context));
}

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
    absl::StatusOr<engine::GenerationRequest> engine_request = StartCall(call_, context, *request);
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
    absl::StatusOr<engine::GenerationRequest> engine_request = StartCall(call_, context, *request);
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

absl::StatusOr<GenerationParams> ParamsFromProto(const v1::GenerateRequest& proto) {
  GenerationParams p;
  switch (proto.input_case()) {
    case v1::GenerateRequest::kText:
      p.input = GenerationParams::Input::kText;
      p.text = proto.text();
      p.add_special_tokens = proto.add_special_tokens();
      break;
    case v1::GenerateRequest::kTokens:
      p.input = GenerationParams::Input::kTokens;
      p.tokens.assign(proto.tokens().ids().begin(), proto.tokens().ids().end());
      break;
    case v1::GenerateRequest::kMessages: {
      p.input = GenerationParams::Input::kMessages;
      const v1::ChatInput& chat = proto.messages();
      for (const v1::ChatMessage& m : chat.messages()) {
        nlohmann::ordered_json j = {{"role", m.role()}};
        if (m.has_content()) {
          j["content"] = m.content();
        } else {
          j["content"] = nullptr;
        }
        if (m.has_reasoning_content()) j["reasoning_content"] = m.reasoning_content();
        if (m.tool_calls_size() > 0) {
          nlohmann::ordered_json calls = nlohmann::ordered_json::array();
          for (const v1::ToolCall& c : m.tool_calls()) {
            calls.push_back({{"id", c.id()},
                             {"type", c.type().empty() ? std::string("function") : c.type()},
                             {"function", {{"name", c.function().name()}, {"arguments", c.function().arguments()}}}});
          }
          j["tool_calls"] = std::move(calls);
        }
        if (!m.tool_call_id().empty()) j["tool_call_id"] = m.tool_call_id();
        if (!m.name().empty()) j["name"] = m.name();
        p.chat.messages.push_back(std::move(j));
      }
      if (absl::Status s = NormalizeChatMessages(&p.chat.messages, "input.messages"); !s.ok()) return s;
      if (!chat.tools().empty()) {
        p.chat.tools = nlohmann::ordered_json::parse(chat.tools(), nullptr, /*allow_exceptions=*/false);
        if (!p.chat.tools.is_array()) {
          return absl::InvalidArgumentError("input.messages.tools: must be a JSON array of tool definitions");
        }
      }
      if (!chat.chat_template_kwargs().empty()) {
        p.chat.extra = nlohmann::ordered_json::parse(chat.chat_template_kwargs(), nullptr, /*allow_exceptions=*/false);
        if (!p.chat.extra.is_object()) {
          return absl::InvalidArgumentError("input.messages.chat_template_kwargs: must be a JSON object");
        }
      }
      p.chat.add_generation_prompt = !chat.has_add_generation_prompt() || chat.add_generation_prompt();
      break;
    }
    default:
      return absl::InvalidArgumentError("input: set either text, tokens or messages");
  }
  const auto& s = proto.sampling();
  p.temperature = s.temperature();
  p.top_k = s.top_k();
  p.top_p = s.top_p();
  p.min_p = s.min_p();
  p.repetition_penalty = s.repetition_penalty();
  p.presence_penalty = s.presence_penalty();
  p.frequency_penalty = s.frequency_penalty();
  if (s.has_seed()) p.seed = s.seed();
  const auto& st = proto.stopping();
  p.max_tokens = st.max_tokens();
  p.min_tokens = st.min_tokens();
  p.stop_token_ids.assign(st.stop_token_ids().begin(), st.stop_token_ids().end());
  p.stop.assign(st.stop().begin(), st.stop().end());
  p.ignore_eos = st.ignore_eos();
  const auto& b = proto.budget();
  p.skip_ratio = b.skip_ratio();
  p.experts_per_token = b.experts_per_token();
  p.attention_gate_floor = b.attention_gate_floor();
  for (const auto& span : b.skip_layers()) p.skip_layers.emplace_back(span.first(), span.last());
  p.priority = proto.priority();
  if (proto.has_logprobs()) p.logprobs_top_n = proto.logprobs().top_n();
  p.request_id = proto.request_id();
  return p;
}

absl::StatusOr<engine::GenerationRequest> TranslateRequest(const v1::GenerateRequest& proto,
                                                           const ServingModel& model,
                                                           const RequestLimits& limits) {
  auto params = ParamsFromProto(proto);
  if (!params.ok()) return params.status();
  return TranslateParams(*params, model, limits);
}

grpc::ServerUnaryReactor* GenerationService::Generate(grpc::CallbackServerContext* context,
                                                      const v1::GenerateRequest* request,
                                                      v1::GenerateResponse* response) {
  if (model() == nullptr) {
    if (metrics_ != nullptr) metrics_->RequestRejected(RejectReason::kUnavailable);
    return FinishNow(context, NotReadyError());
  }
  return new UnaryGenerateReactor(context, request, response, model(), metrics_, limits_);
}

grpc::ServerWriteReactor<v1::GenerateStreamResponse>* GenerationService::GenerateStream(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  if (model() == nullptr) {
    if (metrics_ != nullptr) metrics_->RequestRejected(RejectReason::kUnavailable);
    class Rejected final : public grpc::ServerWriteReactor<v1::GenerateStreamResponse> {
     public:
      Rejected() { Finish(ToGrpcStatus(NotReadyError())); }
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
  if (m == nullptr) return FinishNow(context, NotReadyError());
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
  if (m == nullptr) return FinishNow(context, NotReadyError());
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
  if (m == nullptr) return FinishNow(context, NotReadyError());
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
  info->set_quantization(std::string(kernels::WeightQuantizationName(m->engine->model().quantization())));
  info->set_weight_format(m->engine->model().weight_format());
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* GenerationService::GetEngineStats(grpc::CallbackServerContext* context,
                                                            const v1::GetEngineStatsRequest* request,
                                                            v1::EngineStats* out) {
  ServingModel* m = model();
  if (m == nullptr) return FinishNow(context, NotReadyError());
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
  const engine::KvCacheShape& kv = m->engine->kv_cache_shape();
  out->set_kv_cache_dtype(std::string(engine::KvCacheDtypeName(kv.dtype)));
  out->set_kv_block_bytes(kv.BytesPerBlock());
  out->set_kv_block_size(static_cast<uint32_t>(kv.block_size));
  const int64_t blocks_per_sequence = (m->engine->max_model_len() + kv.block_size - 1) / kv.block_size;
  out->set_kv_full_context_sequences(
      static_cast<uint32_t>(blocks_per_sequence > 0 ? s.total_blocks / blocks_per_sequence : 0));
  out->set_prefix_caching(m->engine->prefix_caching());
  out->set_prefix_cache_queries(s.prefix_cache_queries);
  out->set_prefix_cache_hits(s.prefix_cache_hits);
  out->set_cached_kv_blocks(static_cast<uint32_t>(s.cached_blocks));
  out->set_kv_block_evictions(s.block_evictions);
  out->set_state_snapshots(static_cast<uint32_t>(s.state_snapshots));
  out->set_total_state_snapshots(static_cast<uint32_t>(s.total_state_snapshots));
  out->set_state_snapshot_bytes(s.total_state_snapshots > 0 ? m->engine->state_cache_shape().BytesPerSlot() : 0);
  out->set_state_snapshot_evictions(s.snapshot_evictions);
  return FinishNow(context, absl::OkStatus());
}

}  // namespace sluice::server
