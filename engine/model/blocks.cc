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

}  // namespace sluice::engine
