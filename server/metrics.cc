#include "server/metrics.h"

#include <map>
#include <mutex>

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include "absl/strings/str_cat.h"

namespace sluice::server {

struct Metrics::Impl {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<prometheus::Exposer> exposer;
  prometheus::Family<prometheus::Counter>& rpcs =
      prometheus::BuildCounter().Name("sluice_rpc_started_total").Help("RPCs received, by method").Register(*registry);
  prometheus::Family<prometheus::Counter>& success =
      prometheus::BuildCounter().Name("sluice_request_success_total").Help("Finished requests, by finish reason").Register(*registry);
  prometheus::Counter& prompt_tokens =
      prometheus::BuildCounter().Name("sluice_prompt_tokens_total").Help("Prefilled prompt tokens").Register(*registry).Add({});
  prometheus::Counter& generation_tokens =
      prometheus::BuildCounter().Name("sluice_generation_tokens_total").Help("Generated tokens").Register(*registry).Add({});
  prometheus::Family<prometheus::Gauge>& gauges =
      prometheus::BuildGauge().Name("sluice_num_requests").Help("Requests in the engine, by state").Register(*registry);
  prometheus::Gauge& kv_usage =
      prometheus::BuildGauge().Name("sluice_kv_cache_usage_perc").Help("Fraction of KV blocks in use").Register(*registry).Add({});
  std::mutex mu;
};

Metrics::Metrics() : impl_(std::make_unique<Impl>()) {}
Metrics::~Metrics() = default;

absl::Status Metrics::Serve(const std::string& listen_address) {
  if (listen_address.empty()) return absl::OkStatus();
  try {
    impl_->exposer = std::make_unique<prometheus::Exposer>(listen_address);
    impl_->exposer->RegisterCollectable(impl_->registry);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", listen_address, ": ", e.what()));
  }
  return absl::OkStatus();
}

void Metrics::RpcStarted(absl::string_view method) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->rpcs.Add({{"method", std::string(method)}}).Increment();
}

void Metrics::RequestFinished(absl::string_view finish_reason, int prompt_tokens,
                              int generation_tokens) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->success.Add({{"finished_reason", std::string(finish_reason)}}).Increment();
  impl_->prompt_tokens.Increment(prompt_tokens);
  impl_->generation_tokens.Increment(generation_tokens);
}

void Metrics::SetEngineGauges(int running, int waiting, double kv_usage) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->gauges.Add({{"state", "running"}}).Set(running);
  impl_->gauges.Add({{"state", "waiting"}}).Set(waiting);
  impl_->kv_usage.Set(kv_usage);
}

}  // namespace sluice::server
