// Prometheus metrics served on --metrics_listen at /metrics. Names mirror vLLM's
// (vllm:* → sluice_*) so dashboards, alerts and the Gateway API Inference Extension's
// model-server protocol carry over with a prefix change; every series has the label
// model_name. The README's metrics table lists each family, its type, labels, buckets
// and the vLLM name it mirrors.
#ifndef SLUICE_SERVER_METRICS_H_
#define SLUICE_SERVER_METRICS_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sluice::engine {
class Engine;
struct ComputeBudget;
struct StepMetrics;
struct UsageStats;
}  // namespace sluice::engine

namespace sluice::server {

// Which expert-load series /metrics carries: none (the default), every (layer, expert)
// pair, or the N most-loaded experts of each layer.
struct ExpertMetricsMode {
  enum Kind { kOff, kAll, kTopN } kind = kOff;
  int32_t top_n = 0;
  // "off", "all" or "top:N" (N >= 1).
  static absl::StatusOr<ExpertMetricsMode> Parse(absl::string_view text);
};

struct MetricsOptions {
  std::string model_name;
  ExpertMetricsMode expert_metrics;
  int64_t max_model_len = 1 << 20;           // top edge of the token-count histograms
  int32_t max_num_batched_tokens = 1 << 14;  // top edge of the iteration-tokens histogram
};

// Why a request was refused; the `reason` label of sluice_request_rejected_total.
enum class RejectReason { kQueueFull, kDraining, kInvalid, kUnauthenticated, kDeadline, kUnavailable };

// How a request that ran ended; the `finished_reason` label of
// sluice_request_success_total (vLLM's values, plus "error" for an internal failure).
enum class FinishedReason { kStop, kLength, kAbort, kError };

class Metrics {
 public:
  explicit Metrics(const MetricsOptions& options);
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // Starts the HTTP exposer; an empty address disables it. It is plaintext HTTP with no
  // API key: Debian's CivetWeb cannot initialise TLS against OpenSSL 3 (mg_init_library
  // with MG_FEATURES_TLS fails, and an HTTPS port without it crashes on the first
  // request), so keep it on loopback or behind a TLS-terminating proxy or sidecar.
  absl::Status Serve(const std::string& listen_address);

  // The engine whose gauges and expert counters a scrape reads; null until loaded.
  void SetEngine(const engine::Engine* engine);

  // Thread-safe recorders.
  void RpcStarted(absl::string_view method);
  void RequestRejected(RejectReason reason);
  // A request that ran until its deadline passed: a rejection, whose tokens still count
  // in the token counters (not in the per-request histograms).
  void RequestTimedOut(const engine::UsageStats& usage);
  void RequestAdmitted(const engine::ComputeBudget& budget);
  void FirstToken(double seconds_since_arrival);
  void InterToken(double seconds);
  void RequestFinished(FinishedReason reason, const engine::UsageStats& usage, double e2e_seconds);
  void StepFinished(const engine::StepMetrics& step);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The rejection a failed generate call counts as (the status mapping of the README).
RejectReason RejectReasonOf(const absl::Status& status);

}  // namespace sluice::server

#endif  // SLUICE_SERVER_METRICS_H_
