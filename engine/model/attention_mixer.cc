#include "engine/model/attention_mixer.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/device_memory.h"
#include "kernels/status_macros.h"

namespace sluice::engine {

using kernels::DType;
using kernels::Tensor;

namespace {

// Reorders q_proj rows from per-head [q_h (d) | gate_h (d)] to [all q | all gates].
absl::StatusOr<Tensor> DeinterleaveQueryGate(const Tensor& q_proj, int64_t heads, int64_t d) {
  if (q_proj.device() != kernels::Device::kCpu) return absl::UnimplementedError("weight not on the CPU");
  SLUICE_ASSIGN_OR_RETURN(Tensor out, Tensor::Empty(q_proj.shape(), q_proj.dtype()));
  const size_t row_bytes = q_proj.dim(1) * kernels::DTypeSize(q_proj.dtype());
  const char* src = static_cast<const char*>(q_proj.raw());
  char* dst = static_cast<char*>(out.raw());
  for (int64_t h = 0; h < heads; ++h) {
    std::memcpy(dst + h * d * row_bytes, src + (2 * h) * d * row_bytes, d * row_bytes);
    std::memcpy(dst + (heads + h) * d * row_bytes, src + (2 * h + 1) * d * row_bytes, d * row_bytes);
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<AttentionMixer>> AttentionMixer::Load(
    const ModelConfig& config, const Checkpoint& ckpt, const std::string& prefix,
    int cache_layer, std::shared_ptr<const Tensor> rope_table, kernels::Device device,
    bool key_value_only_path) {
  auto m = std::make_unique<AttentionMixer>();
  m->num_heads_ = config.num_attention_heads;
  m->num_kv_heads_ = config.num_key_value_heads;
  m->head_dim_ = config.head_dim;
  m->rotary_dim_ = config.rotary_dim();
  m->eps_ = static_cast<float>(config.rms_norm_eps);
  m->norm_offset_ = config.norm_weight_offset;
  m->qk_norm_ = config.qk_norm;
  m->output_gate_ = config.attention_output_gate;
  if (config.clip_qkv) m->clip_qkv_ = static_cast<float>(*config.clip_qkv);
  m->cache_layer_ = cache_layer;
  m->rope_table_ = std::move(rope_table);
  const int64_t h = config.hidden_size;
  m->hidden_ = h;
  const int64_t q_width = m->num_heads_ * m->head_dim_;
  const int64_t kv_width = m->num_kv_heads_ * m->head_dim_;
  SLUICE_ASSIGN_OR_RETURN(Tensor q, ckpt.Get(prefix + "q_proj.weight", {q_width * (m->output_gate_ ? 2 : 1), h}));
  SLUICE_ASSIGN_OR_RETURN(Tensor k, ckpt.Get(prefix + "k_proj.weight", {kv_width, h}));
  SLUICE_ASSIGN_OR_RETURN(Tensor v, ckpt.Get(prefix + "v_proj.weight", {kv_width, h}));
  SLUICE_ASSIGN_OR_RETURN(Tensor o, ckpt.Get(prefix + "o_proj.weight", {h, q_width}));
  if (m->output_gate_) {
    SLUICE_ASSIGN_OR_RETURN(q, DeinterleaveQueryGate(q, m->num_heads_, m->head_dim_));
  }
  SLUICE_ASSIGN_OR_RETURN(Tensor qkv, kernels::ConcatRows({q, k, v}));
  SLUICE_ASSIGN_OR_RETURN(m->qkv_proj_, kernels::Linear::Create(
                                         qkv, device,
                                         kernels::OptionsForPart(kernels::DefaultLinearOptions(), kernels::kLinearPartAttentionInput)));
  SLUICE_ASSIGN_OR_RETURN(m->o_proj_, kernels::Linear::Create(o, device));
  if (key_value_only_path) {
    SLUICE_ASSIGN_OR_RETURN(Tensor kv, kernels::ConcatRows({k, v}));
    SLUICE_ASSIGN_OR_RETURN(m->kv_proj_, kernels::Linear::Create(kv, device));
  }
  if (m->qk_norm_ == QkNorm::kPerHead) {
    SLUICE_ASSIGN_OR_RETURN(m->q_norm_, LoadNormWeight(ckpt, prefix + "q_norm.weight", m->head_dim_, device));
    SLUICE_ASSIGN_OR_RETURN(m->k_norm_, LoadNormWeight(ckpt, prefix + "k_norm.weight", m->head_dim_, device));
  } else if (m->qk_norm_ == QkNorm::kWholeProjection) {
    SLUICE_ASSIGN_OR_RETURN(m->q_norm_, LoadNormWeight(ckpt, prefix + "q_norm.weight", q_width, device));
    SLUICE_ASSIGN_OR_RETURN(m->k_norm_, LoadNormWeight(ckpt, prefix + "k_norm.weight", kv_width, device));
  }
  return m;
}

absl::Status AttentionMixer::Forward(const StepTensors& step, const Tensor& x, Tensor* out) {
  const int64_t tokens = x.dim(0);
  const int64_t q_width = num_heads_ * head_dim_;
  const int64_t kv_width = num_kv_heads_ * head_dim_;
  const int64_t gate_width = output_gate_ ? q_width : 0;
  const kernels::Device device = x.device();
  SLUICE_ASSIGN_OR_RETURN(Tensor qkv, Tensor::Empty({tokens, q_width + gate_width + 2 * kv_width}, DType::kF32, device));
  SLUICE_RETURN_IF_ERROR(qkv_proj_->Forward(x, &qkv));
  // Split the fused projection into contiguous parts (2-D views for the copies and the
  // whole-projection norms, 3-D [T, heads, d] views for the rest).
  SLUICE_ASSIGN_OR_RETURN(Tensor q2, Tensor::Empty({tokens, q_width}, DType::kF32, device));
  SLUICE_ASSIGN_OR_RETURN(Tensor k2, Tensor::Empty({tokens, kv_width}, DType::kF32, device));
  SLUICE_ASSIGN_OR_RETURN(Tensor v2, Tensor::Empty({tokens, kv_width}, DType::kF32, device));
  Tensor gate;
  SLUICE_RETURN_IF_ERROR(kernels::CopyColumns(qkv, 0, &q2));
  if (output_gate_) {
    SLUICE_ASSIGN_OR_RETURN(gate, Tensor::Empty({tokens, q_width}, DType::kF32, device));
    SLUICE_RETURN_IF_ERROR(kernels::CopyColumns(qkv, q_width, &gate));
  }
  SLUICE_RETURN_IF_ERROR(kernels::CopyColumns(qkv, q_width + gate_width, &k2));
  SLUICE_RETURN_IF_ERROR(kernels::CopyColumns(qkv, q_width + gate_width + kv_width, &v2));
  SLUICE_ASSIGN_OR_RETURN(Tensor q, q2.Reshape({tokens, num_heads_, head_dim_}));
  SLUICE_ASSIGN_OR_RETURN(Tensor k, k2.Reshape({tokens, num_kv_heads_, head_dim_}));
  SLUICE_ASSIGN_OR_RETURN(Tensor v, v2.Reshape({tokens, num_kv_heads_, head_dim_}));
  if (qk_norm_ == QkNorm::kPerHead) {
    SLUICE_RETURN_IF_ERROR(kernels::RmsNorm(q, q_norm_, eps_, norm_offset_, &q));
    SLUICE_RETURN_IF_ERROR(kernels::RmsNorm(k, k_norm_, eps_, norm_offset_, &k));
  } else if (qk_norm_ == QkNorm::kWholeProjection) {
    SLUICE_RETURN_IF_ERROR(kernels::RmsNorm(q2, q_norm_, eps_, norm_offset_, &q2));
    SLUICE_RETURN_IF_ERROR(kernels::RmsNorm(k2, k_norm_, eps_, norm_offset_, &k2));
  }
  if (clip_qkv_) {
    SLUICE_RETURN_IF_ERROR(kernels::ClampInPlace(*clip_qkv_, &q2));
    SLUICE_RETURN_IF_ERROR(kernels::ClampInPlace(*clip_qkv_, &k2));
    SLUICE_RETURN_IF_ERROR(kernels::ClampInPlace(*clip_qkv_, &v2));
  }
  SLUICE_RETURN_IF_ERROR(kernels::ApplyRotaryEmbedding(step.positions, *rope_table_, rotary_dim_, &q));
  SLUICE_RETURN_IF_ERROR(kernels::ApplyRotaryEmbedding(step.positions, *rope_table_, rotary_dim_, &k));
  Tensor& k_cache = step.kv_cache->key(cache_layer_);
  Tensor& v_cache = step.kv_cache->value(cache_layer_);
  // Undefined unless the cache is fp8 (per-row scales).
  Tensor& k_scale = step.kv_cache->key_scale(cache_layer_);
  Tensor& v_scale = step.kv_cache->value_scale(cache_layer_);
  SLUICE_RETURN_IF_ERROR(
      kernels::WriteKvCache(k, v, step.slot_mapping, &k_cache, &v_cache, &k_scale, &v_scale));
  // Attention-gate floor: decide per (token, head) from the output gate, before
  // attention, as a device mask PagedAttention reads (no host round trip).
  Tensor head_skip;
  const RowControls* controls = step.controls;
  if (controls != nullptr && output_gate_ && !controls->gate_floor.empty()) {
    SLUICE_ASSIGN_OR_RETURN(Tensor means, Tensor::Empty({tokens, num_heads_}, DType::kF32, device));
    SLUICE_RETURN_IF_ERROR(kernels::SigmoidGroupMean(gate, &means));
    SLUICE_ASSIGN_OR_RETURN(Tensor floors, Tensor::Empty({tokens}, DType::kF32, device));
    SLUICE_RETURN_IF_ERROR(kernels::CopyFromHost(controls->gate_floor.data(), &floors));
    if (controls->head_skips != nullptr) {
      std::vector<double> attended(tokens);
      for (int64_t t = 0; t < tokens; ++t) attended[t] = 4.0 * (step.batch->positions[t] + 1) * head_dim_;
      SLUICE_ASSIGN_OR_RETURN(head_skip, controls->head_skips->NextMask(controls->row_sequence, std::move(attended)));
    } else {
      SLUICE_ASSIGN_OR_RETURN(head_skip, Tensor::Empty({tokens, num_heads_}, DType::kI32, device));
    }
    SLUICE_RETURN_IF_ERROR(kernels::HeadSkipMask(means, floors, &head_skip));
  }
  if (controls != nullptr && controls->costs != nullptr) {
    for (int64_t t = 0; t < tokens; ++t) {
      (*controls->costs)[controls->row_sequence[t]].heads_total += num_heads_;
    }
  }
  SLUICE_ASSIGN_OR_RETURN(Tensor attn, Tensor::Empty({tokens, num_heads_, head_dim_}, DType::kF32, device));
  SLUICE_RETURN_IF_ERROR(kernels::PagedAttention(q, k_cache, v_cache, step.attention,
                                                 1.0f / std::sqrt(static_cast<float>(head_dim_)),
                                                 &attn, head_skip, k_scale, v_scale));
  SLUICE_ASSIGN_OR_RETURN(Tensor attn2d, attn.Reshape({tokens, q_width}));
  if (output_gate_) SLUICE_RETURN_IF_ERROR(kernels::SigmoidGateInPlace(gate, &attn2d));
  return o_proj_->Forward(attn2d, out);
}

absl::Status AttentionMixer::WriteSkippedRows(const StepTensors& step, const Tensor& x) {
  if (kv_proj_ == nullptr) return absl::FailedPreconditionError("attention: no key/value-only path");
  const int64_t tokens = x.dim(0);
  const int64_t kv_width = num_kv_heads_ * head_dim_;
  const kernels::Device device = x.device();
  SLUICE_ASSIGN_OR_RETURN(Tensor kv, Tensor::Empty({tokens, 2 * kv_width}, DType::kF32, device));
  SLUICE_RETURN_IF_ERROR(kv_proj_->Forward(x, &kv));
  SLUICE_ASSIGN_OR_RETURN(Tensor k2, Tensor::Empty({tokens, kv_width}, DType::kF32, device));
  SLUICE_ASSIGN_OR_RETURN(Tensor v2, Tensor::Empty({tokens, kv_width}, DType::kF32, device));
  SLUICE_RETURN_IF_ERROR(kernels::CopyColumns(kv, 0, &k2));
  SLUICE_RETURN_IF_ERROR(kernels::CopyColumns(kv, kv_width, &v2));
  SLUICE_ASSIGN_OR_RETURN(Tensor k, k2.Reshape({tokens, num_kv_heads_, head_dim_}));
  SLUICE_ASSIGN_OR_RETURN(Tensor v, v2.Reshape({tokens, num_kv_heads_, head_dim_}));
  // The same steps as Forward's k/v path, in the same order.
  if (qk_norm_ == QkNorm::kPerHead) {
    SLUICE_RETURN_IF_ERROR(kernels::RmsNorm(k, k_norm_, eps_, norm_offset_, &k));
  } else if (qk_norm_ == QkNorm::kWholeProjection) {
    SLUICE_RETURN_IF_ERROR(kernels::RmsNorm(k2, k_norm_, eps_, norm_offset_, &k2));
  }
  if (clip_qkv_) {
    SLUICE_RETURN_IF_ERROR(kernels::ClampInPlace(*clip_qkv_, &k2));
    SLUICE_RETURN_IF_ERROR(kernels::ClampInPlace(*clip_qkv_, &v2));
  }
  SLUICE_RETURN_IF_ERROR(kernels::ApplyRotaryEmbedding(step.positions, *rope_table_, rotary_dim_, &k));
  return kernels::WriteKvCache(k, v, step.slot_mapping, &step.kv_cache->key(cache_layer_),
                               &step.kv_cache->value(cache_layer_),
                               &step.kv_cache->key_scale(cache_layer_),
                               &step.kv_cache->value_scale(cache_layer_));
}

double AttentionMixer::FlopsPerToken(int64_t context) const {
  const double proj = 2.0 * (qkv_proj_->in_features() * qkv_proj_->out_features() +
                             o_proj_->in_features() * o_proj_->out_features());
  // Scores and the weighted sum of values: 2 · 2 · context · d per query head.
  const double attend = 4.0 * static_cast<double>(context) * head_dim_ * num_heads_;
  return proj + attend;
}

LayerCacheSpec AttentionMixer::CacheSpec() const {
  LayerCacheSpec spec;
  spec.kind = LayerCacheSpec::Kind::kKvBlocks;
  spec.num_kv_heads = num_kv_heads_;
  spec.head_dim = head_dim_;
  return spec;
}

absl::StatusOr<std::unique_ptr<Mixer>> LoadAttentionMixer(const MixerContext& c) {
  SLUICE_ASSIGN_OR_RETURN(auto mixer, AttentionMixer::Load(*c.config, *c.checkpoint, c.prefix, c.cache_index,
                                                           c.rope_table, c.device,
                                                           /*key_value_only_path=*/c.gated_branch));
  return std::unique_ptr<Mixer>(std::move(mixer));
}

}  // namespace sluice::engine
