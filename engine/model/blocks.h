// The reusable pieces a decoder is built from. A layer is
//   h = x + mixer(norm1(x));  y = h + ffn(norm2(h))
// and each family picks its mixer (softmax attention today; gated attention and Gated
// DeltaNet next) and FFN (SwiGLU today; MoE with a shared expert next).
#ifndef SLUICE_ENGINE_MODEL_BLOCKS_H_
#define SLUICE_ENGINE_MODEL_BLOCKS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/cache/kv_cache.h"
#include "engine/config/model_config.h"
#include "engine/model/forward_batch.h"
#include "engine/weights/checkpoint.h"
#include "kernels/ops.h"

namespace sluice::engine {

// Device-side copies of the batch metadata, shared by every layer of one step.
struct StepTensors {
  const ForwardBatch* batch = nullptr;
  kernels::Tensor positions;     // i32 [T]
  kernels::Tensor slot_mapping;  // i32 [T]
  PagedKvCache* kv_cache = nullptr;
};

class Mixer {
 public:
  virtual ~Mixer() = default;
  // x: normalised input f32 [T, hidden]; out: f32 [T, hidden].
  virtual absl::Status Forward(const StepTensors& step, const kernels::Tensor& x,
                               kernels::Tensor* out) = 0;
  // FLOPs (multiply-add = 2) of one token at a context length of `context` tokens.
  virtual double FlopsPerToken(int64_t context) const = 0;
};

class FeedForward {
 public:
  virtual ~FeedForward() = default;
  virtual absl::Status Forward(const kernels::Tensor& x, kernels::Tensor* out) = 0;
  virtual double FlopsPerToken() const = 0;
};

// Rotary tables shared by every attention layer: cos | sin per position.
absl::StatusOr<kernels::Tensor> BuildRopeTable(const RopeConfig& rope, int64_t rotary_dim,
                                               int64_t max_positions, kernels::Device device);

// A norm weight, stored in f32 on the device.
absl::StatusOr<kernels::Tensor> LoadNormWeight(const Checkpoint& ckpt, const std::string& name,
                                               int64_t dim, kernels::Device device);

// Softmax attention with GQA, optional q/k RMSNorm, and RoPE (Llama, Qwen3).
class AttentionMixer : public Mixer {
 public:
  static absl::StatusOr<std::unique_ptr<AttentionMixer>> Load(
      const ModelConfig& config, const Checkpoint& ckpt, const std::string& prefix,
      int cache_layer, std::shared_ptr<const kernels::Tensor> rope_table,
      kernels::Device device);
  absl::Status Forward(const StepTensors& step, const kernels::Tensor& x,
                       kernels::Tensor* out) override;
  double FlopsPerToken(int64_t context) const override;

 private:
  int64_t num_heads_ = 0, num_kv_heads_ = 0, head_dim_ = 0, rotary_dim_ = 0;
  float eps_ = 1e-6f;
  int cache_layer_ = 0;
  std::unique_ptr<kernels::Linear> qkv_proj_;  // q | k | v stacked, one GEMM
  std::unique_ptr<kernels::Linear> o_proj_;
  kernels::Tensor q_norm_, k_norm_;            // undefined when the family has none
  std::shared_ptr<const kernels::Tensor> rope_table_;
};

// down(silu(gate(x)) ⊙ up(x)), with gate and up stacked into one GEMM.
class SwiGluFeedForward : public FeedForward {
 public:
  static absl::StatusOr<std::unique_ptr<SwiGluFeedForward>> Load(
      const Checkpoint& ckpt, const std::string& prefix, int64_t hidden, int64_t intermediate,
      kernels::Device device);
  absl::Status Forward(const kernels::Tensor& x, kernels::Tensor* out) override;
  double FlopsPerToken() const override;

 private:
  std::unique_ptr<kernels::Linear> gate_up_;
  std::unique_ptr<kernels::Linear> down_;
};

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_MODEL_BLOCKS_H_
