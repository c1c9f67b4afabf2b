#include "engine/model/causal_lm.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "engine/model/attention_mixer.h"
#include "engine/model/feed_forward.h"
#include "engine/weights/checkpoint.h"
#include "kernels/device_memory.h"
#include "kernels/ops.h"
#include "kernels/status_macros.h"

namespace sluice::engine {

using kernels::DType;
using kernels::Tensor;

absl::StatusOr<std::unique_ptr<CausalLm>> CausalLm::Load(const std::string& dir,
                                                         kernels::Device device) {
  auto model = std::unique_ptr<CausalLm>(new CausalLm());
  model->device_ = device;
  SLUICE_ASSIGN_OR_RETURN(model->config_,
                          ModelConfig::FromFile((std::filesystem::path(dir) / "config.json").string()));
  const ModelConfig& c = model->config_;
  SLUICE_ASSIGN_OR_RETURN(auto ckpt, Checkpoint::Open(dir));

  const std::string& p = c.weight_prefix;
  SLUICE_ASSIGN_OR_RETURN(Tensor embed, ckpt->Get(p + "embed_tokens.weight", {c.vocab_size, c.hidden_size}));
  if (embed.dtype() == DType::kF16 || device != kernels::Device::kCpu) {
    SLUICE_ASSIGN_OR_RETURN(embed, kernels::ToF32(embed, device));
  }
  model->embed_tokens_ = embed;

  SLUICE_ASSIGN_OR_RETURN(Tensor table, BuildRopeTable(c.rope, c.rotary_dim(), c.max_position_embeddings, device));
  auto rope = std::make_shared<const Tensor>(std::move(table));
  int attention_layer = 0;
  int linear_layer = 0;
  size_t weight_bytes = 0;
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string prefix = absl::StrCat(p, "layers.", i, ".");
    Layer layer;
    SLUICE_ASSIGN_OR_RETURN(layer.input_norm, LoadNormWeight(*ckpt, prefix + "input_layernorm.weight", c.hidden_size, device));
    SLUICE_ASSIGN_OR_RETURN(layer.post_attention_norm, LoadNormWeight(*ckpt, prefix + "post_attention_layernorm.weight", c.hidden_size, device));
    if (c.IsLinearAttentionLayer(i)) {
      SLUICE_ASSIGN_OR_RETURN(layer.mixer, LoadLinearAttentionMixer(c, *ckpt, prefix + "linear_attn.", linear_layer++, device));
    } else {
      SLUICE_ASSIGN_OR_RETURN(layer.mixer, AttentionMixer::Load(c, *ckpt, prefix + "self_attn.", attention_layer++, rope, device));
    }
    if (c.IsMoeLayer(i)) {
      SLUICE_ASSIGN_OR_RETURN(auto moe, MoeFeedForward::Load(c, *ckpt, prefix, device));
      weight_bytes += moe->ActiveWeightBytes();
      layer.ffn = std::move(moe);
    } else {
      SLUICE_ASSIGN_OR_RETURN(auto mlp, SwiGluFeedForward::Load(*ckpt, prefix + "mlp.", c.hidden_size, c.intermediate_size, device));
      weight_bytes += mlp->WeightBytes();
      layer.ffn = std::move(mlp);
    }
    weight_bytes += layer.mixer->WeightBytes();
    model->layers_.push_back(std::move(layer));
  }
  SLUICE_ASSIGN_OR_RETURN(model->final_norm_, LoadNormWeight(*ckpt, p + "norm.weight", c.hidden_size, device));
  Tensor head;
  if (c.tie_word_embeddings) {
    SLUICE_ASSIGN_OR_RETURN(head, ckpt->Get(p + "embed_tokens.weight"));
  } else {
    SLUICE_ASSIGN_OR_RETURN(head, ckpt->Get("lm_head.weight", {c.vocab_size, c.hidden_size}));
  }
  SLUICE_ASSIGN_OR_RETURN(model->lm_head_, kernels::Linear::Create(head, device));
  model->weight_bytes_per_token_ = weight_bytes + model->lm_head_->weight_bytes();
  return model;
}

KvCacheShape CausalLm::KvShape(int32_t block_size) const {
  KvCacheShape s;
  s.num_layers = static_cast<int32_t>(config_.NumAttentionLayers());
  s.block_size = block_size;
  s.num_kv_heads = config_.num_key_value_heads;
  s.head_dim = config_.head_dim;
  return s;
}

