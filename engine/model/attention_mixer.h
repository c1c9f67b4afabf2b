// Softmax attention over the paged KV cache, in the variants the supported families
// use: GQA, q/k RMSNorm (per head or over the whole projection), partial RoPE, and
// the G1 sigmoid output gate of Qwen3-Next / Qwen3.5 (arXiv 2505.06708):
//   out = o_proj(attn ⊙ sigmoid(gate)), with gate packed per head into q_proj.
#ifndef SLUICE_ENGINE_MODEL_ATTENTION_MIXER_H_
#define SLUICE_ENGINE_MODEL_ATTENTION_MIXER_H_

#include <memory>
#include <optional>
#include <string>

#include "engine/model/blocks.h"

namespace sluice::engine {

class AttentionMixer : public Mixer {
 public:
  static absl::StatusOr<std::unique_ptr<AttentionMixer>> Load(
      const ModelConfig& config, const Checkpoint& ckpt, const std::string& prefix,
      int cache_layer, std::shared_ptr<const kernels::Tensor> rope_table,
      kernels::Device device);
  absl::Status Forward(const StepTensors& step, const kernels::Tensor& x,
                       kernels::Tensor* out) override;
  double FlopsPerToken(int64_t context) const override;
  size_t WeightBytes() const override { return qkv_proj_->weight_bytes() + o_proj_->weight_bytes(); }

 private:
  int64_t num_heads_ = 0, num_kv_heads_ = 0, head_dim_ = 0, rotary_dim_ = 0;
  float eps_ = 1e-6f;
  float norm_offset_ = 0.f;
  QkNorm qk_norm_ = QkNorm::kNone;
  bool output_gate_ = false;
  std::optional<float> clip_qkv_;
  int cache_layer_ = 0;
  // q | gate (when gated) | k | v stacked into one GEMM. The checkpoint interleaves q
  // and gate per head; rows are reordered at load so each part is contiguous.
  std::unique_ptr<kernels::Linear> qkv_proj_;
  std::unique_ptr<kernels::Linear> o_proj_;
  kernels::Tensor q_norm_, k_norm_;  // undefined when the family has none
  std::shared_ptr<const kernels::Tensor> rope_table_;
};

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_MODEL_ATTENTION_MIXER_H_
