// A decoder-only language model built from config.json and a checkpoint:
// embedding → N × (norm, mixer, norm, FFN) → final norm → LM head.
#ifndef SLUICE_ENGINE_MODEL_CAUSAL_LM_H_
#define SLUICE_ENGINE_MODEL_CAUSAL_LM_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/cache/kv_cache.h"
#include "engine/cache/state_cache.h"
#include "engine/config/model_config.h"
#include "engine/model/blocks.h"
#include "engine/model/forward_batch.h"
#include "engine/model/language_model.h"
#include "kernels/tensor.h"

namespace sluice::engine {

class CausalLm : public LanguageModel {
 public:
  static absl::StatusOr<std::unique_ptr<CausalLm>> Load(const std::string& dir,
                                                        kernels::Device device);

  const ModelConfig& config() const override { return config_; }
  kernels::Device device() const { return device_; }
  // Shape of the KV cache this model needs (num_blocks left to the caller).
  KvCacheShape KvShape(int32_t block_size) const;
  // Shape of one recurrent-state slot (num_slots left to the caller); num_layers is 0
  // for models without linear-attention layers.
  StateCacheShape StateShape() const;
  // Largest context the model supports (its position table).
  int64_t max_context() const { return config_.max_position_embeddings; }

  // Runs one ragged batch. Writes f32 logits [batch.logit_rows.size(), vocab] to
  // `logits` (host memory, resized here).
  absl::Status Forward(const ForwardBatch& batch, PagedKvCache* kv_cache,
                       RecurrentStateCache* state_cache, std::vector<float>* logits) override;

  // FLOPs of `tokens` new tokens of one sequence whose context grows from `past`.
  double DenseFlops(int64_t past, int64_t tokens) const override;
  // Bytes of weights one decode step reads (for bandwidth figures).
  uint64_t WeightBytesPerToken() const;

 private:
  struct Layer {
    kernels::Tensor input_norm;
    kernels::Tensor post_attention_norm;
    std::unique_ptr<Mixer> mixer;
    std::unique_ptr<FeedForward> ffn;
  };

  ModelConfig config_;
  kernels::Device device_ = kernels::Device::kCpu;
  kernels::Tensor embed_tokens_;  // [V, H], f32 or bf16
  std::vector<Layer> layers_;
  kernels::Tensor final_norm_;
  std::unique_ptr<kernels::Linear> lm_head_;
  uint64_t weight_bytes_per_token_ = 0;
};

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_MODEL_CAUSAL_LM_H_
