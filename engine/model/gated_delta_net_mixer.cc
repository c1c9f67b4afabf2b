#include "engine/model/gated_delta_net_mixer.h"

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/device_memory.h"
#include "kernels/gated_delta_net.h"
#include "kernels/status_macros.h"

namespace sluice::engine {

using kernels::DType;
using kernels::Tensor;

namespace {

// Copies row blocks [begin, begin + count) of `src` to the end of `dst` (same dtype).
void AppendRows(const Tensor& src, int64_t begin, int64_t count, std::vector<char>* dst) {
  const size_t row = src.dim(1) * kernels::DTypeSize(src.dtype());
  const char* p = static_cast<const char*>(src.raw()) + begin * row;
  dst->insert(dst->end(), p, p + count * row);
}

absl::StatusOr<Tensor> FromRows(const std::vector<char>& bytes, int64_t rows, int64_t cols, DType dtype) {
  SLUICE_ASSIGN_OR_RETURN(Tensor t, Tensor::Empty({rows, cols}, dtype));
  if (bytes.size() != t.bytes()) return absl::InternalError("row reorder size mismatch");
  std::memcpy(t.raw(), bytes.data(), bytes.size());
  return t;
}

}  // namespace

absl::StatusOr<std::unique_ptr<GatedDeltaNetMixer>> GatedDeltaNetMixer::Load(
    const ModelConfig& config, const Checkpoint& ckpt, const std::string& prefix,
    int state_layer, kernels::Device device) {
  auto m = std::make_unique<GatedDeltaNetMixer>();
  const LinearAttentionConfig& l = config.linear;
  m->shape_ = l;
  m->eps_ = static_cast<float>(config.rms_norm_eps);
  m->state_layer_ = state_layer;
  const int64_t h = config.hidden_size;
  const int64_t hk = l.num_key_heads, hv = l.num_value_heads, dk = l.key_head_dim, dv = l.value_head_dim;
  const int64_t r = hv / hk;
  const int64_t rows = 2 * l.key_dim() + 2 * l.value_dim() + 2 * hv;

  std::vector<char> q, k, v, z, b, a;
  Tensor any;
  if (l.fused_projections) {
    // in_proj_qkvz rows, per key head: [q d_k | k d_k | v r·d_v | z r·d_v];
    // in_proj_ba rows, per key head: [b r | a r].
    SLUICE_ASSIGN_OR_RETURN(Tensor qkvz, ckpt.Get(prefix + "in_proj_qkvz.weight", {2 * l.key_dim() + 2 * l.value_dim(), h}));
    SLUICE_ASSIGN_OR_RETURN(Tensor ba, ckpt.Get(prefix + "in_proj_ba.weight", {2 * hv, h}));
    if (qkvz.dtype() != ba.dtype()) return absl::InvalidArgumentError(prefix + ": projection dtypes differ");
    const int64_t group = 2 * dk + 2 * r * dv;
    for (int64_t g = 0; g < hk; ++g) {
      AppendRows(qkvz, g * group, dk, &q);
      AppendRows(qkvz, g * group + dk, dk, &k);
      AppendRows(qkvz, g * group + 2 * dk, r * dv, &v);
      AppendRows(qkvz, g * group + 2 * dk + r * dv, r * dv, &z);
      AppendRows(ba, g * 2 * r, r, &b);
      AppendRows(ba, g * 2 * r + r, r, &a);
    }
    any = qkvz;
  } else {
    SLUICE_ASSIGN_OR_RETURN(Tensor qkv, ckpt.Get(prefix + "in_proj_qkv.weight", {l.conv_dim(), h}));
    SLUICE_ASSIGN_OR_RETURN(Tensor zt, ckpt.Get(prefix + "in_proj_z.weight", {l.value_dim(), h}));
    SLUICE_ASSIGN_OR_RETURN(Tensor bt, ckpt.Get(prefix + "in_proj_b.weight", {hv, h}));
    SLUICE_ASSIGN_OR_RETURN(Tensor at, ckpt.Get(prefix + "in_proj_a.weight", {hv, h}));
    if (qkv.dtype() != zt.dtype() || qkv.dtype() != bt.dtype() || qkv.dtype() != at.dtype()) {
      return absl::InvalidArgumentError(prefix + ": projection dtypes differ");
    }
    AppendRows(qkv, 0, l.conv_dim(), &q);  // already [q | k | v]
    AppendRows(zt, 0, l.value_dim(), &z);
    AppendRows(bt, 0, hv, &b);
    AppendRows(at, 0, hv, &a);
    any = qkv;
  }
  std::vector<char> all;
  for (auto* part : {&q, &k, &v, &z, &b, &a}) all.insert(all.end(), part->begin(), part->end());
  if (any.dtype() == DType::kI32) return absl::InvalidArgumentError(prefix + ": int32 projection");
  SLUICE_ASSIGN_OR_RETURN(Tensor fused, FromRows(all, rows, h, any.dtype()));
  SLUICE_ASSIGN_OR_RETURN(m->in_proj_, kernels::Linear::Create(
                                           fused, device,
                                           kernels::OptionsForPart(kernels::DefaultLinearOptions(), kernels::kLinearPartDeltaNetInput)));
  SLUICE_ASSIGN_OR_RETURN(Tensor out, ckpt.Get(prefix + "out_proj.weight", {h, l.value_dim()}));
  SLUICE_ASSIGN_OR_RETURN(m->out_proj_, kernels::Linear::Create(out, device));
  SLUICE_ASSIGN_OR_RETURN(Tensor conv, ckpt.Get(prefix + "conv1d.weight", {l.conv_dim(), 1, l.conv_kernel}));
  SLUICE_ASSIGN_OR_RETURN(conv, kernels::ToF32(conv, device));
  SLUICE_ASSIGN_OR_RETURN(m->conv_weight_, conv.Reshape({l.conv_dim(), l.conv_kernel}));
  SLUICE_ASSIGN_OR_RETURN(m->a_log_, LoadNormWeight(ckpt, prefix + "A_log", hv, device));
  SLUICE_ASSIGN_OR_RETURN(m->dt_bias_, LoadNormWeight(ckpt, prefix + "dt_bias", hv, device));
  SLUICE_ASSIGN_OR_RETURN(m->norm_weight_, LoadNormWeight(ckpt, prefix + "norm.weight", dv, device));
  return m;
}

absl::Status GatedDeltaNetMixer::Forward(const StepTensors& step, const Tensor& x, Tensor* out) {
  const int64_t tokens = x.dim(0);
  const kernels::Device device = x.device();
  const int64_t hk = shape_.num_key_heads, hv = shape_.num_value_heads;
  const int64_t dk = shape_.key_head_dim, dv = shape_.value_head_dim;
  const int64_t conv_dim = shape_.conv_dim(), value_dim = shape_.value_dim(), key_dim = shape_.key_dim();
  SLUICE_ASSIGN_OR_RETURN(Tensor proj, Tensor::Empty({tokens, in_proj_->out_features()}, DType::kF32, device));
  SLUICE_RETURN_IF_ERROR(in_proj_->Forward(x, &proj));

  auto columns = [&](int64_t start, int64_t width) -> absl::StatusOr<Tensor> {
    SLUICE_ASSIGN_OR_RETURN(Tensor t, Tensor::Empty({tokens, width}, DType::kF32, device));
    SLUICE_RETURN_IF_ERROR(kernels::CopyColumns(proj, start, &t));
    return t;
  };
  SLUICE_ASSIGN_OR_RETURN(Tensor mixed, columns(0, conv_dim));
  SLUICE_ASSIGN_OR_RETURN(Tensor z, columns(conv_dim, value_dim));
  SLUICE_ASSIGN_OR_RETURN(Tensor b, columns(conv_dim + value_dim, hv));
  SLUICE_ASSIGN_OR_RETURN(Tensor a, columns(conv_dim + value_dim + hv, hv));

  SLUICE_RETURN_IF_ERROR(kernels::CausalConv1dSilu(mixed, conv_weight_, step.linear,
                                                   &step.state_cache->conv(state_layer_), &mixed));
  SLUICE_ASSIGN_OR_RETURN(Tensor q2, Tensor::Empty({tokens, key_dim}, DType::kF32, device));
  SLUICE_ASSIGN_OR_RETURN(Tensor k2, Tensor::Empty({tokens, key_dim}, DType::kF32, device));
  SLUICE_ASSIGN_OR_RETURN(Tensor v2, Tensor::Empty({tokens, value_dim}, DType::kF32, device));
  SLUICE_RETURN_IF_ERROR(kernels::CopyColumns(mixed, 0, &q2));
  SLUICE_RETURN_IF_ERROR(kernels::CopyColumns(mixed, key_dim, &k2));
  SLUICE_RETURN_IF_ERROR(kernels::CopyColumns(mixed, 2 * key_dim, &v2));
  SLUICE_ASSIGN_OR_RETURN(Tensor q, q2.Reshape({tokens, hk, dk}));
  SLUICE_ASSIGN_OR_RETURN(Tensor k, k2.Reshape({tokens, hk, dk}));
  SLUICE_ASSIGN_OR_RETURN(Tensor v, v2.Reshape({tokens, hv, dv}));

  SLUICE_ASSIGN_OR_RETURN(Tensor g, Tensor::Empty({tokens, hv}, DType::kF32, device));
  SLUICE_ASSIGN_OR_RETURN(Tensor beta, Tensor::Empty({tokens, hv}, DType::kF32, device));
  SLUICE_RETURN_IF_ERROR(kernels::DeltaRuleGates(a, b, a_log_, dt_bias_, &g, &beta));
  SLUICE_ASSIGN_OR_RETURN(Tensor o, Tensor::Empty({tokens, hv, dv}, DType::kF32, device));
  SLUICE_RETURN_IF_ERROR(kernels::GatedDeltaRule(q, k, v, g, beta, step.linear,
                                                 &step.state_cache->recurrent(state_layer_), &o));
  SLUICE_ASSIGN_OR_RETURN(Tensor z3, z.Reshape({tokens, hv, dv}));
  SLUICE_RETURN_IF_ERROR(kernels::GatedRmsNorm(o, z3, norm_weight_, eps_, &o));
  SLUICE_ASSIGN_OR_RETURN(Tensor o2, o.Reshape({tokens, value_dim}));
  return out_proj_->Forward(o2, out);
}

absl::Status GatedDeltaNetMixer::ResetState(RecurrentStateCache* state_cache, int32_t slot) {
  for (Tensor* t : {&state_cache->conv(state_layer_), &state_cache->recurrent(state_layer_)}) {
    const size_t per_slot = t->bytes() / static_cast<size_t>(t->dim(0));
    SLUICE_RETURN_IF_ERROR(kernels::FillZero(static_cast<char*>(t->raw()) + slot * per_slot, per_slot, t->device()));
  }
  return absl::OkStatus();
}

double GatedDeltaNetMixer::FlopsPerToken(int64_t context) const {
  const double proj = 2.0 * (in_proj_->in_features() * in_proj_->out_features() +
                             out_proj_->in_features() * out_proj_->out_features());
  const double conv = 2.0 * shape_.conv_dim() * shape_.conv_kernel;
  // Recurrent update per value head: decay (d_k·d_v), Sᵀk, the rank-1 update and Sᵀq
  // (2·d_k·d_v each): 7·d_k·d_v, independent of the context length.
  const double recurrence = 7.0 * shape_.num_value_heads * shape_.key_head_dim * shape_.value_head_dim;
  return proj + conv + recurrence;
}

LayerCacheSpec GatedDeltaNetMixer::CacheSpec() const {
  LayerCacheSpec spec;
  spec.kind = LayerCacheSpec::Kind::kStateSlot;
  spec.state.conv_dim = shape_.conv_dim();
  spec.state.conv_tail = shape_.conv_kernel - 1;
  spec.state.num_value_heads = shape_.num_value_heads;
  spec.state.key_head_dim = shape_.key_head_dim;
  spec.state.value_head_dim = shape_.value_head_dim;
  return spec;
}

absl::StatusOr<std::unique_ptr<Mixer>> LoadLinearAttentionMixer(const MixerContext& c) {
  SLUICE_ASSIGN_OR_RETURN(auto mixer, GatedDeltaNetMixer::Load(*c.config, *c.checkpoint, c.prefix, c.cache_index, c.device));
  return std::unique_ptr<Mixer>(std::move(mixer));
}

}  // namespace sluice::engine
