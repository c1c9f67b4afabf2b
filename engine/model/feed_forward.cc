#include "engine/model/feed_forward.h"

#include "absl/strings/str_cat.h"
#include "kernels/device_memory.h"
#include "kernels/status_macros.h"

namespace sluice::engine {

using kernels::DType;
using kernels::Tensor;

absl::StatusOr<std::unique_ptr<SwiGluFeedForward>> SwiGluFeedForward::Load(
    const Checkpoint& ckpt, const std::string& prefix, int64_t hidden, int64_t intermediate,
    kernels::Device device) {
  SLUICE_ASSIGN_OR_RETURN(Tensor gate, ckpt.Get(prefix + "gate_proj.weight", {intermediate, hidden}));
  SLUICE_ASSIGN_OR_RETURN(Tensor up, ckpt.Get(prefix + "up_proj.weight", {intermediate, hidden}));
  SLUICE_ASSIGN_OR_RETURN(Tensor down, ckpt.Get(prefix + "down_proj.weight", {hidden, intermediate}));
  SLUICE_ASSIGN_OR_RETURN(Tensor gate_up, kernels::ConcatRows({gate, up}));
  return FromWeights(gate_up, down, device);
}

absl::StatusOr<std::unique_ptr<SwiGluFeedForward>> SwiGluFeedForward::FromWeights(
    const Tensor& gate_up, const Tensor& down, kernels::Device device) {
  auto f = std::make_unique<SwiGluFeedForward>();
  SLUICE_ASSIGN_OR_RETURN(f->gate_up_, kernels::Linear::Create(gate_up, device));
  SLUICE_ASSIGN_OR_RETURN(f->down_, kernels::Linear::Create(down, device));
  return f;
}

absl::Status SwiGluFeedForward::Forward(const Tensor& x, Tensor* out, const RowControls*) {
  const int64_t tokens = x.dim(0);
  const int64_t inter = down_->in_features();
  SLUICE_ASSIGN_OR_RETURN(Tensor gate_up, Tensor::Empty({tokens, 2 * inter}, DType::kF32, x.device()));
  SLUICE_RETURN_IF_ERROR(gate_up_->Forward(x, &gate_up));
  SLUICE_ASSIGN_OR_RETURN(Tensor act, Tensor::Empty({tokens, inter}, DType::kF32, x.device()));
  SLUICE_RETURN_IF_ERROR(kernels::SiluMul(gate_up, &act));
  return down_->Forward(act, out);
}

double SwiGluFeedForward::FlopsPerToken() const {
  return 2.0 * (gate_up_->in_features() * gate_up_->out_features() +
                down_->in_features() * down_->out_features());
}

absl::StatusOr<std::unique_ptr<MoeFeedForward>> MoeFeedForward::Load(const ModelConfig& config,
                                                                    const Checkpoint& ckpt,
                                                                    const std::string& prefix,
                                                                    kernels::Device device) {
  auto m = std::make_unique<MoeFeedForward>();
  const MoeConfig& moe = config.moe;
  const int64_t h = config.hidden_size;
  const int64_t inter = moe.expert_intermediate_size;
  m->hidden_ = h;
  m->top_k_ = moe.experts_per_token;
  m->renormalize_ = moe.norm_topk_prob;
  std::string block = prefix + "mlp.";
  if (!ckpt.Contains(block + "gate.weight") && ckpt.Contains(prefix + "block_sparse_moe.gate.weight")) {
    block = prefix + "block_sparse_moe.";
  }
  SLUICE_ASSIGN_OR_RETURN(Tensor router, ckpt.Get(block + "gate.weight", {moe.num_experts, h}));
  SLUICE_ASSIGN_OR_RETURN(m->router_, kernels::Linear::Create(router, device));

  if (ckpt.Contains(block + "experts.gate_up_proj")) {
    // transformers >= 5 layout: gate_up [E, 2I, H] (gate rows, then up rows), down [E, H, I].
    SLUICE_ASSIGN_OR_RETURN(Tensor gate_up, ckpt.Get(block + "experts.gate_up_proj", {moe.num_experts, 2 * inter, h}));
    SLUICE_ASSIGN_OR_RETURN(Tensor down, ckpt.Get(block + "experts.down_proj", {moe.num_experts, h, inter}));
    for (int64_t e = 0; e < moe.num_experts; ++e) {
      SLUICE_ASSIGN_OR_RETURN(Tensor gu, gate_up.Rows(e, 1).Reshape({2 * inter, h}));
      SLUICE_ASSIGN_OR_RETURN(Tensor d, down.Rows(e, 1).Reshape({h, inter}));
      SLUICE_ASSIGN_OR_RETURN(auto expert, SwiGluFeedForward::FromWeights(gu, d, device));
      m->experts_.push_back(std::move(expert));
    }
  } else {
    // Hub layout, one tensor per expert: gate/up/down_proj, or Mixtral's w1/w3/w2.
    const bool mixtral_names = ckpt.Contains(block + "experts.0.w1.weight");
    for (int64_t e = 0; e < moe.num_experts; ++e) {
      const std::string ep = absl::StrCat(block, "experts.", e, ".");
      if (!mixtral_names) {
        SLUICE_ASSIGN_OR_RETURN(auto expert, SwiGluFeedForward::Load(ckpt, ep, h, inter, device));
        m->experts_.push_back(std::move(expert));
        continue;
      }
      SLUICE_ASSIGN_OR_RETURN(Tensor w1, ckpt.Get(ep + "w1.weight", {inter, h}));
      SLUICE_ASSIGN_OR_RETURN(Tensor w3, ckpt.Get(ep + "w3.weight", {inter, h}));
      SLUICE_ASSIGN_OR_RETURN(Tensor w2, ckpt.Get(ep + "w2.weight", {h, inter}));
      SLUICE_ASSIGN_OR_RETURN(Tensor gate_up, kernels::ConcatRows({w1, w3}));
      SLUICE_ASSIGN_OR_RETURN(auto expert, SwiGluFeedForward::FromWeights(gate_up, w2, device));
      m->experts_.push_back(std::move(expert));
    }
  }
  if (moe.shared_expert_intermediate_size > 0) {
    SLUICE_ASSIGN_OR_RETURN(m->shared_expert_, SwiGluFeedForward::Load(ckpt, block + "shared_expert.", h,
                                                                       moe.shared_expert_intermediate_size, device));
    SLUICE_ASSIGN_OR_RETURN(Tensor gate, ckpt.Get(block + "shared_expert_gate.weight", {1, h}));
    SLUICE_ASSIGN_OR_RETURN(m->shared_expert_gate_, kernels::Linear::Create(gate, device));
  }
  m->expert_tokens_ = std::make_unique<std::atomic<uint64_t>[]>(m->experts_.size());
  return m;
}

absl::Status MoeFeedForward::Forward(const Tensor& x, Tensor* out, const RowControls* controls) {
  const int64_t tokens = x.dim(0);
  const kernels::Device device = x.device();
  const int64_t num_experts = static_cast<int64_t>(experts_.size());
  SLUICE_ASSIGN_OR_RETURN(Tensor logits, Tensor::Empty({tokens, num_experts}, DType::kF32, device));
  SLUICE_RETURN_IF_ERROR(router_->Forward(x, &logits));
  SLUICE_ASSIGN_OR_RETURN(Tensor chosen, Tensor::Empty({tokens, top_k_}, DType::kI32, device));
  SLUICE_ASSIGN_OR_RETURN(Tensor weights, Tensor::Empty({tokens, top_k_}, DType::kF32, device));
  // Per-row k (experts_per_token); empty when every row uses the model's k.
  std::vector<int32_t> row_k;
  if (controls != nullptr && !controls->experts.empty()) {
    bool any = false;
    row_k.resize(tokens);
    for (int64_t t = 0; t < tokens; ++t) {
      const int32_t k = controls->experts[t];
      row_k[t] = k > 0 && k < top_k_ ? k : static_cast<int32_t>(top_k_);
      any = any || row_k[t] != top_k_;
    }
    if (!any) row_k.clear();
  }
  if (controls != nullptr && controls->costs != nullptr) {
    const double expert_flops = experts_[0]->FlopsPerToken();
    for (int64_t t = 0; t < tokens; ++t) {
      SequenceCost& c = (*controls->costs)[controls->row_sequence[t]];
      const int64_t k = row_k.empty() ? top_k_ : row_k[t];
      c.expert_assignments += k;
      c.moe_token_layers += 1;
      c.saved_flops += static_cast<double>(top_k_ - k) * expert_flops;
    }
  }
  SLUICE_RETURN_IF_ERROR(kernels::RouteTopK(logits, top_k_, renormalize_, &chosen, &weights, row_k));

  // Group the (token, weight) pairs by expert on the host; the metadata is tiny.
  std::vector<int32_t> host_chosen(tokens * top_k_);
  std::vector<float> host_weights(tokens * top_k_);
  SLUICE_RETURN_IF_ERROR(kernels::CopyBytes(host_chosen.data(), kernels::Device::kCpu, chosen.raw(), device, chosen.bytes()));
  SLUICE_RETURN_IF_ERROR(kernels::CopyBytes(host_weights.data(), kernels::Device::kCpu, weights.raw(), device, weights.bytes()));
  std::vector<std::vector<int32_t>> rows(num_experts);
  std::vector<std::vector<float>> scales(num_experts);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t i = 0; i < top_k_; ++i) {
      const int32_t e = host_chosen[t * top_k_ + i];
      if (e < 0) continue;  // beyond this row's experts_per_token
      rows[e].push_back(static_cast<int32_t>(t));
      scales[e].push_back(host_weights[t * top_k_ + i]);
    }
  }
  SLUICE_RETURN_IF_ERROR(kernels::FillZero(out->raw(), out->bytes(), device));
  for (int64_t e = 0; e < num_experts; ++e) {
    const int64_t n = static_cast<int64_t>(rows[e].size());
    if (n == 0) continue;  // inactive experts are never read
    expert_tokens_[e].fetch_add(static_cast<uint64_t>(n), std::memory_order_relaxed);
    SLUICE_ASSIGN_OR_RETURN(Tensor row_ids, Tensor::Empty({n}, DType::kI32, device));
    SLUICE_ASSIGN_OR_RETURN(Tensor row_scale, Tensor::Empty({n}, DType::kF32, device));
    SLUICE_RETURN_IF_ERROR(kernels::CopyBytes(row_ids.raw(), device, rows[e].data(), kernels::Device::kCpu, n * 4));
    SLUICE_RETURN_IF_ERROR(kernels::CopyBytes(row_scale.raw(), device, scales[e].data(), kernels::Device::kCpu, n * 4));
    SLUICE_ASSIGN_OR_RETURN(Tensor xe, Tensor::Empty({n, hidden_}, DType::kF32, device));
    SLUICE_RETURN_IF_ERROR(kernels::GatherRows(x, row_ids, &xe));
    SLUICE_ASSIGN_OR_RETURN(Tensor ye, Tensor::Empty({n, hidden_}, DType::kF32, device));
    SLUICE_RETURN_IF_ERROR(experts_[e]->Forward(xe, &ye));
    SLUICE_RETURN_IF_ERROR(kernels::ScaledScatterAdd(ye, row_ids, row_scale, out));
  }
  if (shared_expert_) {
    SLUICE_ASSIGN_OR_RETURN(Tensor shared, Tensor::Empty({tokens, hidden_}, DType::kF32, device));
    SLUICE_RETURN_IF_ERROR(shared_expert_->Forward(x, &shared));
    SLUICE_ASSIGN_OR_RETURN(Tensor gate, Tensor::Empty({tokens, 1}, DType::kF32, device));
    SLUICE_RETURN_IF_ERROR(shared_expert_gate_->Forward(x, &gate));
    SLUICE_RETURN_IF_ERROR(kernels::SigmoidGateInPlace(gate, &shared));
    SLUICE_RETURN_IF_ERROR(kernels::AddInPlace(shared, out));
  }
  return absl::OkStatus();
}

double MoeFeedForward::FlopsPerToken() const {
  double flops = 2.0 * router_->in_features() * router_->out_features();
  flops += top_k_ * experts_[0]->FlopsPerToken();
  if (shared_expert_) flops += shared_expert_->FlopsPerToken() + 2.0 * hidden_;
  return flops;
}

std::vector<uint64_t> MoeFeedForward::ExpertTokenCounts() const {
  std::vector<uint64_t> counts(experts_.size());
  for (size_t e = 0; e < counts.size(); ++e) counts[e] = expert_tokens_[e].load(std::memory_order_relaxed);
  return counts;
}

size_t MoeFeedForward::ActiveWeightBytes() const {
  size_t bytes = router_->weight_bytes() + top_k_ * experts_[0]->WeightBytes();
  if (shared_expert_) bytes += shared_expert_->WeightBytes() + shared_expert_gate_->weight_bytes();
  return bytes;
}

}  // namespace sluice::engine
