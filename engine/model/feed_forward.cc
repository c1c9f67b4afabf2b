#include "engine/model/feed_forward.h"

#include "absl/strings/str_cat.h"
#include "kernels/device_memory.h"
#include "kernels/moe.h"
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
  // The router and the shared-expert gate stay as stored under --quantization (causal_lm.cc).
  SLUICE_ASSIGN_OR_RETURN(m->router_, kernels::Linear::Create(router, device, kernels::LinearOptions{}));

  // Each expert's stacked [gate | up] and down weights; GroupedExperts packs them all.
  std::vector<Tensor> gate_ups, downs;
  if (ckpt.Contains(block + "experts.gate_up_proj")) {
    // transformers >= 5 layout: gate_up [E, 2I, H] (gate rows, then up rows), down [E, H, I].
    SLUICE_ASSIGN_OR_RETURN(Tensor gate_up, ckpt.Get(block + "experts.gate_up_proj", {moe.num_experts, 2 * inter, h}));
    SLUICE_ASSIGN_OR_RETURN(Tensor down, ckpt.Get(block + "experts.down_proj", {moe.num_experts, h, inter}));
    for (int64_t e = 0; e < moe.num_experts; ++e) {
      SLUICE_ASSIGN_OR_RETURN(Tensor gu, gate_up.Rows(e, 1).Reshape({2 * inter, h}));
      SLUICE_ASSIGN_OR_RETURN(Tensor d, down.Rows(e, 1).Reshape({h, inter}));
      gate_ups.push_back(std::move(gu));
      downs.push_back(std::move(d));
    }
  } else {
    // Hub layout, one tensor per expert: gate/up/down_proj, or Mixtral's w1/w3/w2.
    const bool mixtral_names = ckpt.Contains(block + "experts.0.w1.weight");
    for (int64_t e = 0; e < moe.num_experts; ++e) {
      const std::string ep = absl::StrCat(block, "experts.", e, ".");
      const std::string gate_name = ep + (mixtral_names ? "w1.weight" : "gate_proj.weight");
      const std::string up_name = ep + (mixtral_names ? "w3.weight" : "up_proj.weight");
      const std::string down_name = ep + (mixtral_names ? "w2.weight" : "down_proj.weight");
      SLUICE_ASSIGN_OR_RETURN(Tensor gate, ckpt.Get(gate_name, {inter, h}));
      SLUICE_ASSIGN_OR_RETURN(Tensor up, ckpt.Get(up_name, {inter, h}));
      SLUICE_ASSIGN_OR_RETURN(Tensor down, ckpt.Get(down_name, {h, inter}));
      SLUICE_ASSIGN_OR_RETURN(Tensor gate_up, kernels::ConcatRows({gate, up}));
      gate_ups.push_back(std::move(gate_up));
      downs.push_back(std::move(down));
    }
  }
  // Quantized with the options in force: CausalLm::Load's scope for --quantization packs
  // the routed experts int8 or int4, like every projection, whatever the checkpoint's dtype.
  SLUICE_ASSIGN_OR_RETURN(m->experts_, kernels::GroupedExperts::Create(gate_ups, downs, device,
                                                                       kernels::DefaultLinearOptions()));
  gate_ups.clear();  // the stacked copies are packed now
  downs.clear();
  if (moe.shared_expert_intermediate_size > 0) {
    SLUICE_ASSIGN_OR_RETURN(m->shared_expert_, SwiGluFeedForward::Load(ckpt, block + "shared_expert.", h,
                                                                       moe.shared_expert_intermediate_size, device));
    SLUICE_ASSIGN_OR_RETURN(Tensor gate, ckpt.Get(block + "shared_expert_gate.weight", {1, h}));
    SLUICE_ASSIGN_OR_RETURN(m->shared_expert_gate_, kernels::Linear::Create(gate, device, kernels::LinearOptions{}));
  }
  SLUICE_ASSIGN_OR_RETURN(m->expert_tokens_, Tensor::Zeros({moe.num_experts}, DType::kI64, device));
  return m;
}

