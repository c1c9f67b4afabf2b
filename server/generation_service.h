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
#include "server/generation_call.h"
#include "server/metrics.h"
#include "sluice/v1/generation.grpc.pb.h"

namespace sluice::server {

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

// Proto → the neutral form both front doors share. INVALID_ARGUMENT for what the proto
// cannot say wrong by its types alone (a `messages` input's JSON strings).
absl::StatusOr<GenerationParams> ParamsFromProto(const v1::GenerateRequest& request);

// Proto → engine request, validating every field against the limits (ParamsFromProto,
// then TranslateParams). Exposed for tests and the fuzz target.
absl::StatusOr<engine::GenerationRequest> TranslateRequest(const v1::GenerateRequest& request,
                                                           const ServingModel& model,
                                                           const RequestLimits& limits = RequestLimits());

}  // namespace sluice::server

#endif  // SLUICE_SERVER_GENERATION_SERVICE_H_
