#include "engine/model/causal_lm.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/model/gateskip_calibration.h"
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
    layer.linear_attention = c.IsLinearAttentionLayer(i);
    const std::string mixer_prefix = prefix + (layer.linear_attention ? "linear_attn." : "self_attn.");
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
      SLUICE_ASSIGN_OR_RETURN(g.weight, kernels::Linear::Create(w, device));
      if (ckpt->Contains(gate_names[br] + "bias")) {
        SLUICE_ASSIGN_OR_RETURN(g.bias, LoadNormWeight(*ckpt, gate_names[br] + "bias", g.width, device));
      }
      model->has_residual_gates_ = true;
    }
    if (layer.linear_attention) {
      SLUICE_ASSIGN_OR_RETURN(layer.mixer, LoadLinearAttentionMixer(c, *ckpt, prefix + "linear_attn.", linear_layer++, device));
    } else {
      SLUICE_ASSIGN_OR_RETURN(layer.mixer, AttentionMixer::Load(c, *ckpt, prefix + "self_attn.", attention_layer++, rope, device,
                                                                /*key_value_only_path=*/layer.gates[0].weight != nullptr));
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
  if (model->has_residual_gates_) SLUICE_RETURN_IF_ERROR(model->CalibrateGateSkip(dir));
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
  bool any_budget = false;
  if (!batch.budgets.empty()) {
    if (batch.budgets.size() != batch.sequences.size()) {
      return absl::InvalidArgumentError("ForwardBatch: budgets must be empty or one per sequence");
    }
    for (const SequenceBudget* b : batch.budgets) any_budget = any_budget || (b != nullptr && !b->empty());
  }
  std::vector<int32_t> row_sequence;
  if (any_budget || has_residual_gates_) {
    row_sequence.assign(tokens, -1);
    for (size_t s = 0; s < batch.sequences.size(); ++s) {
      const auto& seq = batch.sequences[s];
      if (seq.query_start < 0 || seq.query_len < 0 || seq.query_start + seq.query_len > tokens) {
        return absl::InvalidArgumentError("ForwardBatch: bad sequence rows");
      }
      for (int32_t r = seq.query_start; r < seq.query_start + seq.query_len; ++r) row_sequence[r] = static_cast<int32_t>(s);
    }
    for (int32_t s : row_sequence) {
      if (s < 0) return absl::InvalidArgumentError("ForwardBatch: a row belongs to no sequence");
    }
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
  for (int64_t li = 0; li < static_cast<int64_t>(layers_.size()); ++li) {
    Layer& layer = layers_[li];
    SLUICE_RETURN_IF_ERROR(kernels::RmsNorm(x, layer.input_norm, eps, offset, &normed));
    SLUICE_RETURN_IF_ERROR(RunBranch(li, 0, step, row_sequence, any_budget, normed, &x, &branch, costs));
    SLUICE_RETURN_IF_ERROR(kernels::RmsNorm(x, layer.post_attention_norm, eps, offset, &normed));
    SLUICE_RETURN_IF_ERROR(RunBranch(li, 1, step, row_sequence, any_budget, normed, &x, &branch, costs));
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

namespace {

// A branch's input rows picked from the batch, with the metadata its mixer needs. The
// struct owns the ForwardBatch its StepTensors points to, so it is never moved.
struct SubStep {
  ForwardBatch batch;
  StepTensors step;
  Tensor row_ids;  // i32 [rows]: rows of the full batch
};

absl::StatusOr<std::unique_ptr<SubStep>> MakeSubStep(const StepTensors& full,
                                                    const std::vector<int32_t>& rows,
                                                    const std::vector<int32_t>& row_sequence,
                                                    bool attention, kernels::Device device) {
  auto sub = std::make_unique<SubStep>();
  const ForwardBatch& b = *full.batch;
  ForwardBatch& out = sub->batch;
  for (int32_t r : rows) {
    out.token_ids.push_back(b.token_ids[r]);
    out.positions.push_back(b.positions[r]);
    out.slot_mapping.push_back(b.slot_mapping[r]);
  }
  // Rows are ascending and each sequence's rows are contiguous in the batch, so each
  // sequence's picked rows are contiguous in the sub-batch too.
  size_t i = 0;
  while (i < rows.size()) {
    const int32_t s = row_sequence[rows[i]];
    size_t j = i;
    while (j < rows.size() && row_sequence[rows[j]] == s) ++j;
    const kernels::AttentionSequence& seq = b.sequences[s];
    const int32_t count = static_cast<int32_t>(j - i);
    if (!attention) {
      // Gated DeltaNet: the picked rows form the sequence's segment; the rows left out
      // do not enter the recurrence or the conv window.
      out.sequences.push_back({static_cast<int32_t>(i), count, seq.context_len, seq.block_table});
      out.state_slots.push_back(b.state_slots[s]);
      out.state_fresh.push_back(b.state_fresh[s]);
    } else if (count == seq.query_len) {
      out.sequences.push_back({static_cast<int32_t>(i), count, seq.context_len, seq.block_table});
    } else {
      // Holes: each picked query attends to everything up to its own position.
      for (size_t k = i; k < j; ++k) {
        out.sequences.push_back({static_cast<int32_t>(k), 1, b.positions[rows[k]] + 1, seq.block_table});
      }
    }
    i = j;
  }
  auto to_device = [&](const std::vector<int32_t>& v) -> absl::StatusOr<Tensor> {
    SLUICE_ASSIGN_OR_RETURN(Tensor t, Tensor::Empty({static_cast<int64_t>(v.size())}, DType::kI32, device));
    SLUICE_RETURN_IF_ERROR(kernels::CopyBytes(t.raw(), device, v.data(), kernels::Device::kCpu, v.size() * 4));
    return t;
  };
  SLUICE_ASSIGN_OR_RETURN(sub->row_ids, to_device(rows));
  SLUICE_ASSIGN_OR_RETURN(sub->step.positions, to_device(out.positions));
  SLUICE_ASSIGN_OR_RETURN(sub->step.slot_mapping, to_device(out.slot_mapping));
  sub->step.batch = &sub->batch;
  sub->step.kv_cache = full.kv_cache;
  sub->step.state_cache = full.state_cache;
  return sub;
}

absl::StatusOr<Tensor> Gather(const Tensor& x, const Tensor& row_ids) {
  SLUICE_ASSIGN_OR_RETURN(Tensor out, Tensor::Empty({row_ids.numel(), x.dim(1)}, DType::kF32, x.device()));
  SLUICE_RETURN_IF_ERROR(kernels::GatherRows(x, row_ids, &out));
  return out;
}

absl::StatusOr<Tensor> IdsTensor(const std::vector<int32_t>& v, kernels::Device device) {
  SLUICE_ASSIGN_OR_RETURN(Tensor t, Tensor::Empty({static_cast<int64_t>(v.size())}, DType::kI32, device));
  SLUICE_RETURN_IF_ERROR(kernels::CopyBytes(t.raw(), device, v.data(), kernels::Device::kCpu, v.size() * 4));
  return t;
}

}  // namespace

double CausalLm::BranchFlops(int64_t layer_index, int branch, int64_t context) const {
  const Layer& layer = layers_[layer_index];
  return branch == 0 ? layer.mixer->FlopsPerToken(context) : layer.ffn->FlopsPerToken();
}

// One residual branch of one layer for the whole batch:
//   x[r] += gate_r ⊙ f(norm(x))[r]   for the rows r that run it,
// where gate_r = sigmoid(W_g x + b_g) when the branch has a residual gate, else 1.
// Rows skip the branch when their sequence skips the layer (skip_layers) or, with GateSkip,
// when their importance mean(gate_r) is below their sequence's threshold this layer:
//   prefill (the sequence has > 1 row this step): exactly floor(r · n) of its n rows skip,
//     the lowest importances, ties to the earlier position;
//   decode (1 row): skip iff importance < DecodeThreshold(layer, branch, r).
// Only the rows that run are gathered, computed and scattered back (so skipped rows cost
// no GEMM rows). A GateSkip-skipped row of an attention layer still writes its K/V
// (k/v projections only); a skipped row of a Gated DeltaNet layer is left out of that
// layer's recurrence and conv window entirely (see GATESKIP.md for why).
absl::Status CausalLm::RunBranch(int64_t li, int br, const StepTensors& step,
                                 const std::vector<int32_t>& row_sequence, bool any_budget,
                                 const Tensor& normed, Tensor* x, Tensor* branch_out,
                                 std::vector<SequenceCost>* costs) {
  Layer& layer = layers_[li];
  const ResidualGate& gate = layer.gates[br];
  const bool gated = gate.weight != nullptr;
  auto run = [&](const StepTensors& st, const Tensor& in, Tensor* out) -> absl::Status {
    return br == 0 ? layer.mixer->Forward(st, in, out) : layer.ffn->Forward(in, out, st.controls);
  };
  if (!any_budget && !gated) {
    // The dense path, exactly as a server without budgets runs it.
    SLUICE_RETURN_IF_ERROR(run(step, normed, branch_out));
    return kernels::AddInPlace(*branch_out, x);
  }
  const ForwardBatch& b = *step.batch;
  const int64_t tokens = b.num_tokens();
  const kernels::Device device = device_;
  auto budget_of = [&](int32_t s) -> const SequenceBudget* {
    if (b.budgets.empty() || b.budgets[s] == nullptr || b.budgets[s]->empty()) return nullptr;
    return b.budgets[s];
  };
  const bool attention = br == 0 && !layer.linear_attention;

  // 1. Rows whose sequence runs this layer.
  std::vector<int32_t> active;
  active.reserve(tokens);
  for (int32_t r = 0; r < tokens; ++r) {
    const SequenceBudget* bud = budget_of(row_sequence[r]);
    if (bud == nullptr || !bud->SkipsLayer(li)) active.push_back(r);
  }
  const bool all_active = static_cast<int64_t>(active.size()) == tokens;
  const int64_t n_active = static_cast<int64_t>(active.size());

  // 2. The gate and, where a decision needs it, each row's importance.
  Tensor gate_logits;  // [n_active, width]
  std::vector<float> importance;
  Tensor active_ids;
  if (!all_active && n_active > 0) {
    SLUICE_ASSIGN_OR_RETURN(active_ids, IdsTensor(active, device));
  }
  if (gated && n_active > 0) {
    Tensor in = normed;
    if (!all_active) {
      SLUICE_ASSIGN_OR_RETURN(in, Gather(normed, active_ids));
    }
    SLUICE_ASSIGN_OR_RETURN(gate_logits, Tensor::Empty({n_active, gate.width}, DType::kF32, device));
    SLUICE_RETURN_IF_ERROR(gate.weight->Forward(in, &gate_logits));
    if (gate.bias.defined()) SLUICE_RETURN_IF_ERROR(kernels::AddBiasInPlace(gate.bias, &gate_logits));
    bool need = importance_sink_ != nullptr;
    for (int32_t r : active) {
      const SequenceBudget* bud = budget_of(row_sequence[r]);
      need = need || (bud != nullptr && bud->skip_ratio > 0.f);
    }
    if (need) {
      SLUICE_ASSIGN_OR_RETURN(Tensor imp, Tensor::Empty({n_active, 1}, DType::kF32, device));
      SLUICE_RETURN_IF_ERROR(kernels::SigmoidGroupMean(gate_logits, &imp));
      importance.resize(n_active);
      SLUICE_RETURN_IF_ERROR(kernels::CopyBytes(importance.data(), kernels::Device::kCpu, imp.raw(), device, imp.bytes()));
      if (importance_sink_ != nullptr) {
        auto& sink = (*importance_sink_)[li][br];
        sink.insert(sink.end(), importance.begin(), importance.end());
      }
    }
  }

  // 3. GateSkip decisions, per sequence over its active rows.
  std::vector<uint8_t> keep(n_active, 1);
  if (!importance.empty()) {
    int64_t i = 0;
    while (i < n_active) {
      const int32_t s = row_sequence[active[i]];
      int64_t j = i;
      while (j < n_active && row_sequence[active[j]] == s) ++j;
      const SequenceBudget* bud = budget_of(s);
      const int64_t n = j - i;
      if (bud != nullptr && bud->skip_ratio > 0.f) {
        if (n > 1) {
          const int64_t m = static_cast<int64_t>(std::floor(static_cast<double>(bud->skip_ratio) * n));
          std::vector<int64_t> order(n);
          std::iota(order.begin(), order.end(), i);
          std::stable_sort(order.begin(), order.end(),
                           [&](int64_t a, int64_t c) { return importance[a] < importance[c]; });
          for (int64_t k = 0; k < m; ++k) keep[order[k]] = 0;
        } else if (importance[i] < DecodeThreshold(li, br, bud->skip_ratio)) {
          keep[i] = 0;
        }
      }
      i = j;
    }
  }
  std::vector<int32_t> kept, skipped;  // batch rows
  std::vector<int32_t> kept_index;     // their index among the active rows
  for (int64_t i = 0; i < n_active; ++i) {
    if (keep[i]) {
      kept.push_back(active[i]);
      kept_index.push_back(static_cast<int32_t>(i));
    } else {
      skipped.push_back(active[i]);
    }
  }

  // 4. Accounting: what the budgeted sequences did not run.
  if (costs != nullptr && any_budget) {
    std::vector<uint8_t> state(tokens, 0);  // 0 ran, 1 layer skipped, 2 gate-skipped
    for (int32_t r = 0; r < tokens; ++r) state[r] = 1;
    for (int32_t r : active) state[r] = 0;
    for (int32_t r : skipped) state[r] = 2;
    const double gate_flops = gated ? 2.0 * gate.weight->in_features() * gate.width : 0.0;
    const double kv_flops = attention ? static_cast<AttentionMixer*>(layer.mixer.get())->KeyValueFlopsPerToken() : 0.0;
    for (int32_t r = 0; r < tokens; ++r) {
      if (budget_of(row_sequence[r]) == nullptr) continue;
      SequenceCost& c = (*costs)[row_sequence[r]];
      ++c.branches_total;
      if (state[r] == 0) continue;
      ++c.branches_skipped;
      const double f = BranchFlops(li, br, b.positions[r] + 1);
      c.saved_flops += state[r] == 1 ? f + gate_flops : f - (gated && attention ? kv_flops : 0.0);
    }
  }

  // 5. Per-row controls for the rows that run.
  RowControls controls;
  const RowControls* controls_ptr = nullptr;
  if (any_budget) {
    controls.costs = costs;
    bool experts = false, floors = false;
    for (int32_t r : kept) {
      const SequenceBudget* bud = budget_of(row_sequence[r]);
      controls.row_sequence.push_back(row_sequence[r]);
      experts = experts || (bud != nullptr && bud->experts_per_token > 0);
      floors = floors || (bud != nullptr && bud->attention_gate_floor > 0.f);
    }
    if (experts) {
      for (int32_t r : kept) {
        const SequenceBudget* bud = budget_of(row_sequence[r]);
        controls.experts.push_back(bud ? bud->experts_per_token : 0);
      }
    }
    if (floors && attention) {
      for (int32_t r : kept) {
        const SequenceBudget* bud = budget_of(row_sequence[r]);
        controls.gate_floor.push_back(bud ? bud->attention_gate_floor : 0.f);
      }
    }
    // Costs are only kept for budgeted sequences; the counters of the others are dropped
    // by the caller, so no row needs filtering here.
    if (costs == nullptr) controls.costs = nullptr;
    controls_ptr = &controls;
  }

  if (static_cast<int64_t>(kept.size()) == tokens) {
    StepTensors st = step;
    st.controls = controls_ptr;
    SLUICE_RETURN_IF_ERROR(run(st, normed, branch_out));
    if (gated) SLUICE_RETURN_IF_ERROR(kernels::SigmoidGateInPlace(gate_logits, branch_out));
    return kernels::AddInPlace(*branch_out, x);
  }

  // Skipped attention rows still write their K/V, before the kept rows attend to them.
  if (attention && !skipped.empty()) {
    SLUICE_ASSIGN_OR_RETURN(auto sub, MakeSubStep(step, skipped, row_sequence, true, device));
    SLUICE_ASSIGN_OR_RETURN(Tensor xs, Gather(normed, sub->row_ids));
    SLUICE_RETURN_IF_ERROR(static_cast<AttentionMixer*>(layer.mixer.get())->WriteKeyValueOnly(sub->step, xs));
  }
  // A new sequence none of whose rows enter a linear layer still needs a zero state.
  if (br == 0 && layer.linear_attention) {
    std::vector<uint8_t> has_kept(b.sequences.size(), 0);
    for (int32_t r : kept) has_kept[row_sequence[r]] = 1;
    for (int32_t r : active) {
      const int32_t s = row_sequence[r];
      if (!has_kept[s] && b.state_fresh[s]) {
        SLUICE_RETURN_IF_ERROR(layer.mixer->ResetState(step.state_cache, b.state_slots[s]));
        has_kept[s] = 1;
      }
    }
  }
  if (kept.empty()) return absl::OkStatus();
  SLUICE_ASSIGN_OR_RETURN(auto sub, MakeSubStep(step, kept, row_sequence, attention, device));
  sub->step.controls = controls_ptr;
  SLUICE_ASSIGN_OR_RETURN(Tensor xs, Gather(normed, sub->row_ids));
  SLUICE_ASSIGN_OR_RETURN(Tensor ys, Tensor::Empty({static_cast<int64_t>(kept.size()), normed.dim(1)}, DType::kF32, device));
  SLUICE_RETURN_IF_ERROR(run(sub->step, xs, &ys));
  if (gated) {
    SLUICE_ASSIGN_OR_RETURN(Tensor idx, IdsTensor(kept_index, device));
    SLUICE_ASSIGN_OR_RETURN(Tensor gk, Gather(gate_logits, idx));
    SLUICE_RETURN_IF_ERROR(kernels::SigmoidGateInPlace(gk, &ys));
  }
  // x[r] += 1 · y: the same sum as AddInPlace, row by row.
  SLUICE_ASSIGN_OR_RETURN(Tensor ones, Tensor::Empty({static_cast<int64_t>(kept.size())}, DType::kF32, device));
  std::vector<float> host_ones(kept.size(), 1.f);
  SLUICE_RETURN_IF_ERROR(kernels::CopyBytes(ones.raw(), device, host_ones.data(), kernels::Device::kCpu, host_ones.size() * 4));
  return kernels::ScaledScatterAdd(ys, sub->row_ids, ones, x);
}

std::vector<std::string> CausalLm::SupportedBudgetControls() const {
  std::vector<std::string> out;
  if (has_residual_gates_) out.push_back("skip_ratio");
  if (config_.moe.num_experts > 0) out.push_back("experts_per_token");
  if (config_.attention_output_gate && config_.NumAttentionLayers() > 0) out.push_back("attention_gate_floor");
  out.push_back("skip_layers");
  return out;
}

absl::Status CausalLm::ValidateBudget(const ComputeBudget& b) const {
  auto unsupported = [&](absl::string_view field, absl::string_view why) {
    return absl::FailedPreconditionError(absl::StrCat(
        "budget.", field, ": this model (", config_.model_type, ") ", why,
        "; the budget controls it supports are: ", absl::StrJoin(SupportedBudgetControls(), ", ")));
  };
  if (!(b.skip_ratio >= 0.f && b.skip_ratio <= 0.9f)) {
    return absl::InvalidArgumentError(absl::StrCat("budget.skip_ratio must be in [0, 0.9], got ", b.skip_ratio));
  }
  if (b.skip_ratio > 0.f && !has_residual_gates_) {
    return unsupported("skip_ratio", "has no residual gates (GateSkip)");
  }
  if (b.experts_per_token < 0) {
    return absl::InvalidArgumentError("budget.experts_per_token must be >= 0");
  }
  if (b.experts_per_token > 0) {
    if (config_.moe.num_experts == 0) return unsupported("experts_per_token", "is not a mixture of experts");
    if (b.experts_per_token > config_.moe.experts_per_token) {
      return absl::InvalidArgumentError(absl::StrCat("budget.experts_per_token: ", b.experts_per_token,
                                                     " is above the model's k of ",
                                                     config_.moe.experts_per_token));
    }
  }
  if (!(b.attention_gate_floor >= 0.f && b.attention_gate_floor < 1.f)) {
    return absl::InvalidArgumentError(absl::StrCat("budget.attention_gate_floor must be in [0, 1), got ",
                                                   b.attention_gate_floor));
  }
  if (b.attention_gate_floor > 0.f &&
      !(config_.attention_output_gate && config_.NumAttentionLayers() > 0)) {
    return unsupported("attention_gate_floor", "has no gated attention");
  }
  for (const LayerSpan& span : b.skip_layers) {
    if (span.first < 0 || span.last < span.first) {
      return absl::InvalidArgumentError(absl::StrCat("budget.skip_layers: bad span [", span.first, ", ", span.last, "]"));
    }
    if (span.last >= config_.num_layers) {
      return absl::InvalidArgumentError(absl::StrCat("budget.skip_layers: layer ", span.last,
                                                     " is outside the model's layers [0, ",
                                                     config_.num_layers, ")"));
    }
  }
  return absl::OkStatus();
}

float CausalLm::DecodeThreshold(int64_t layer, int branch, float skip_ratio) const {
  if (calibration_.empty()) return 0.f;  // never skip
  const std::vector<float>& sorted = calibration_[layer][branch];
  if (sorted.empty() || skip_ratio <= 0.f) return 0.f;
  const size_t idx = static_cast<size_t>(std::floor(static_cast<double>(skip_ratio) * sorted.size()));
  if (idx >= sorted.size()) return std::numeric_limits<float>::infinity();
  return sorted[idx];
}

// Decode calibration: one dense (no skipping) prefill over the calibration sequences
// records every token's importance per (layer, branch); the sorted values give, for any
// skip ratio r, the threshold below which a fraction r of calibration tokens falls.
absl::Status CausalLm::CalibrateGateSkip(const std::string& dir) {
  std::vector<std::vector<int32_t>> sequences =
      GateSkipCalibrationSequences(dir, config_.vocab_size, &calibration_source_);
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
  ImportanceSink sink(layers_.size());
  importance_sink_ = &sink;
  std::vector<float> logits;
  absl::Status status = Forward(batch, &cache, &state, &logits);
  importance_sink_ = nullptr;
  SLUICE_RETURN_IF_ERROR(status);
  for (auto& layer : sink) {
    for (auto& v : layer) std::sort(v.begin(), v.end());
  }
  calibration_ = std::move(sink);
  return absl::OkStatus();
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
      for (const ResidualGate& g : layer.gates) {
        if (g.weight) flops += 2.0 * g.weight->in_features() * g.width;
      }
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
    for (const ResidualGate& g : layer.gates) {
      if (g.weight) flops += 2.0 * g.weight->in_features() * g.width;
    }
  }
  return flops;
}

uint64_t CausalLm::WeightBytesPerToken() const { return weight_bytes_per_token_; }

std::vector<std::pair<int32_t, std::vector<uint64_t>>> CausalLm::ExpertTokenCounts() const {
  std::vector<std::pair<int32_t, std::vector<uint64_t>>> out;
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (const auto* moe = dynamic_cast<const MoeFeedForward*>(layers_[i].ffn.get())) {
      out.emplace_back(static_cast<int32_t>(i), moe->ExpertTokenCounts());
    }
  }
  return out;
}

}  // namespace sluice::engine
