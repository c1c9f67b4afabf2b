// The FFN blocks: a dense SwiGLU, and a mixture of SwiGLU experts with an optional
// sigmoid-gated shared expert (Qwen3-MoE, Mixtral, OLMoE, Qwen3-Next, Qwen3.5-MoE).
#ifndef SLUICE_ENGINE_MODEL_FEED_FORWARD_H_
#define SLUICE_ENGINE_MODEL_FEED_FORWARD_H_

#include <memory>
#include <string>
#include <vector>

#include "engine/model/blocks.h"
#include "kernels/moe.h"

namespace sluice::engine {

// down(silu(gate(x)) ⊙ up(x)), with gate and up stacked into one GEMM.
class SwiGluFeedForward : public FeedForward {
 public:
  static absl::StatusOr<std::unique_ptr<SwiGluFeedForward>> Load(
      const Checkpoint& ckpt, const std::string& prefix, int64_t hidden, int64_t intermediate,
      kernels::Device device);
  // From already-stacked [gate | up] and down weights (fused expert tensors).
  static absl::StatusOr<std::unique_ptr<SwiGluFeedForward>> FromWeights(
      const kernels::Tensor& gate_up, const kernels::Tensor& down, kernels::Device device);
  using FeedForward::Forward;
  absl::Status Forward(const kernels::Tensor& x, kernels::Tensor* out,
                       const RowControls* controls) override;
  double FlopsPerToken() const override;
  // Weight bytes one token reads through this block.
  size_t WeightBytes() const { return gate_up_->weight_bytes() + down_->weight_bytes(); }

 private:
  std::unique_ptr<kernels::Linear> gate_up_;
  std::unique_ptr<kernels::Linear> down_;
};

// Router: p = softmax(gate(x)) in f32, top-k, renormalised when the family says so.
// The routing stays on the device: RouteTopK → AlignRowsByExpert (offsets and a
// permutation grouped by expert) → GroupedExperts (every active expert in one op). No
// device-to-host copy and no upload inside the layer; the per-row k of a budget is known
// on the host already, which is all the cost accounting needs.
class MoeFeedForward : public FeedForward {
 public:
  // `prefix` is the layer's, e.g. "model.layers.3."; the block may sit under "mlp." or
  // (Mixtral hub checkpoints) "block_sparse_moe.", with experts fused or per expert.
  static absl::StatusOr<std::unique_ptr<MoeFeedForward>> Load(const ModelConfig& config,
                                                             const Checkpoint& ckpt,
                                                             const std::string& prefix,
                                                             kernels::Device device);
  using FeedForward::Forward;
  // With controls, a row whose experts entry is k' in [1, k) runs only its top k'
  // experts (renormalised over those when the family renormalises).
  absl::Status Forward(const kernels::Tensor& x, kernels::Tensor* out,
                       const RowControls* controls) override;
  double FlopsPerToken() const override;
  size_t ActiveWeightBytes() const;
  int64_t top_k() const { return top_k_; }
  double ExpertFlopsPerToken() const { return experts_->ExpertFlopsPerToken(); }
  // Weight bytes one expert reads (what each distinct routed expert costs a step).
  size_t ExpertWeightBytes() const override { return experts_->ExpertWeightBytes(); }
  // Tokens routed to each expert since load (expert load metrics). Thread-safe: the
  // device counter is updated with relaxed atomics and read the same way.
  std::vector<uint64_t> ExpertTokenCounts() const;

 private:
  int64_t hidden_ = 0;
  int64_t top_k_ = 0;
  bool renormalize_ = false;
  std::unique_ptr<kernels::Linear> router_;
  std::unique_ptr<kernels::GroupedExperts> experts_;
  std::unique_ptr<SwiGluFeedForward> shared_expert_;  // null when absent
  std::unique_ptr<kernels::Linear> shared_expert_gate_;
  kernels::Tensor expert_tokens_;  // i64 [E] on the device, AlignRowsByExpert's counter
};

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_MODEL_FEED_FORWARD_H_
