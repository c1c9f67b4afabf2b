// Prometheus metrics served on --metrics_listen. Names mirror vLLM's (vllm:* → sluice_*)
// so existing dashboards carry over. Later issues add latency histograms and cache gauges.
#ifndef SLUICE_SERVER_METRICS_H_
#define SLUICE_SERVER_METRICS_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace sluice::server {

class Metrics {
 public:
  Metrics();
  ~Metrics();
  // Starts the HTTP exposer; an empty address disables it.
  absl::Status Serve(const std::string& listen_address);

  void RpcStarted(absl::string_view method);
  void RequestFinished(absl::string_view finish_reason, int prompt_tokens, int generation_tokens);
  void SetEngineGauges(int running, int waiting, double kv_usage);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sluice::server

#endif  // SLUICE_SERVER_METRICS_H_
