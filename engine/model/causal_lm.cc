#include "engine/model/causal_lm.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <numeric>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/model/device_batch.h"
#include "engine/model/feed_forward.h"
#include "engine/weights/checkpoint.h"
#include "kernels/device_memory.h"
#include "kernels/ops.h"
#include "kernels/status_macros.h"

namespace sluice::engine {

using kernels::DType;
using kernels::Tensor;

absl::StatusOr<std::unique_ptr<CausalLm>> CausalLm::Load(const std::string& dir,
                                                         kernels::Device device,
                                                         const ModelLoadOptions& options) {
  auto model = std::unique_ptr<CausalLm>(new CausalLm());
  model->device_ = device;
  SLUICE_ASSIGN_OR_RETURN(model->config_,
                          ModelConfig::FromFile((std::filesystem::path(dir) / "config.json").string()));
  const ModelConfig& c = model->config_;
  if (c.quantization.quantized() && options.quantization != kernels::WeightQuantization::kNone) {
    // The checkpoint's own codes and scales are what it was calibrated with; quantizing
    // their dequantized values again would only add a second rounding.
    return absl::FailedPreconditionError(
        absl::StrCat(dir, " is already quantized (quant_method \"", c.quantization.quant_method,
                     "\", ", c.quantization.FormatName(), "); --quantization ",
                     kernels::WeightQuantizationName(options.quantization),
                     " applies to bf16/f32 checkpoints only: load it without --quantization"));
  }
  SLUICE_ASSIGN_OR_RETURN(auto ckpt, Checkpoint::Open(dir));

  // Load-time quantization (--quantization). Every projection built with the plain
  // Linear::Create(weight, device) inside this scope is quantized: attention q|k|v|gate
  // and o, the Gated DeltaNet in_proj (q|k|v|z|b|a, fused) and out_proj, the dense and
  // shared-expert MLPs, the routed experts (GroupedExperts::Create reads this scope too
  // and packs them in the same int8/int4 formats, kernels/moe.h), and the LM head. Under
  // int4, the parts named by int4_int8_parts (the LM head, the fused in_proj of attention
  // or of the Gated DeltaNet; kernels::OptionsForPart) are int8 instead.
  // Kept in higher precision:
  //  - the MoE router and the shared-expert gate (feed_forward.cc): [E, H] and [1, H],
  //    a few KB a layer, and a flipped expert choice costs more than its bytes save. On
  //    the trained demo model at int4 g32, quantizing them raised the mean KL from bf16
  //    by 8 % (0.0220 → 0.0238); llama.cpp keeps both in f32 too;
  //  - norms, A_log, dt_bias and the conv1d taps: f32 vectors already, read once a step
  //    (a few KB per layer), so quantizing them would save nothing measurable;
  //  - the GateSkip residual gates: they decide which branch a token skips against
  //    thresholds calibrated at load, and are [H, H] or [1, H] (small next to the
  //    branch they gate);
  //  - the embedding and the LM head when quantize_embeddings is false.
  // The int8 format is per output channel, so the small gate rows fused into a larger
  // projection (in_proj's b and a rows) each get their own scale and lose no precision
  // to their neighbours. Measured on the golden fixtures
  // (tests/unit/quantized_linear_test.cc; README "Quantized weights"): keeping one part
  // unquantized at a time — the FFNs (router and shared-expert gate included), the Gated
  // DeltaNet mixers (their b/a gate rows included), the attention mixers, the LM head —
  // lowered the mean KL by at most 2.6x (attention, the bulk of those layers' bytes) and
  // by ≤ 1.5x for the others, with no part dominating; so only the above is kept.
  kernels::LinearOptions quantized;
  quantized.quantization = options.quantization;
  quantized.group_size = options.int4_group_size;
  quantized.int4_int8_parts = options.int4_int8_parts;
  const bool quantize = options.quantization != kernels::WeightQuantization::kNone;
  const kernels::LinearOptions high_precision;  // the checkpoint's own format
  kernels::ScopedLinearOptions quantize_projections(quantized);
  model->quantization_ = options.quantization;

  const std::string& p = c.weight_prefix;
  SLUICE_ASSIGN_OR_RETURN(Tensor embed, ckpt->Get(p + "embed_tokens.weight", {c.vocab_size, c.hidden_size}));
  const DType stored_embed_dtype = embed.dtype();
  if (quantize && options.quantize_embeddings) {
    // int8 rows for every width: a token reads one row, so the table's format sets its
    // memory, not the bytes a step reads; int8 matches the int8 LM head bit for bit.
    SLUICE_ASSIGN_OR_RETURN(kernels::QuantizedRows table, kernels::QuantizeRowsInt8(embed, device));
    model->embed_tokens_ = table.values;
    model->embed_scales_ = table.scales;
  } else {
    if (embed.dtype() == DType::kF16 || device != kernels::Device::kCpu) {
      SLUICE_ASSIGN_OR_RETURN(embed, kernels::ToF32(embed, device));
    }
    model->embed_tokens_ = embed;
  }

  MixerBuilder mixers(c, *ckpt, device);
  size_t weight_bytes = 0;
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string prefix = absl::StrCat(p, "layers.", i, ".");
    Layer layer;
    SLUICE_ASSIGN_OR_RETURN(layer.input_norm, LoadNormWeight(*ckpt, prefix + "input_layernorm.weight", c.hidden_size, device));
    SLUICE_ASSIGN_OR_RETURN(layer.post_attention_norm, LoadNormWeight(*ckpt, prefix + "post_attention_layernorm.weight", c.hidden_size, device));
    SLUICE_ASSIGN_OR_RETURN(const std::string mixer_weights, mixers.WeightPrefix(i));
    const std::string mixer_prefix = prefix + mixer_weights;
    // GateSkip residual gates (tests/data/models/GATESKIP.md): optional per branch.
    const std::string gate_names[2] = {mixer_prefix + "residual_gate.", prefix + "mlp.residual_gate."};
    for (int br = 0; br < 2; ++br) {
      if (!ckpt->Contains(gate_names[br] + "weight")) continue;
      SLUICE_ASSIGN_OR_RETURN(Tensor w, ckpt->Get(gate_names[br] + "weight"));
      if (w.rank() != 2 || w.dim(1) != c.hidden_size || (w.dim(0) != c.hidden_size && w.dim(0) != 1)) {
        return absl::InvalidArgumentError(absl::StrCat(gate_names[br], "weight must be [hidden, hidden] (vector gate) or [1, hidden] (scalar gate)"));
      }
      ResidualGate& g = layer.gates[br];
      g.width = w.dim(0);
      SLUICE_ASSIGN_OR_RETURN(g.weight, kernels::Linear::Create(w, device, high_precision));
      if (ckpt->Contains(gate_names[br] + "bias")) {
        SLUICE_ASSIGN_OR_RETURN(g.bias, LoadNormWeight(*ckpt, gate_names[br] + "bias", g.width, device));
      }
      model->budget_caps_.residual_gates = true;
    }
    SLUICE_ASSIGN_OR_RETURN(layer.mixer, mixers.Build(prefix, i, /*gated_branch=*/layer.gates[0].weight != nullptr));
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
  // Tied embeddings keep two copies when quantized, as they do in bf16: the LM head's
  // panels (its GEMM's layout) and the row-major table a lookup reads.
  SLUICE_ASSIGN_OR_RETURN(model->lm_head_,
                          kernels::Linear::Create(head, device,
                                                  options.quantize_embeddings
                                                      ? kernels::OptionsForPart(quantized, kernels::kLinearPartLmHead)
                                                      : high_precision));
  model->weight_bytes_per_token_ = weight_bytes + model->lm_head_->weight_bytes();
  {
    std::string source = std::string(kernels::DTypeName(head.dtype()));
    if (c.quantization.quantized()) {
      // A pre-quantized checkpoint (engine/weights/checkpoint.h): the format of its
      // projections, then what stays as stored.
      const std::string embed_dtype(kernels::DTypeName(stored_embed_dtype));
      const std::string head_format = head.dtype() == DType::kWeightRowRefs
                                          ? c.quantization.FormatName()
                                          : std::string(kernels::DTypeName(head.dtype()));
      const bool fp8 = c.quantization.method == QuantizationConfig::Method::kFp8Block;
      model->weight_format_ = absl::StrCat(
          c.quantization.FormatName(),
          fp8 ? absl::StrCat(" (float8_e4m3 weights, one scale per ", c.quantization.block_rows,
                             "x", c.quantization.block_cols, " block")
              : absl::StrCat(" (4-bit codes, an f16 scale and a zero point per ",
                             c.quantization.group_size > 0
                                 ? absl::StrCat(c.quantization.group_size, " inputs")
                                 : std::string("row"),
                             c.quantization.sym ? ", symmetric" : ", asymmetric",
                             c.quantization.desc_act ? ", act-order" : "", ", checkpoint_format ",
                             c.quantization.checkpoint_format),
          "; embedding ", embed_dtype, ", LM head ", head_format, ")");
    } else if (!quantize) {
      model->weight_format_ = source;
    } else {
      const std::string width(kernels::WeightQuantizationName(options.quantization));
      const bool int4 = options.quantization == kernels::WeightQuantization::kInt4;
      const uint32_t at_int8 = int4 ? options.int4_int8_parts : 0;
      const std::string head_width = (at_int8 & kernels::kLinearPartLmHead) ? "int8" : width;
      const std::string others = kernels::LinearPartNames(at_int8 & ~uint32_t{kernels::kLinearPartLmHead});
      model->weight_format_ = absl::StrCat(
          width,
          int4 ? absl::StrCat(" (group-wise, ", options.int4_group_size, " per group")
               : " (symmetric, per output channel",
          options.quantize_embeddings ? absl::StrCat("; embedding int8, LM head ", head_width)
                                      : absl::StrCat("; embedding and LM head ", source),
          others.empty() ? "" : absl::StrCat("; int8: ", others),
          "; router and shared-expert gate ", source, ")");
    }
  }
  SLUICE_RETURN_IF_ERROR(model->CollectCacheSpecs());
  BudgetCapabilities& caps = model->budget_caps_;
  caps.model_type = c.model_type;
  caps.num_layers = c.num_layers;
  caps.moe_top_k = c.moe.num_experts > 0 ? c.moe.experts_per_token : 0;
  caps.gated_attention = c.attention_output_gate && c.NumAttentionLayers() > 0;
  if (caps.residual_gates) {
    SLUICE_RETURN_IF_ERROR(model->CalibrateGateSkip(
        options.gateskip_calibration_ids ? options.gateskip_calibration_ids(c.vocab_size)
                                         : MakeGateSkipCalibrationSet({}, c.vocab_size, "")));
  }
  return model;
}

KvCacheShape CausalLm::KvShape(int32_t block_size) const {
  KvCacheShape s = kv_shape_;
  s.block_size = block_size;
  return s;
}

absl::Status CausalLm::Forward(const ForwardBatch& batch, PagedKvCache* kv_cache,
                               RecurrentStateCache* state_cache, std::vector<float>* logits) {
  return ForwardWithCosts(batch, kv_cache, state_cache, logits, nullptr);
}

absl::Status CausalLm::ForwardWithCosts(const ForwardBatch& batch, PagedKvCache* kv_cache,
                                        RecurrentStateCache* state_cache, std::vector<float>* logits,
                                        std::vector<SequenceCost>* costs) {
  if (costs != nullptr) costs->assign(batch.sequences.size(), SequenceCost{});
  const int64_t tokens = batch.num_tokens();
  const int64_t h = config_.hidden_size;
  if (tokens == 0) {
    logits->clear();
    return absl::OkStatus();
  }
  if (config_.NumLinearAttentionLayers() > 0 &&
      (state_cache == nullptr || batch.state_slots.size() != batch.sequences.size() ||
       batch.state_fresh.size() != batch.sequences.size())) {
    return absl::InvalidArgumentError("ForwardBatch: a hybrid model needs a state slot per sequence");
  }
  // The step's metadata goes to the device in one copy.
  std::optional<DeviceBatch> uploaded;
  if (batch.device == nullptr) {
    SLUICE_ASSIGN_OR_RETURN(uploaded, DeviceBatch::Upload(batch, kv_cache->shape().block_size, device_));
  }
  const DeviceBatch& meta = batch.device != nullptr ? *batch.device : *uploaded;
  if (meta.token_ids.numel() != tokens || meta.logit_rows.numel() != static_cast<int64_t>(batch.logit_rows.size()) ||
      meta.token_ids.device() != device_) {
    return absl::InvalidArgumentError("ForwardBatch: its uploaded metadata describes another batch or device");
  }
  StepTensors step;
  step.batch = &batch;
  step.positions = meta.positions;
  step.slot_mapping = meta.slot_mapping;
  step.attention = meta.attention;
  step.linear = meta.linear;
  step.kv_cache = kv_cache;
  step.state_cache = state_cache;
  SLUICE_ASSIGN_OR_RETURN(const StepBudgets budgets, StepBudgets::Create(batch, budget_caps_.residual_gates));
  std::optional<HeadSkipRecorder> head_skips;
  if (costs != nullptr && budgets.any_gate_floor() && budget_caps_.gated_attention) {
    SLUICE_ASSIGN_OR_RETURN(head_skips, HeadSkipRecorder::Create(config_.NumAttentionLayers(), tokens,
                                                                 config_.num_attention_heads, device_));
  }
  const ResidualBranchRunner branches(&thresholds_, importance_sink_, head_skips ? &*head_skips : nullptr);
  const Tensor& ids = meta.token_ids;

  SLUICE_ASSIGN_OR_RETURN(Tensor x, Tensor::Empty({tokens, h}, DType::kF32, device_));
  if (embed_scales_.defined()) {
    SLUICE_RETURN_IF_ERROR(kernels::EmbeddingLookup(embed_tokens_, embed_scales_, ids, &x));
  } else {
    SLUICE_RETURN_IF_ERROR(kernels::EmbeddingLookup(embed_tokens_, ids, &x));
  }
  SLUICE_ASSIGN_OR_RETURN(Tensor normed, Tensor::Empty({tokens, h}, DType::kF32, device_));
  SLUICE_ASSIGN_OR_RETURN(Tensor branch, Tensor::Empty({tokens, h}, DType::kF32, device_));
  const float eps = static_cast<float>(config_.rms_norm_eps);
  const float offset = config_.norm_weight_offset;
  for (int64_t li = 0; li < static_cast<int64_t>(layers_.size()); ++li) {
    Layer& layer = layers_[li];
    SLUICE_RETURN_IF_ERROR(kernels::RmsNorm(x, layer.input_norm, eps, offset, &normed));
    SLUICE_RETURN_IF_ERROR(branches.Run({li, 0, &layer.gates[0], layer.mixer.get(), nullptr}, budgets, step,
                                        normed, &x, &branch, costs));
    SLUICE_RETURN_IF_ERROR(kernels::RmsNorm(x, layer.post_attention_norm, eps, offset, &normed));
    SLUICE_RETURN_IF_ERROR(branches.Run({li, 1, &layer.gates[1], nullptr, layer.ffn.get()}, budgets, step,
                                        normed, &x, &branch, costs));
  }
  // Only the rows that need logits go through the final norm and the LM head.
  const int64_t rows = static_cast<int64_t>(batch.logit_rows.size());
  SLUICE_ASSIGN_OR_RETURN(Tensor picked, Tensor::Empty({rows, h}, DType::kF32, device_));
  SLUICE_RETURN_IF_ERROR(kernels::GatherRows(x, meta.logit_rows, &picked));
  SLUICE_RETURN_IF_ERROR(kernels::RmsNorm(picked, final_norm_, eps, offset, &picked));
  SLUICE_ASSIGN_OR_RETURN(Tensor out, Tensor::Empty({rows, config_.vocab_size}, DType::kF32, device_));
  SLUICE_RETURN_IF_ERROR(lm_head_->Forward(picked, &out));
  if (head_skips) SLUICE_RETURN_IF_ERROR(head_skips->AddTo(costs));
  logits->resize(rows * config_.vocab_size);
  return kernels::CopyToHost(out, logits->data());
}

std::vector<std::string> CausalLm::SupportedBudgetControls() const {
  return engine::SupportedBudgetControls(budget_caps_);
}

absl::Status CausalLm::ValidateBudget(const ComputeBudget& b) const {
  return engine::ValidateBudget(budget_caps_, b);
}

float CausalLm::DecodeThreshold(int64_t layer, int branch, float skip_ratio) const {
  return thresholds_.DecodeThreshold(layer, branch, skip_ratio);
}

// Decode calibration: one dense (no skipping) prefill over the calibration sequences
// records every token's importance per (layer, branch); the sorted values give, for any
// skip ratio r, the threshold below which a fraction r of calibration tokens falls.
absl::Status CausalLm::CalibrateGateSkip(const GateSkipCalibrationSet& set) {
  const std::vector<std::vector<int32_t>>& sequences = set.sequences;
  calibration_source_ = set.source;
  constexpr int32_t kBlock = 16;
  KvCacheShape shape = KvShape(kBlock);
  int32_t blocks = 0;
  for (const auto& s : sequences) blocks += (static_cast<int32_t>(s.size()) + kBlock - 1) / kBlock;
  shape.num_blocks = std::max(blocks, 1);
  SLUICE_ASSIGN_OR_RETURN(PagedKvCache cache, PagedKvCache::Create(shape, device_));
  StateCacheShape state_shape = StateShape();
  state_shape.num_slots = static_cast<int32_t>(sequences.size());
  SLUICE_ASSIGN_OR_RETURN(RecurrentStateCache state, RecurrentStateCache::Create(state_shape, device_));
  ForwardBatch batch;
  std::vector<std::vector<int32_t>> tables(sequences.size());
  int32_t next_block = 0;
  for (size_t s = 0; s < sequences.size(); ++s) {
    const auto& ids = sequences[s];
    const int32_t start = batch.num_tokens();
    const int32_t n = static_cast<int32_t>(ids.size());
    for (int32_t b = 0; b < (n + kBlock - 1) / kBlock; ++b) tables[s].push_back(next_block++);
    for (int32_t i = 0; i < n; ++i) {
      batch.token_ids.push_back(ids[i]);
      batch.positions.push_back(i);
      batch.slot_mapping.push_back(tables[s][i / kBlock] * kBlock + i % kBlock);
    }
    batch.sequences.push_back({start, n, n, tables[s].data()});
    batch.state_slots.push_back(static_cast<int32_t>(s));
    batch.state_fresh.push_back(1);
    batch.logit_rows.push_back(start + n - 1);
  }
  GateSkipThresholds::Importances sink(layers_.size());
  importance_sink_ = &sink;
  std::vector<float> logits;
  absl::Status status = Forward(batch, &cache, &state, &logits);
  importance_sink_ = nullptr;
  SLUICE_RETURN_IF_ERROR(status);
  thresholds_ = GateSkipThresholds(std::move(sink));
  return absl::OkStatus();
}

absl::Status CausalLm::CollectCacheSpecs() {
  kv_shape_ = KvCacheShape{};
  state_shape_ = StateCacheShape{};
  for (size_t i = 0; i < layers_.size(); ++i) {
    const LayerCacheSpec spec = layers_[i].mixer->CacheSpec();
    if (spec.kind == LayerCacheSpec::Kind::kKvBlocks) {
      if (kv_shape_.num_layers > 0 &&
          (spec.num_kv_heads != kv_shape_.num_kv_heads || spec.head_dim != kv_shape_.head_dim)) {
        return absl::UnimplementedError(absl::StrCat("layer ", i, ": attention layers with different KV shapes"));
      }
      ++kv_shape_.num_layers;
      kv_shape_.num_kv_heads = spec.num_kv_heads;
      kv_shape_.head_dim = spec.head_dim;
    } else {
      StateCacheShape s = spec.state;
      s.num_layers = state_shape_.num_layers;
      s.num_slots = state_shape_.num_slots;
      if (state_shape_.num_layers > 0 &&
          (s.conv_dim != state_shape_.conv_dim || s.conv_tail != state_shape_.conv_tail ||
           s.num_value_heads != state_shape_.num_value_heads || s.key_head_dim != state_shape_.key_head_dim ||
           s.value_head_dim != state_shape_.value_head_dim)) {
        return absl::UnimplementedError(absl::StrCat("layer ", i, ": recurrent layers with different state shapes"));
      }
      state_shape_ = s;
      ++state_shape_.num_layers;
    }
  }
  if (state_shape_.num_layers == 0) {
    // Keep the config's per-slot shape for models without recurrent layers (zero layers
    // of state are allocated either way).
    state_shape_.conv_dim = config_.linear.conv_dim();
    state_shape_.conv_tail = config_.linear.conv_kernel - 1;
    state_shape_.num_value_heads = config_.linear.num_value_heads;
    state_shape_.key_head_dim = config_.linear.key_head_dim;
    state_shape_.value_head_dim = config_.linear.value_head_dim;
  }
  if (kv_shape_.num_layers == 0) {
    kv_shape_.num_kv_heads = config_.num_key_value_heads;
    kv_shape_.head_dim = config_.head_dim;
  }
  return absl::OkStatus();
}

StateCacheShape CausalLm::StateShape() const { return state_shape_; }

double CausalLm::DenseFlops(int64_t past, int64_t tokens) const {
  double flops = 0;
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t context = past + t + 1;
    for (const Layer& layer : layers_) {
      flops += layer.mixer->FlopsPerToken(context) + layer.ffn->FlopsPerToken();
      for (const ResidualGate& g : layer.gates) flops += g.FlopsPerToken();
    }
  }
  // The LM head runs once per call: a step samples at most one position per sequence
  // (a prefill only its last token).
  flops += 2.0 * lm_head_->in_features() * lm_head_->out_features();
  return flops;
}

double CausalLm::GateFlopsPerToken() const {
  double flops = 0;
  for (const Layer& layer : layers_) {
    for (const ResidualGate& g : layer.gates) flops += g.FlopsPerToken();
  }
  return flops;
}

uint64_t CausalLm::WeightBytesPerToken() const { return weight_bytes_per_token_; }

size_t CausalLm::ExpertWeightBytes() const {
  for (const auto& layer : layers_) {
    if (const size_t bytes = layer.ffn->ExpertWeightBytes(); bytes > 0) return bytes;
  }
  return 0;
}

std::vector<std::pair<int32_t, std::vector<uint64_t>>> CausalLm::ExpertTokenCounts() const {
  std::vector<std::pair<int32_t, std::vector<uint64_t>>> out;
  for (size_t i = 0; i < layers_.size(); ++i) {
    std::vector<uint64_t> counts = layers_[i].ffn->ExpertTokenCounts();
    if (!counts.empty()) out.emplace_back(static_cast<int32_t>(i), std::move(counts));
  }
  return out;
}

}  // namespace sluice::engine
