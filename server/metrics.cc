#include "server/metrics.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <numeric>

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "absl/strings/numbers.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_cat.h"
#include "engine/engine.h"

namespace sluice::server {
namespace {

using prometheus::Histogram;

// Bucket edges. One ladder serves CPU and GPU alike: 1-2.5-5 per decade from 1 ms (a
// GPU's TTFT on a short prompt) to 1,000 s (a long CPU generation), so neither end
// piles into one bucket.
Histogram::BucketBoundaries LatencyBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
          2.5,   5,      10,    25,   50,    100,  250, 500, 1000};
}
// Inter-token latency and step time: 0.5 ms (a GPU decode step) to 10 s (a CPU step
// carrying a long prompt chunk), finer around 50-300 ms where CPU decode lives.
Histogram::BucketBoundaries StepBuckets() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1,
          0.15,   0.2,   0.3,    0.5,   0.75, 1,     2.5,  5,     10};
}
// Token counts: 1-2-5 per decade up to the context limit (vLLM's rule).
Histogram::BucketBoundaries TokenBuckets(int64_t max_tokens) {
  Histogram::BucketBoundaries edges;
  for (double decade = 1; decade <= max_tokens; decade *= 10) {
    for (double m : {1.0, 2.0, 5.0}) {
      if (m * decade <= max_tokens) edges.push_back(m * decade);
    }
  }
  return edges;
}
// Tokens per step: powers of two up to --max_num_batched_tokens.
Histogram::BucketBoundaries IterationBuckets(int32_t max_tokens) {
  Histogram::BucketBoundaries edges;
  for (double e = 1; e < max_tokens; e *= 2) edges.push_back(e);
  edges.push_back(max_tokens);
  return edges;
}
Histogram::BucketBoundaries RatioBuckets() {
  return {0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0};
}

const char* Label(RejectReason r) {
  switch (r) {
    case RejectReason::kQueueFull: return "queue_full";
    case RejectReason::kDraining: return "draining";
    case RejectReason::kInvalid: return "invalid";
    case RejectReason::kUnauthenticated: return "unauthenticated";
    case RejectReason::kDeadline: return "deadline";
    case RejectReason::kUnavailable: return "unavailable";
  }
  return "invalid";
}

const char* Label(FinishedReason r) {
  switch (r) {
    case FinishedReason::kStop: return "stop";
    case FinishedReason::kLength: return "length";
    case FinishedReason::kAbort: return "abort";
    case FinishedReason::kError: return "error";
  }
  return "error";
}

prometheus::ClientMetric GaugeMetric(const std::string& model_name, double value) {
  prometheus::ClientMetric m;
  m.label.push_back({"model_name", model_name});
  m.gauge.value = value;
  return m;
}

// Values that a scrape reads from the engine as it is at that moment: the queue and
// cache gauges (no sampling thread, no staleness) and the expert-load counters.
class EngineCollectable final : public prometheus::Collectable {
 public:
  EngineCollectable(std::string model_name, ExpertMetricsMode experts)
      : model_name_(std::move(model_name)), experts_(experts) {}
  void SetEngine(const engine::Engine* engine) { engine_.store(engine, std::memory_order_release); }

