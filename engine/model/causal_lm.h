// A decoder-only language model built from config.json and a checkpoint:
// embedding → N × (norm, mixer, norm, FFN) → final norm → LM head.
#ifndef SLUICE_ENGINE_MODEL_CAUSAL_LM_H_
#define SLUICE_ENGINE_MODEL_CAUSAL_LM_H_

#include <array>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/budget/compute_budget.h"
#include "engine/budget/gateskip_calibration.h"
#include "engine/budget/residual_branch.h"
#include "engine/cache/kv_cache.h"
#include "engine/cache/state_cache.h"
#include "engine/config/model_config.h"
#include "engine/model/blocks.h"
#include "engine/model/forward_batch.h"
#include "engine/model/language_model.h"
#include "engine/request.h"
#include "kernels/tensor.h"

namespace sluice::engine {

struct ModelLoadOptions {
  // The GateSkip calibration set for a model with residual gates, from its vocabulary
  // size. Unset: fixed pseudo-random ids. The engine sets it (engine/serving_model.h).
  std::function<GateSkipCalibrationSet(int64_t vocab_size)> gateskip_calibration_ids;
  // Load-time quantization of the projections (kernels/ops.h, WeightQuantization):
  // kNone keeps the checkpoint's own format (the default, bit for bit what it was).
  // What stays in higher precision and why: causal_lm.cc, Load.
  kernels::WeightQuantization quantization = kernels::WeightQuantization::kNone;
  int64_t int4_group_size = 128;
  // kernels::LinearPart bits that an int4 load keeps at int8 (kernels/ops.h).
  uint32_t int4_int8_parts = 0;
  // With a quantization: the embedding table and the LM head too; false keeps both as
  // the checkpoint stores them (bf16), a third of a 0.8B model's bytes.
  bool quantize_embeddings = true;
};

class CausalLm : public LanguageModel {
 public:
  static absl::StatusOr<std::unique_ptr<CausalLm>> Load(const std::string& dir,
                                                        kernels::Device device,
                                                        const ModelLoadOptions& options = {});

  const ModelConfig& config() const override { return config_; }
  kernels::Device device() const override { return device_; }
  // Shape of the KV cache this model needs (num_blocks left to the caller).
  KvCacheShape KvShape(int32_t block_size) const;
  // Shape of one recurrent-state slot (num_slots left to the caller); num_layers is 0
  // for models without linear-attention layers.
  StateCacheShape StateShape() const;
  // Largest context the model supports (its position table).
  int64_t max_context() const { return config_.max_position_embeddings; }

  // Runs one ragged batch. Writes f32 logits [batch.logit_rows.size(), vocab] to
  // `logits` (host memory, resized here).
  absl::Status Forward(const ForwardBatch& batch, PagedKvCache* kv_cache,
                       RecurrentStateCache* state_cache, std::vector<float>* logits) override;
  // Runs one ragged batch honouring each sequence's budget (batch.budgets); see
  // "Compute budgets" below. When no sequence has a budget this is Forward exactly.
  absl::Status ForwardWithCosts(const ForwardBatch& batch, PagedKvCache* kv_cache,
                                RecurrentStateCache* state_cache, std::vector<float>* logits,
                                std::vector<SequenceCost>* costs) override;

  // Compute budgets.
  //  - skip_layers (every model): a skipped layer is the identity for that sequence's
  //    rows; its KV cache / recurrent state is never written or read for the sequence.
  //  - experts_per_token (MoE): the row's top-k, renormalised when the family does.
  //  - attention_gate_floor (gated attention): see AttentionMixer::Forward.
  //  - skip_ratio (models with residual gates, GateSkip arXiv 2510.13876): see
  //    tests/data/models/GATESKIP.md for the checkpoint names and the exact semantics.
  // The controls this model honours, by ComputeBudget field name.
  std::vector<std::string> SupportedBudgetControls() const;
  // INVALID_ARGUMENT for out-of-range values, FAILED_PRECONDITION (naming the supported
  // controls) for a control the model cannot honour.
  absl::Status ValidateBudget(const ComputeBudget& budget) const;
  bool has_residual_gates() const { return budget_caps_.residual_gates; }
  // FLOPs of all residual gates for one token (part of DenseFlops; GateSkip always runs
  // them, since they make the skip decision).
  double GateFlopsPerToken() const;
  // GateSkip decode thresholds: the importance below which a decode token skips branch
  // `branch` (0 mixer, 1 FFN) of `layer` at skip ratio r. Calibrated at load.
  float DecodeThreshold(int64_t layer, int branch, float skip_ratio) const;
  // The weight format as loaded, for GetModelInfo and logs: "bfloat16", "float32", or
  // e.g. "int8 (per-channel; embedding and LM head int8)".
  const std::string& weight_format() const { return weight_format_; }
  kernels::WeightQuantization quantization() const { return quantization_; }
  // How the decode thresholds were calibrated (for logs and GetModelInfo).
  const std::string& calibration_source() const { return calibration_source_; }

  // FLOPs of `tokens` new tokens of one sequence whose context grows from `past`.
  double DenseFlops(int64_t past, int64_t tokens) const override;
  // Bytes of weights one decode step reads (for bandwidth figures).
  uint64_t WeightBytesPerToken() const;
  uint64_t WeightBytesPerStep() const override { return WeightBytesPerToken(); }
  // Tokens routed to each expert since load, per MoE layer: {layer index, counts per
  // expert}. Thread-safe; read while the engine runs (metrics).
  std::vector<std::pair<int32_t, std::vector<uint64_t>>> ExpertTokenCounts() const;
  // Bytes one routed expert takes as packed (bf16, f32, int8 or int4; 0 without MoE):
  // what a step reads per distinct expert it routes to.
  size_t ExpertWeightBytes() const;

 private:
  struct Layer {
    kernels::Tensor input_norm;
    kernels::Tensor post_attention_norm;
    std::unique_ptr<Mixer> mixer;
    std::unique_ptr<FeedForward> ffn;
    ResidualGate gates[2];  // [0] mixer branch, [1] FFN branch
  };

  absl::Status CalibrateGateSkip(const GateSkipCalibrationSet& set);
  // Sizes the caches from the mixers' declarations (one shape per cache kind).
  absl::Status CollectCacheSpecs();

  ModelConfig config_;
  kernels::Device device_ = kernels::Device::kCpu;
  kernels::Tensor embed_tokens_;  // [V, H], f32 or bf16, or i8 with embed_scales_
  kernels::Tensor embed_scales_;  // f32 [V] for an int8 table, else undefined
  kernels::WeightQuantization quantization_ = kernels::WeightQuantization::kNone;
  std::string weight_format_;
  std::vector<Layer> layers_;
  kernels::Tensor final_norm_;
  std::unique_ptr<kernels::Linear> lm_head_;
  uint64_t weight_bytes_per_token_ = 0;
  BudgetCapabilities budget_caps_;
  KvCacheShape kv_shape_;        // num_blocks and block_size left to the caller
  StateCacheShape state_shape_;  // num_slots left to the caller
  GateSkipThresholds thresholds_;
  std::string calibration_source_;
  GateSkipThresholds::Importances* importance_sink_ = nullptr;  // set only while calibrating
};

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_MODEL_CAUSAL_LM_H_
