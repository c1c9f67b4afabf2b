// The reusable pieces a decoder is built from. A layer is
//   h = x + mixer(norm1(x));  y = h + ffn(norm2(h))
// and each family picks its mixer (softmax attention today; gated attention and Gated
// DeltaNet next) and FFN (SwiGLU today; MoE with a shared expert next).
#ifndef SLUICE_ENGINE_MODEL_BLOCKS_H_
#define SLUICE_ENGINE_MODEL_BLOCKS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/cache/kv_cache.h"
#include "engine/cache/state_cache.h"
#include "engine/config/model_config.h"
#include "engine/model/forward_batch.h"
#include "engine/weights/checkpoint.h"
#include "kernels/ops.h"

namespace sluice::engine {

// Per-row compute-budget knobs of one branch call, and where their effects are counted.
// Absent (null) for a dense call.
struct RowControls {
  std::vector<int32_t> row_sequence;           // [rows]: index into *costs
  std::vector<SequenceCost>* costs = nullptr;  // per sequence of the full batch
  std::vector<int32_t> experts;                // [rows] or empty: MoE k per row, 0 = model's
  std::vector<float> gate_floor;               // [rows] or empty: attention-gate floor per row
};

// Device-side copies of the batch metadata, shared by every layer of one step (or, for
// a branch run on a subset of the rows, describing just that subset).
struct StepTensors {
  const ForwardBatch* batch = nullptr;
  kernels::Tensor positions;     // i32 [T]
  kernels::Tensor slot_mapping;  // i32 [T]
  PagedKvCache* kv_cache = nullptr;
  RecurrentStateCache* state_cache = nullptr;  // null when the model has no linear layers
  const RowControls* controls = nullptr;       // null: dense
};

class Mixer {
 public:
  virtual ~Mixer() = default;
  // x: normalised input f32 [T, hidden]; out: f32 [T, hidden].
  virtual absl::Status Forward(const StepTensors& step, const kernels::Tensor& x,
                               kernels::Tensor* out) = 0;
  // FLOPs (multiply-add = 2) of one token at a context length of `context` tokens.
  virtual double FlopsPerToken(int64_t context) const = 0;
  // Weight bytes one token reads through this block.
  virtual size_t WeightBytes() const = 0;
  // Clears a state slot's per-layer state (linear mixers; a no-op for attention). Used
  // when a new sequence runs none of its rows through this mixer in its first step.
  virtual absl::Status ResetState(RecurrentStateCache* state_cache, int32_t slot) {
    return absl::OkStatus();
  }
};

// The linear-attention mixer of a hybrid layer (Gated DeltaNet), loaded from
// `prefix` = "...layers.{i}.linear_attn."; `state_layer` indexes the state cache.
absl::StatusOr<std::unique_ptr<Mixer>> LoadLinearAttentionMixer(const ModelConfig& config,
                                                                const Checkpoint& ckpt,
                                                                const std::string& prefix,
                                                                int state_layer,
                                                                kernels::Device device);

class FeedForward {
 public:
  virtual ~FeedForward() = default;
  // `controls` (may be null) carries per-row budget knobs for the rows of x.
  virtual absl::Status Forward(const kernels::Tensor& x, kernels::Tensor* out,
                               const RowControls* controls) = 0;
  absl::Status Forward(const kernels::Tensor& x, kernels::Tensor* out) {
    return Forward(x, out, nullptr);
  }
  virtual double FlopsPerToken() const = 0;
};

// Rotary tables shared by every attention layer: cos | sin per position.
absl::StatusOr<kernels::Tensor> BuildRopeTable(const RopeConfig& rope, int64_t rotary_dim,
                                               int64_t max_positions, kernels::Device device);

// A norm weight of `dim` (or any listed shape), stored in f32 on the device.
absl::StatusOr<kernels::Tensor> LoadNormWeight(const Checkpoint& ckpt, const std::string& name,
                                               int64_t dim, kernels::Device device);

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_MODEL_BLOCKS_H_
