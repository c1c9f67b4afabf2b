#include "engine/model/blocks.h"

#include <cmath>
#include <numbers>

#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace sluice::engine {

using kernels::DType;
using kernels::Tensor;

absl::StatusOr<Tensor> BuildRopeTable(const RopeConfig& rope, int64_t rotary_dim,
                                      int64_t max_positions, kernels::Device device) {
  const int64_t half = rotary_dim / 2;
  // inv_freq as transformers computes it (rope_init_fn), then the family's scaling.
  std::vector<double> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) {
    inv_freq[i] = 1.0 / std::pow(rope.theta, static_cast<double>(2 * i) / rotary_dim);
    inv_freq[i] = static_cast<float>(inv_freq[i]);
  }
  if (rope.type == "linear") {
    for (double& f : inv_freq) f /= rope.factor;
  } else if (rope.type == "llama3") {
    // Llama 3.1: keep high frequencies, divide low ones by `factor`, blend in between.
    const double old_len = static_cast<double>(rope.original_max_position_embeddings);
    const double low_wavelen = old_len / rope.low_freq_factor;
    const double high_wavelen = old_len / rope.high_freq_factor;
    for (double& f : inv_freq) {
      const double wavelen = 2 * std::numbers::pi / f;
      if (wavelen > low_wavelen) {
        f = f / rope.factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth = (old_len / wavelen - rope.low_freq_factor) /
                              (rope.high_freq_factor - rope.low_freq_factor);
        f = (1 - smooth) * f / rope.factor + smooth * f;
      }
      f = static_cast<float>(f);
    }
  }
  SLUICE_ASSIGN_OR_RETURN(Tensor host, Tensor::Empty({max_positions, rotary_dim}, DType::kF32));
  float* t = host.data<float>();
  for (int64_t p = 0; p < max_positions; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      // transformers forms the angle in f32 (position · inv_freq), then cos/sin.
      const float angle = static_cast<float>(p) * static_cast<float>(inv_freq[i]);
      t[p * rotary_dim + i] = std::cos(angle);
      t[p * rotary_dim + half + i] = std::sin(angle);
    }
  }
  if (device == kernels::Device::kCpu) return host;
  return absl::UnimplementedError("RoPE table on a GPU device");
}

absl::StatusOr<Tensor> LoadNormWeight(const Checkpoint& ckpt, const std::string& name,
                                      int64_t dim, kernels::Device device) {
  SLUICE_ASSIGN_OR_RETURN(Tensor w, ckpt.Get(name, {dim}));
  return kernels::ToF32(w, device);
}

absl::StatusOr<std::unique_ptr<AttentionMixer>> AttentionMixer::Load(
    const ModelConfig& config, const Checkpoint& ckpt, const std::string& prefix,
    int cache_layer, std::shared_ptr<const Tensor> rope_table, kernels::Device device) {
  auto m = std::make_unique<AttentionMixer>();
  m->num_heads_ = config.num_attention_heads;
  m->num_kv_heads_ = config.num_key_value_heads;
  m->head_dim_ = config.head_dim;
  m->rotary_dim_ = config.rotary_dim();
  m->eps_ = static_cast<float>(config.rms_norm_eps);
  m->cache_layer_ = cache_layer;
  m->rope_table_ = std::move(rope_table);
  const int64_t h = config.hidden_size;
  const int64_t q_out = m->num_heads_ * m->head_dim_;
  const int64_t kv_out = m->num_kv_heads_ * m->head_dim_;
  SLUICE_ASSIGN_OR_RETURN(Tensor q, ckpt.Get(prefix + "q_proj.weight", {q_out, h}));
  SLUICE_ASSIGN_OR_RETURN(Tensor k, ckpt.Get(prefix + "k_proj.weight", {kv_out, h}));
  SLUICE_ASSIGN_OR_RETURN(Tensor v, ckpt.Get(prefix + "v_proj.weight", {kv_out, h}));
  SLUICE_ASSIGN_OR_RETURN(Tensor o, ckpt.Get(prefix + "o_proj.weight", {h, q_out}));
  SLUICE_ASSIGN_OR_RETURN(Tensor qkv, kernels::ConcatRows({q, k, v}));
  SLUICE_ASSIGN_OR_RETURN(m->qkv_proj_, kernels::Linear::Create(qkv, device));
  SLUICE_ASSIGN_OR_RETURN(m->o_proj_, kernels::Linear::Create(o, device));
  if (config.qk_norm) {
    SLUICE_ASSIGN_OR_RETURN(m->q_norm_, LoadNormWeight(ckpt, prefix + "q_norm.weight", m->head_dim_, device));
    SLUICE_ASSIGN_OR_RETURN(m->k_norm_, LoadNormWeight(ckpt, prefix + "k_norm.weight", m->head_dim_, device));
  }
  return m;
}