  std::vector<prometheus::MetricFamily> Collect() const override {
    const engine::Engine* engine = engine_.load(std::memory_order_acquire);
    engine::SchedulerStats s;
    if (engine != nullptr) s = engine->Stats();
    auto usage = [](int32_t free, int32_t total) { return total > 0 ? 1.0 - double(free) / total : 0.0; };
    std::vector<prometheus::MetricFamily> out;
    auto gauge = [&](const char* name, const char* help, double value) {
      out.push_back({name, help, prometheus::MetricType::Gauge, {GaugeMetric(model_name_, value)}});
    };
    gauge("sluice_num_requests_running", "Requests in the running batch (admitted, holding cache)", s.running);
    gauge("sluice_num_requests_waiting", "Requests queued for admission, preempted ones included", s.waiting);
    gauge("sluice_kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0-1)",
          usage(s.free_blocks, s.total_blocks));
    gauge("sluice_state_slots_usage_perc",
          "Fraction of recurrent-state slots in use (0-1; 0 on models without linear attention)",
          usage(s.free_state_slots, s.total_state_slots));
    auto counter = [&](const char* name, const char* help, double value) {
      prometheus::ClientMetric m = GaugeMetric(model_name_, 0);
      m.counter.value = value;
      out.push_back({name, help, prometheus::MetricType::Counter, {m}});
    };
    counter("sluice_prefix_cache_queries_total",
            "Prefix cache: tokens looked up (the context of every admitted sequence)",
            static_cast<double>(s.prefix_cache_queries));
    counter("sluice_prefix_cache_hits_total", "Prefix cache: tokens found cached, whose prefill was skipped",
            static_cast<double>(s.prefix_cache_hits));
    gauge("sluice_prefix_cache_blocks", "Prefix cache: KV blocks findable by content (referenced or not)",
          s.cached_blocks);
    gauge("sluice_prefix_cache_state_snapshots",
          "Prefix cache: recurrent-state snapshots held (0 on models without linear attention)",
          s.state_snapshots);
    {
      prometheus::MetricFamily evictions{"sluice_prefix_cache_evictions_total",
                                         "Prefix cache: cached entries evicted for new ones, by kind",
                                         prometheus::MetricType::Counter, {}};
      for (const auto& [kind, value] : {std::pair<const char*, uint64_t>{"kv_block", s.block_evictions},
                                        std::pair<const char*, uint64_t>{"state_snapshot", s.snapshot_evictions}}) {
        prometheus::ClientMetric m;
        m.label = {{"kind", kind}, {"model_name", model_name_}};
        m.counter.value = static_cast<double>(value);
        evictions.metric.push_back(std::move(m));
      }
      out.push_back(std::move(evictions));
    }
    if (engine != nullptr && experts_.kind != ExpertMetricsMode::kOff) out.push_back(ExpertFamily(*engine));
    return out;
  }

 private:
  prometheus::MetricFamily ExpertFamily(const engine::Engine& engine) const {
    prometheus::MetricFamily family{"sluice_expert_tokens_total",
                                    "Tokens routed to each expert since start, by MoE layer and expert",
                                    prometheus::MetricType::Counter, {}};
    for (const auto& layer_counts : engine.model().ExpertTokenCounts()) {
      const int32_t layer = layer_counts.first;
      const std::vector<uint64_t>& counts = layer_counts.second;  // a lambda below captures it
      std::vector<int32_t> order(counts.size());
      std::iota(order.begin(), order.end(), 0);
      size_t keep = order.size();
      if (experts_.kind == ExpertMetricsMode::kTopN) {
        keep = std::min(keep, static_cast<size_t>(experts_.top_n));
        // Most-loaded first, lower index on ties, so the set is stable between scrapes.
        std::partial_sort(order.begin(), order.begin() + keep, order.end(), [&](int32_t a, int32_t b) {
          return counts[a] != counts[b] ? counts[a] > counts[b] : a < b;
        });
      }
      for (size_t i = 0; i < keep; ++i) {
        prometheus::ClientMetric m;
        m.label = {{"expert", std::to_string(order[i])}, {"layer", std::to_string(layer)},
                   {"model_name", model_name_}};
        m.counter.value = static_cast<double>(counts[order[i]]);
        family.metric.push_back(std::move(m));
      }
    }
    return family;
  }

  std::string model_name_;
  ExpertMetricsMode experts_;
  std::atomic<const engine::Engine*> engine_{nullptr};
};

}  // namespace

absl::StatusOr<ExpertMetricsMode> ExpertMetricsMode::Parse(absl::string_view text) {
  ExpertMetricsMode mode;
  if (text == "off" || text.empty()) return mode;
  if (text == "all") {
    mode.kind = kAll;
    return mode;
  }
  int32_t n = 0;
  if (absl::ConsumePrefix(&text, "top:") && absl::SimpleAtoi(text, &n) && n >= 1) {
    mode.kind = kTopN;
    mode.top_n = n;
    return mode;
  }
  return absl::InvalidArgumentError("--expert_metrics must be off, all or top:N with N >= 1");
}

