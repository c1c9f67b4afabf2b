// sluice.v1.Generation over the gRPC callback API. Each RPC becomes an engine request
// with a RequestChannel; a reactor turns the channel's events into responses, and a
// client cancel or disconnect cancels the engine sequence.
#ifndef SLUICE_SERVER_GENERATION_SERVICE_H_
#define SLUICE_SERVER_GENERATION_SERVICE_H_

#include <atomic>
#include <memory>
#include <string>

#include "engine/engine.h"
#include "engine/tokenizer/tokenizer.h"
#include "server/metrics.h"
#include "sluice/v1/generation.grpc.pb.h"

namespace sluice::server {

// What the service serves; filled in once the model has loaded.
struct ServingModel {
  std::unique_ptr<engine::Engine> engine;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;  // null when the model ships none
  std::string model_dir;
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

class GenerationService final : public v1::Generation::CallbackService {
 public:
  explicit GenerationService(Metrics* metrics, RequestLimits limits = RequestLimits())
      : metrics_(metrics), limits_(limits) {}

  // Publishes the loaded model; RPCs before this answer UNAVAILABLE.
  void SetModel(ServingModel* model) { model_.store(model, std::memory_order_release); }

  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* context,
                                     const v1::GenerateRequest* request,
                                     v1::GenerateResponse* response) override;
  grpc::ServerWriteReactor<v1::GenerateStreamResponse>* GenerateStream(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const v1::TokenizeRequest* request,
                                     v1::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* context,
                                       const v1::DetokenizeRequest* request,
                                       v1::DetokenizeResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const v1::GetModelInfoRequest* request,
                                         v1::ModelInfo* response) override;
  grpc::ServerUnaryReactor* GetEngineStats(grpc::CallbackServerContext* context,
                                           const v1::GetEngineStatsRequest* request,
                                           v1::EngineStats* response) override;

 private:
  ServingModel* model() const { return model_.load(std::memory_order_acquire); }

  std::atomic<ServingModel*> model_{nullptr};
  Metrics* metrics_;
  RequestLimits limits_;
};

// Proto → engine request, validating every field against the limits. Exposed for tests.
absl::StatusOr<engine::GenerationRequest> TranslateRequest(const v1::GenerateRequest& request,
                                                           const ServingModel& model,
                                                           const RequestLimits& limits = RequestLimits());

}  // namespace sluice::server

#endif  // SLUICE_SERVER_GENERATION_SERVICE_H_