absl::Status AttentionMixer::Forward(const StepTensors& step, const Tensor& x, Tensor* out) {
  const int64_t tokens = x.dim(0);
  const int64_t q_width = num_heads_ * head_dim_;
  const int64_t kv_width = num_kv_heads_ * head_dim_;
  const kernels::Device device = x.device();
  SLUICE_ASSIGN_OR_RETURN(Tensor qkv, Tensor::Empty({tokens, q_width + 2 * kv_width}, DType::kF32, device));
  SLUICE_RETURN_IF_ERROR(qkv_proj_->Forward(x, &qkv));
  // Split the fused projection into contiguous q, k, v (row strides differ otherwise).
  SLUICE_ASSIGN_OR_RETURN(Tensor q, Tensor::Empty({tokens, num_heads_, head_dim_}, DType::kF32, device));
  SLUICE_ASSIGN_OR_RETURN(Tensor k, Tensor::Empty({tokens, num_kv_heads_, head_dim_}, DType::kF32, device));
  SLUICE_ASSIGN_OR_RETURN(Tensor v, Tensor::Empty({tokens, num_kv_heads_, head_dim_}, DType::kF32, device));
  {
    SLUICE_ASSIGN_OR_RETURN(Tensor q2, q.Reshape({tokens, q_width}));
    SLUICE_ASSIGN_OR_RETURN(Tensor k2, k.Reshape({tokens, kv_width}));
    SLUICE_ASSIGN_OR_RETURN(Tensor v2, v.Reshape({tokens, kv_width}));
    SLUICE_RETURN_IF_ERROR(kernels::CopyColumns(qkv, 0, &q2));
    SLUICE_RETURN_IF_ERROR(kernels::CopyColumns(qkv, q_width, &k2));
    SLUICE_RETURN_IF_ERROR(kernels::CopyColumns(qkv, q_width + kv_width, &v2));
  }
  if (q_norm_.defined()) {
    SLUICE_RETURN_IF_ERROR(kernels::RmsNorm(q, q_norm_, eps_, 0.f, &q));
    SLUICE_RETURN_IF_ERROR(kernels::RmsNorm(k, k_norm_, eps_, 0.f, &k));
  }
  SLUICE_RETURN_IF_ERROR(kernels::ApplyRotaryEmbedding(step.positions, *rope_table_, rotary_dim_, &q));
  SLUICE_RETURN_IF_ERROR(kernels::ApplyRotaryEmbedding(step.positions, *rope_table_, rotary_dim_, &k));
  Tensor& k_cache = step.kv_cache->key(cache_layer_);
  Tensor& v_cache = step.kv_cache->value(cache_layer_);
  SLUICE_RETURN_IF_ERROR(kernels::WriteKvCache(k, v, step.slot_mapping, &k_cache, &v_cache));
  SLUICE_ASSIGN_OR_RETURN(Tensor attn, Tensor::Empty({tokens, num_heads_, head_dim_}, DType::kF32, device));
  SLUICE_RETURN_IF_ERROR(kernels::PagedAttention(q, k_cache, v_cache, step.batch->sequences,
                                                 1.0f / std::sqrt(static_cast<float>(head_dim_)),
                                                 &attn));
  SLUICE_ASSIGN_OR_RETURN(Tensor attn2d, attn.Reshape({tokens, q_width}));
  return o_proj_->Forward(attn2d, out);
}

double AttentionMixer::FlopsPerToken(int64_t context) const {
  const double proj = 2.0 * (qkv_proj_->in_features() * qkv_proj_->out_features() +
                             o_proj_->in_features() * o_proj_->out_features());
  // Scores and the weighted sum of values: 2 · 2 · context · d per query head.
  const double attend = 4.0 * static_cast<double>(context) * head_dim_ * num_heads_;
  return proj + attend;
}

absl::StatusOr<std::unique_ptr<SwiGluFeedForward>> SwiGluFeedForward::Load(
    const Checkpoint& ckpt, const std::string& prefix, int64_t hidden, int64_t intermediate,
    kernels::Device device) {
  auto f = std::make_unique<SwiGluFeedForward>();
  SLUICE_ASSIGN_OR_RETURN(Tensor gate, ckpt.Get(prefix + "gate_proj.weight", {intermediate, hidden}));
  SLUICE_ASSIGN_OR_RETURN(Tensor up, ckpt.Get(prefix + "up_proj.weight", {intermediate, hidden}));
  SLUICE_ASSIGN_OR_RETURN(Tensor down, ckpt.Get(prefix + "down_proj.weight", {hidden, intermediate}));
  SLUICE_ASSIGN_OR_RETURN(Tensor gate_up, kernels::ConcatRows({gate, up}));
  SLUICE_ASSIGN_OR_RETURN(f->gate_up_, kernels::Linear::Create(gate_up, device));
  SLUICE_ASSIGN_OR_RETURN(f->down_, kernels::Linear::Create(down, device));
  return f;
}

absl::Status SwiGluFeedForward::Forward(const Tensor& x, Tensor* out) {
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

}  // namespace sluice::engine