RejectReason RejectReasonOf(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kResourceExhausted: return RejectReason::kQueueFull;
    case absl::StatusCode::kUnavailable: return RejectReason::kDraining;
    case absl::StatusCode::kDeadlineExceeded: return RejectReason::kDeadline;
    case absl::StatusCode::kUnauthenticated: return RejectReason::kUnauthenticated;
    default: return RejectReason::kInvalid;
  }
}

struct Metrics::Impl {
  explicit Impl(const MetricsOptions& o)
      : options(o),
        labels{{"model_name", o.model_name}},
        engine_values(std::make_shared<EngineCollectable>(o.model_name, o.expert_metrics)) {}

  prometheus::Family<prometheus::Counter>& CounterFamily(const std::string& name, const std::string& help) {
    return prometheus::BuildCounter().Name(name).Help(help).Labels(labels).Register(*registry);
  }
  prometheus::Counter& Counter(const std::string& name, const std::string& help) {
    return CounterFamily(name, help).Add({});
  }
  Histogram& MakeHistogram(const std::string& name, const std::string& help, Histogram::BucketBoundaries edges) {
    return prometheus::BuildHistogram().Name(name).Help(help).Labels(labels).Register(*registry).Add({}, edges);
  }

  MetricsOptions options;
  std::map<std::string, std::string> labels;
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  std::shared_ptr<EngineCollectable> engine_values;
  std::unique_ptr<prometheus::Exposer> exposer;

  prometheus::Family<prometheus::Counter>& rpcs = CounterFamily("sluice_rpc_started_total", "RPCs received, by full method name");
  prometheus::Family<prometheus::Counter>& success =
      CounterFamily("sluice_request_success_total", "Requests that ran and ended, by finished_reason (stop, length, abort, error)");
  prometheus::Family<prometheus::Counter>& rejected = CounterFamily(
      "sluice_request_rejected_total",
      "Requests refused or ended early, by reason (queue_full, draining, invalid, unauthenticated, deadline, unavailable)");
  prometheus::Family<prometheus::Counter>& budgets =
      CounterFamily("sluice_budget_requests_total", "Admitted requests that set a compute-budget control, by control");
  prometheus::Counter& prompt_tokens = Counter("sluice_prompt_tokens_total", "Prompt tokens of requests that ran (finished, cancelled or timed out)");
  prometheus::Counter& generation_tokens = Counter("sluice_generation_tokens_total", "Tokens generated by requests that ran (finished, cancelled or timed out)");
  prometheus::Counter& preemptions = Counter("sluice_num_preemptions_total", "Sequences preempted (recomputed later)");
  prometheus::Counter& flops = Counter(
      "sluice_estimated_flops_total", "FLOPs executed by engine steps (multiply-add = 2; shape-based, as Usage.executed_flops)");
  prometheus::Counter& read_bytes = Counter(
      "sluice_estimated_read_bytes_total",
      "Bytes engine steps read (estimate: weights once per step with k experts per MoE layer, attended K/V, state slots)");

  Histogram& ttft = MakeHistogram("sluice_time_to_first_token_seconds",
                                  "Time from arrival at the server to the first generated token", LatencyBuckets());
  Histogram& itl = MakeHistogram("sluice_inter_token_latency_seconds", "Time between consecutive generated tokens of a request",
                                 StepBuckets());
  Histogram& e2e = MakeHistogram("sluice_e2e_request_latency_seconds", "Time from arrival to the last token of a finished request",
                                 LatencyBuckets());
  Histogram& queue = MakeHistogram("sluice_request_queue_time_seconds",
                                   "Time a finished request waited in the queue before first scheduled", LatencyBuckets());
  Histogram& prefill = MakeHistogram("sluice_request_prefill_time_seconds",
                                     "Time from first scheduled to the first token (prefill)", LatencyBuckets());
  Histogram& decode = MakeHistogram("sluice_request_decode_time_seconds",
                                    "Time from the first token to the last (decode)", LatencyBuckets());
  Histogram& prompt_hist = MakeHistogram("sluice_request_prompt_tokens", "Prompt tokens per finished request",
                                         TokenBuckets(options.max_model_len));
  Histogram& generation_hist = MakeHistogram("sluice_request_generation_tokens", "Generated tokens per finished request",
                                             TokenBuckets(options.max_model_len));
  Histogram& iteration = MakeHistogram("sluice_iteration_tokens_total", "Tokens per engine step (prompt chunks + decodes)",
                                       IterationBuckets(options.max_num_batched_tokens));
  Histogram& step = MakeHistogram("sluice_step_duration_seconds", "Wall time of one engine step (forward pass and sampling)",
                                  StepBuckets());
  Histogram& compute_ratio = MakeHistogram("sluice_executed_compute_ratio",
                                           "Executed / dense FLOPs per finished request (1: no budget saving)", RatioBuckets());
};

