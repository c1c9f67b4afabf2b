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
#include "engine/budget/head_skip_recorder.h"
#include "engine/cache/kv_cache.h"
#include "engine/cache/state_cache.h"
#include "engine/config/model_config.h"
#include "engine/model/forward_batch.h"
#include "engine/weights/checkpoint.h"
#include "kernels/gated_delta_net.h"
#include "kernels/ops.h"

namespace sluice::engine {

// Per-row compute-budget knobs of one branch call, and where their effects are counted.
// Absent (null) for a dense call.
struct RowControls {
  std::vector<int32_t> row_sequence;           // [rows]: index into *costs
  std::vector<SequenceCost>* costs = nullptr;  // per sequence of the full batch
  std::vector<int32_t> experts;                // [rows] or empty: MoE k per row, 0 = model's
  std::vector<float> gate_floor;               // [rows] or empty: attention-gate floor per row
  // Where attention layers leave their head-skip masks for the step's accounting (set
  // with costs when some row has a gate floor).
  HeadSkipRecorder* head_skips = nullptr;
};

// Device-side copies of the batch metadata, shared by every layer of one step (or, for
// a branch run on a subset of the rows, describing just that subset).
struct StepTensors {
  const ForwardBatch* batch = nullptr;  // the host view, for shape-based accounting only
  kernels::Tensor positions;            // i32 [T]
  kernels::Tensor slot_mapping;         // i32 [T]
  kernels::AttentionBatch attention;    // the sequences, for mixers that attend
  kernels::LinearAttentionBatch linear; // the sequences, for recurrent mixers
  PagedKvCache* kv_cache = nullptr;
  RecurrentStateCache* state_cache = nullptr;  // null when the model has no linear layers
  const RowControls* controls = nullptr;       // null: dense
};

// The cache one layer's mixer keeps per sequence. Each mixer declares its own; the model
// sizes the KV cache and the recurrent-state cache from these declarations.
struct LayerCacheSpec {
  enum class Kind {
    kKvBlocks,   // K and V of every position, in paged blocks (softmax attention)
    kStateSlot,  // one fixed-size state slot per sequence (linear attention)
  };
  Kind kind = Kind::kKvBlocks;
  int64_t num_kv_heads = 0;  // kKvBlocks
  int64_t head_dim = 0;      // kKvBlocks
  StateCacheShape state;     // kStateSlot: the per-slot shape (num_layers, num_slots unset)
};

class Mixer {
 public:
  virtual ~Mixer() = default;
  // x: normalised input f32 [T, hidden]; out: f32 [T, hidden].
  virtual absl::Status Forward(const StepTensors& step, const kernels::Tensor& x,
                               kernels::Tensor* out) = 0;
  virtual LayerCacheSpec CacheSpec() const = 0;
  // FLOPs (multiply-add = 2) of one token at a context length of `context` tokens.
  virtual double FlopsPerToken(int64_t context) const = 0;
  // Weight bytes one token reads through this block.
  virtual size_t WeightBytes() const = 0;
  // GateSkip: what a row that skips this branch still runs (see GATESKIP.md). A mixer
  // whose cache holds every position writes those rows' cache entries, so later tokens
  // see a complete cache; a recurrent mixer leaves them out of its state entirely.
  virtual absl::Status WriteSkippedRows(const StepTensors& step, const kernels::Tensor& x) {
    return absl::OkStatus();
  }
  // FLOPs per token of WriteSkippedRows (counted as executed for a skipped row).
  virtual double SkippedRowFlopsPerToken() const { return 0; }
  // Clears a state slot's per-layer state (linear mixers; a no-op for attention). Used
  // when a new sequence runs none of its rows through this mixer in its first step.
  virtual absl::Status ResetState(RecurrentStateCache* state_cache, int32_t slot) {
    return absl::OkStatus();
  }
};

// What a mixer is built from. `cache_index` numbers the layers that keep the same kind
// of cache (the KV cache's layer, or the state cache's).
struct MixerContext {
  const ModelConfig* config = nullptr;
  const Checkpoint* checkpoint = nullptr;
  std::string prefix;  // the mixer's weights, e.g. "model.layers.3.self_attn."
  int64_t layer = 0;
  int cache_index = 0;
  kernels::Device device = kernels::Device::kCpu;
  // The layer's mixer branch has a GateSkip residual gate (skipped rows may occur).
  bool gated_branch = false;
  // Rotary tables shared by every layer that needs one (MixerBuilder builds it once).
  std::shared_ptr<const kernels::Tensor> rope_table;
};

// Builds each layer's mixer from config.json's layer_types. mixer_factory.cc holds one
// registration line per mixer type: a new mixer is its file, its ops and that line.
class MixerBuilder {
 public:
  MixerBuilder(const ModelConfig& config, const Checkpoint& ckpt, kernels::Device device)
      : config_(config), ckpt_(ckpt), device_(device) {}
  // Where layer `layer`'s mixer weights live under its prefix ("self_attn." or
  // "linear_attn."); INVALID_ARGUMENT for a layer type no mixer is registered for.
  absl::StatusOr<std::string> WeightPrefix(int64_t layer) const;
  // The mixer of layer `layer`, whose weights start at `layer_prefix` ("model.layers.3.").
  absl::StatusOr<std::unique_ptr<Mixer>> Build(const std::string& layer_prefix, int64_t layer,
                                               bool gated_branch);

 private:
  const ModelConfig& config_;
  const Checkpoint& ckpt_;
  kernels::Device device_;
  int cache_counts_[2] = {0, 0};  // per LayerCacheSpec::Kind
  std::shared_ptr<const kernels::Tensor> rope_table_;
};

// The registered mixers' loaders.
absl::StatusOr<std::unique_ptr<Mixer>> LoadAttentionMixer(const MixerContext& context);
absl::StatusOr<std::unique_ptr<Mixer>> LoadLinearAttentionMixer(const MixerContext& context);

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
  // Tokens routed to each expert since load (MoE only; empty otherwise). Thread-safe.
  virtual std::vector<uint64_t> ExpertTokenCounts() const { return {}; }
  // Bytes one routed expert's weights take as packed (MoE only; 0 otherwise).
  virtual size_t ExpertWeightBytes() const { return 0; }
};

// Rotary tables shared by every attention layer: cos | sin per position.
absl::StatusOr<kernels::Tensor> BuildRopeTable(const RopeConfig& rope, int64_t rotary_dim,
                                               int64_t max_positions, kernels::Device device);

// A norm weight of `dim` (or any listed shape), stored in f32 on the device.
absl::StatusOr<kernels::Tensor> LoadNormWeight(const Checkpoint& ckpt, const std::string& name,
                                               int64_t dim, kernels::Device device);

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_MODEL_BLOCKS_H_