absl::Status CausalLm::Forward(const ForwardBatch& batch, PagedKvCache* kv_cache,
                               RecurrentStateCache* state_cache, std::vector<float>* logits) {
  const int64_t tokens = batch.num_tokens();
  const int64_t h = config_.hidden_size;
  if (tokens == 0) {
    logits->clear();
    return absl::OkStatus();
  }
  if (batch.positions.size() != batch.token_ids.size() ||
      batch.slot_mapping.size() != batch.token_ids.size()) {
    return absl::InvalidArgumentError("ForwardBatch: token, position and slot arrays differ in length");
  }
  auto to_device = [&](const std::vector<int32_t>& v) -> absl::StatusOr<Tensor> {
    SLUICE_ASSIGN_OR_RETURN(Tensor t, Tensor::Empty({static_cast<int64_t>(v.size())}, DType::kI32, device_));
    SLUICE_RETURN_IF_ERROR(kernels::CopyBytes(t.raw(), device_, v.data(), kernels::Device::kCpu, v.size() * 4));
    return t;
  };
  StepTensors step;
  step.batch = &batch;
  step.kv_cache = kv_cache;
  step.state_cache = state_cache;
  if (config_.NumLinearAttentionLayers() > 0 &&
      (state_cache == nullptr || batch.state_slots.size() != batch.sequences.size() ||
       batch.state_fresh.size() != batch.sequences.size())) {
    return absl::InvalidArgumentError("ForwardBatch: a hybrid model needs a state slot per sequence");
  }
  SLUICE_ASSIGN_OR_RETURN(Tensor ids, to_device(batch.token_ids));
  SLUICE_ASSIGN_OR_RETURN(step.positions, to_device(batch.positions));
  SLUICE_ASSIGN_OR_RETURN(step.slot_mapping, to_device(batch.slot_mapping));

  SLUICE_ASSIGN_OR_RETURN(Tensor x, Tensor::Empty({tokens, h}, DType::kF32, device_));
  SLUICE_RETURN_IF_ERROR(kernels::EmbeddingLookup(embed_tokens_, ids, &x));
  SLUICE_ASSIGN_OR_RETURN(Tensor normed, Tensor::Empty({tokens, h}, DType::kF32, device_));
  SLUICE_ASSIGN_OR_RETURN(Tensor branch, Tensor::Empty({tokens, h}, DType::kF32, device_));
  const float eps = static_cast<float>(config_.rms_norm_eps);
  const float offset = config_.norm_weight_offset;
  for (Layer& layer : layers_) {
    SLUICE_RETURN_IF_ERROR(kernels::RmsNorm(x, layer.input_norm, eps, offset, &normed));
    SLUICE_RETURN_IF_ERROR(layer.mixer->Forward(step, normed, &branch));
    SLUICE_RETURN_IF_ERROR(kernels::AddInPlace(branch, &x));
    SLUICE_RETURN_IF_ERROR(kernels::RmsNorm(x, layer.post_attention_norm, eps, offset, &normed));
    SLUICE_RETURN_IF_ERROR(layer.ffn->Forward(normed, &branch));
    SLUICE_RETURN_IF_ERROR(kernels::AddInPlace(branch, &x));
  }
  // Only the rows that need logits go through the final norm and the LM head.
  const int64_t rows = static_cast<int64_t>(batch.logit_rows.size());
  SLUICE_ASSIGN_OR_RETURN(Tensor row_ids, to_device(batch.logit_rows));
  SLUICE_ASSIGN_OR_RETURN(Tensor picked, Tensor::Empty({rows, h}, DType::kF32, device_));
  SLUICE_RETURN_IF_ERROR(kernels::GatherRows(x, row_ids, &picked));
  SLUICE_RETURN_IF_ERROR(kernels::RmsNorm(picked, final_norm_, eps, offset, &picked));
  SLUICE_ASSIGN_OR_RETURN(Tensor out, Tensor::Empty({rows, config_.vocab_size}, DType::kF32, device_));
  SLUICE_RETURN_IF_ERROR(lm_head_->Forward(picked, &out));
  logits->resize(rows * config_.vocab_size);
  return kernels::CopyBytes(logits->data(), kernels::Device::kCpu, out.raw(), device_, out.bytes());
}

StateCacheShape CausalLm::StateShape() const {
  StateCacheShape s;
  s.num_layers = static_cast<int32_t>(config_.NumLinearAttentionLayers());
  s.conv_dim = config_.linear.conv_dim();
  s.conv_tail = config_.linear.conv_kernel - 1;
  s.num_value_heads = config_.linear.num_value_heads;
  s.key_head_dim = config_.linear.key_head_dim;
  s.value_head_dim = config_.linear.value_head_dim;
  return s;
}

double CausalLm::DenseFlops(int64_t past, int64_t tokens) const {
  double flops = 0;
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t context = past + t + 1;
    for (const Layer& layer : layers_) {
      flops += layer.mixer->FlopsPerToken(context) + layer.ffn->FlopsPerToken();
    }
  }
  // The LM head runs once per sampled position; count it per new token for simplicity
  // of a dense reference: prefill runs it only on the last token.
  flops += 2.0 * lm_head_->in_features() * lm_head_->out_features();
  return flops;
}

uint64_t CausalLm::WeightBytesPerToken() const { return weight_bytes_per_token_; }

}  // namespace sluice::engine