Metrics::Metrics(const MetricsOptions& options) : impl_(std::make_unique<Impl>(options)) {}
Metrics::~Metrics() = default;

absl::Status Metrics::Serve(const std::string& listen_address) {
  if (listen_address.empty()) return absl::OkStatus();
  try {
    impl_->exposer = std::make_unique<prometheus::Exposer>(listen_address);
    impl_->exposer->RegisterCollectable(impl_->registry);
    impl_->exposer->RegisterCollectable(impl_->engine_values);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics there: ", e.what()));
  }
  return absl::OkStatus();
}

void Metrics::SetEngine(const engine::Engine* engine) { impl_->engine_values->SetEngine(engine); }

void Metrics::RpcStarted(absl::string_view method) {
  impl_->rpcs.Add({{"method", std::string(method)}}).Increment();
}

void Metrics::RequestRejected(RejectReason reason) {
  impl_->rejected.Add({{"reason", Label(reason)}}).Increment();
}

void Metrics::RequestTimedOut(const engine::UsageStats& usage) {
  RequestRejected(RejectReason::kDeadline);
  impl_->prompt_tokens.Increment(usage.prompt_tokens);
  impl_->generation_tokens.Increment(usage.completion_tokens);
}

void Metrics::RequestAdmitted(const engine::ComputeBudget& budget) {
  auto count = [&](bool set, const char* control) {
    if (set) impl_->budgets.Add({{"control", control}}).Increment();
  };
  count(budget.skip_ratio != 0.f, "skip_ratio");
  count(budget.experts_per_token != 0, "experts_per_token");
  count(budget.attention_gate_floor != 0.f, "attention_gate_floor");
  count(!budget.skip_layers.empty(), "skip_layers");
}

void Metrics::FirstToken(double seconds) { impl_->ttft.Observe(seconds); }
void Metrics::InterToken(double seconds) { impl_->itl.Observe(seconds); }

void Metrics::RequestFinished(FinishedReason reason, const engine::UsageStats& usage, double e2e_seconds) {
  Impl& m = *impl_;
  m.success.Add({{"finished_reason", Label(reason)}}).Increment();
  m.prompt_tokens.Increment(usage.prompt_tokens);
  m.generation_tokens.Increment(usage.completion_tokens);
  m.e2e.Observe(e2e_seconds);
  m.queue.Observe(usage.queue_seconds);
  m.prefill.Observe(usage.prefill_seconds);
  m.decode.Observe(usage.decode_seconds);
  m.prompt_hist.Observe(usage.prompt_tokens);
  m.generation_hist.Observe(usage.completion_tokens);
  m.compute_ratio.Observe(usage.dense_flops > 0 ? usage.executed_flops / usage.dense_flops : 1.0);
}

void Metrics::StepFinished(const engine::StepMetrics& s) {
  Impl& m = *impl_;
  m.iteration.Observe(s.tokens);
  m.step.Observe(s.seconds);
  m.flops.Increment(s.executed_flops);
  m.read_bytes.Increment(s.read_bytes);
  if (s.preemptions > 0) m.preemptions.Increment(s.preemptions);
}

}  // namespace sluice::server
