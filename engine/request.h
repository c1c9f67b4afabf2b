// The engine's own request and result types. server/ translates the protobuf API to
// and from these; engine/ never sees generated protobuf code.
#ifndef SLUICE_ENGINE_REQUEST_H_
#define SLUICE_ENGINE_REQUEST_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace sluice::engine {

struct SamplingOptions {
  float temperature = 0.f;  // 0: greedy
  int32_t top_k = 0;        // 0: off
  float top_p = 1.f;
  float min_p = 0.f;
  float repetition_penalty = 1.f;
  float presence_penalty = 0.f;
  float frequency_penalty = 0.f;
  uint64_t seed = 0;
};

struct StoppingOptions {
  int32_t max_tokens = 0;  // 0: up to the context limit
  int32_t min_tokens = 0;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
};

struct LayerSpan {
  int32_t first = 0;
  int32_t last = 0;
};

struct ComputeBudget {
  float skip_ratio = 0.f;
  int32_t experts_per_token = 0;
  float attention_gate_floor = 0.f;
  std::vector<LayerSpan> skip_layers;
  bool empty() const {
    return skip_ratio == 0.f && experts_per_token == 0 && attention_gate_floor == 0.f &&
           skip_layers.empty();
  }
};

struct GenerationRequest {
  std::vector<int32_t> prompt;
  SamplingOptions sampling;
  StoppingOptions stopping;
  ComputeBudget budget;
  int32_t priority = 0;
  absl::Time deadline = absl::InfiniteFuture();
  int32_t logprobs_top_n = -1;  // -1: no logprobs
  std::string request_id;
};

enum class FinishReason { kNone, kLength, kStopToken, kStopString };

struct TokenLogprob {
  int32_t token_id = 0;
  float logprob = 0.f;
  std::vector<std::pair<int32_t, float>> top;
};

struct UsageStats {
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  int32_t cached_tokens = 0;
  double dense_flops = 0;
  double executed_flops = 0;
  int32_t preemptions = 0;
  // Compute-budget detail (zero for a request without a budget).
  uint64_t branches_skipped = 0;    // (token, layer, branch) triples not run
  uint64_t branches_total = 0;
  uint64_t expert_assignments = 0;  // Σ experts run over (token, MoE layer) pairs
  uint64_t moe_token_layers = 0;
  uint64_t attention_heads_skipped = 0;
  uint64_t attention_heads_total = 0;
  int32_t layers_skipped = 0;       // distinct layers skip_layers removes
  // Engine-side phases, as vLLM defines them: queued until first scheduled, scheduled
  // until the first token, first token until the last. Preemption keeps the first times.
  double queue_seconds = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
  double mean_experts_per_token() const {
    return moe_token_layers == 0 ? 0.0 : static_cast<double>(expert_assignments) / moe_token_layers;
  }
};

// What the engine tells a request after a step. The last event has final = true and
// carries the status (OK, CANCELLED, DEADLINE_EXCEEDED, ...), finish reason and usage.
struct RequestEvent {
  std::vector<int32_t> tokens;
  std::vector<TokenLogprob> logprobs;
  bool final = false;
  absl::Status status;
  FinishReason finish_reason = FinishReason::kNone;
  UsageStats usage;
  absl::Time time;  // when the engine pushed it (set by RequestChannel::Push)
};

// The per-request channel between the engine thread and whoever serves the request.
// The engine pushes events; the consumer pops them, either blocking (tests, unary) or
// when its listener fires (gRPC reactors). Cancel() may be called from any thread; the
// engine drops the sequence at its next step and pushes a final CANCELLED event.
class RequestChannel {
 public:
  using Listener = std::function<void()>;

  // Engine side.
  void Push(RequestEvent event);
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }

  // Consumer side.
  void Cancel() { cancelled_.store(true, std::memory_order_release); }
  // Non-blocking; false when nothing is queued.
  bool TryPop(RequestEvent* event);
  // Blocks until an event arrives or `deadline` passes (false then).
  bool PopWait(RequestEvent* event, absl::Time deadline = absl::InfiniteFuture());
  // Called (from the engine thread) after each Push. Set it before submitting; clear it
  // before the listener's owner goes away.
  void SetListener(Listener listener);
  bool finished() const;

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<RequestEvent> events_;
  Listener listener_;
  bool final_pushed_ = false;
  std::atomic<bool> cancelled_{false};
};

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_REQUEST_H_
