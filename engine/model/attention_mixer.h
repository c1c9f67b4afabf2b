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
      kernels::Device device, bool key_value_only_path = false);
  // With step.controls carrying a gate floor for a row (gated attention only), each query
  // head of that row whose mean output gate, mean(sigmoid(gate)) over head_dim, is below
  // the floor skips its attention and contributes zero; q/k norms, RoPE and o_proj still
  // run on the whole row.
  absl::Status Forward(const StepTensors& step, const kernels::Tensor& x,
                       kernels::Tensor* out) override;
  // GateSkip: a token that skips this branch still writes its K/V, so later tokens see a
  // complete cache. Runs only the k/v projections (plus k norm, clip and RoPE) for the
  // rows of x and writes them at step.slot_mapping. Needs key_value_only_path at load.
  absl::Status WriteSkippedRows(const StepTensors& step, const kernels::Tensor& x) override;
  // What a GateSkip-skipped token still costs: the k|v projection.
  double SkippedRowFlopsPerToken() const override { return 2.0 * 2 * num_kv_heads_ * head_dim_ * hidden_; }
  LayerCacheSpec CacheSpec() const override;
  double FlopsPerToken(int64_t context) const override;
  bool output_gate() const { return output_gate_; }
  int64_t num_heads() const { return num_heads_; }
  size_t WeightBytes() const override { return qkv_proj_->weight_bytes() + o_proj_->weight_bytes(); }

 private:
  int64_t num_heads_ = 0, num_kv_heads_ = 0, head_dim_ = 0, rotary_dim_ = 0, hidden_ = 0;
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
  std::unique_ptr<kernels::Linear> kv_proj_;  // k | v only; null unless key_value_only_path
  kernels::Tensor q_norm_, k_norm_;  // undefined when the family has none
  std::shared_ptr<const kernels::Tensor> rope_table_;
};

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_MODEL_ATTENTION_MIXER_H_