absl::Status MoeFeedForward::Forward(const Tensor& x, Tensor* out, const RowControls* controls) {
  const int64_t tokens = x.dim(0);
  const kernels::Device device = x.device();
  const int64_t num_experts = experts_->num_experts();
  SLUICE_ASSIGN_OR_RETURN(Tensor logits, Tensor::Empty({tokens, num_experts}, DType::kF32, device));
  SLUICE_RETURN_IF_ERROR(router_->Forward(x, &logits));
  SLUICE_ASSIGN_OR_RETURN(Tensor chosen, Tensor::Empty({tokens, top_k_}, DType::kI32, device));
  SLUICE_ASSIGN_OR_RETURN(Tensor weights, Tensor::Empty({tokens, top_k_}, DType::kF32, device));
  // Per-row k (experts_per_token); empty when every row uses the model's k. The budget
  // controls are host data the step already holds, so costs need no device read.
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
    const double expert_flops = experts_->ExpertFlopsPerToken();
    for (int64_t t = 0; t < tokens; ++t) {
      SequenceCost& c = (*controls->costs)[controls->row_sequence[t]];
      const int64_t k = row_k.empty() ? top_k_ : row_k[t];
      c.expert_assignments += k;
      c.moe_token_layers += 1;
      c.saved_flops += static_cast<double>(top_k_ - k) * expert_flops;
    }
  }
  Tensor row_k_tensor;  // undefined: every row keeps k
  if (!row_k.empty()) {
    if (device == kernels::Device::kCpu) {
      // Host memory is the CPU's device memory: borrow the vector, no copy.
      row_k_tensor = Tensor::FromBuffer(kernels::Buffer::Borrow(row_k.data(), row_k.size() * 4, device, nullptr),
                                        0, {tokens}, DType::kI32);
    } else {
      // One counted upload per MoE layer, only when a budget sets experts_per_token.
      SLUICE_ASSIGN_OR_RETURN(row_k_tensor, kernels::TensorFromHost(absl::Span<const int32_t>(row_k), {tokens},
                                                                    DType::kI32, device));
    }
  }
  SLUICE_RETURN_IF_ERROR(kernels::RouteTopK(logits, top_k_, renormalize_, &chosen, &weights, row_k_tensor));

  // Group the routed entries by expert on the device, then run all active experts in one op.
  SLUICE_ASSIGN_OR_RETURN(Tensor offsets, Tensor::Empty({num_experts + 1}, DType::kI32, device));
  SLUICE_ASSIGN_OR_RETURN(Tensor sorted_rows, Tensor::Empty({tokens * top_k_}, DType::kI32, device));
  SLUICE_ASSIGN_OR_RETURN(Tensor sorted_weights, Tensor::Empty({tokens * top_k_}, DType::kF32, device));
  SLUICE_RETURN_IF_ERROR(
      kernels::AlignRowsByExpert(chosen, weights, &offsets, &sorted_rows, &sorted_weights, &expert_tokens_));
  SLUICE_RETURN_IF_ERROR(experts_->Forward(x, offsets, sorted_rows, sorted_weights, out));
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
  flops += top_k_ * experts_->ExpertFlopsPerToken();
  if (shared_expert_) flops += shared_expert_->FlopsPerToken() + 2.0 * hidden_;
  return flops;
}

std::vector<uint64_t> MoeFeedForward::ExpertTokenCounts() const {
  auto counts = kernels::ReadExpertTokenCounter(expert_tokens_);
  return counts.ok() ? *std::move(counts) : std::vector<uint64_t>(experts_->num_experts(), 0);
}

size_t MoeFeedForward::ActiveWeightBytes() const {
  size_t bytes = router_->weight_bytes() + top_k_ * experts_->ExpertWeightBytes();
  if (shared_expert_) bytes += shared_expert_->WeightBytes() + shared_expert_gate_->weight_bytes();
  return bytes;
}

}  // namespace sluice::engine
