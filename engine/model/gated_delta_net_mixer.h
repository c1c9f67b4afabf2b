// The Gated DeltaNet mixer of Qwen3-Next and Qwen3.5 linear-attention layers
// (Yang et al., "Gated Delta Networks", arXiv 2412.06464):
//   [q k v] = silu(conv1d_causal(W_qkv x)),  z = W_z x,  β = σ(W_b x),
//   g = −exp(A_log) · softplus(W_a x + dt_bias)
//   o = GatedDeltaRule(l2norm(q), l2norm(k), v, g, β);  y = W_out (RMSNorm(o) ⊙ silu(z))
// The per-sequence conv tail and recurrent state live in RecurrentStateCache slots.
#ifndef SLUICE_ENGINE_MODEL_GATED_DELTA_NET_MIXER_H_
#define SLUICE_ENGINE_MODEL_GATED_DELTA_NET_MIXER_H_

#include <memory>
#include <string>

#include "engine/model/blocks.h"

namespace sluice::engine {

class GatedDeltaNetMixer : public Mixer {
 public:
  // Accepts Qwen3-Next's fused in_proj_qkvz / in_proj_ba and Qwen3.5's split
  // in_proj_qkv / in_proj_z / in_proj_b / in_proj_a; both are reordered at load into one
  // projection laid out [q | k | v | z | b | a], each part head-major.
  static absl::StatusOr<std::unique_ptr<GatedDeltaNetMixer>> Load(const ModelConfig& config,
                                                                  const Checkpoint& ckpt,
                                                                  const std::string& prefix,
                                                                  int state_layer,
                                                                  kernels::Device device);
  absl::Status Forward(const StepTensors& step, const kernels::Tensor& x,
                       kernels::Tensor* out) override;
  LayerCacheSpec CacheSpec() const override;
  double FlopsPerToken(int64_t context) const override;
  absl::Status ResetState(RecurrentStateCache* state_cache, int32_t slot) override;
  size_t WeightBytes() const override { return in_proj_->weight_bytes() + out_proj_->weight_bytes(); }

 private:
  LinearAttentionConfig shape_;
  float eps_ = 1e-6f;
  int state_layer_ = 0;
  std::unique_ptr<kernels::Linear> in_proj_;
  std::unique_ptr<kernels::Linear> out_proj_;
  kernels::Tensor conv_weight_;  // f32 [conv_dim, K]
  kernels::Tensor a_log_;        // f32 [H_v]
  kernels::Tensor dt_bias_;      // f32 [H_v]
  kernels::Tensor norm_weight_;  // f32 [d_v]
};

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_MODEL_GATED_DELTA_NET_MIXER_H_
