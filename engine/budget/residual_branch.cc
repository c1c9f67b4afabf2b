#include "engine/budget/residual_branch.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "engine/model/device_batch.h"
#include "kernels/device_memory.h"
#include "kernels/status_macros.h"

namespace sluice::engine {

using kernels::DType;
using kernels::Tensor;

absl::StatusOr<StepBudgets> StepBudgets::Create(const ForwardBatch& batch, bool has_residual_gates) {
  StepBudgets out;
  out.batch_ = &batch;
  if (!batch.budgets.empty()) {
    if (batch.budgets.size() != batch.sequences.size()) {
      return absl::InvalidArgumentError("ForwardBatch: budgets must be empty or one per sequence");
    }
    for (const SequenceBudget* b : batch.budgets) {
      out.any_ = out.any_ || (b != nullptr && !b->empty());
      out.any_gate_floor_ = out.any_gate_floor_ || (b != nullptr && b->attention_gate_floor > 0.f);
    }
  }
  const int32_t tokens = batch.num_tokens();
  if (out.any_ || has_residual_gates) {
    out.row_sequence_.assign(tokens, -1);
    for (size_t s = 0; s < batch.sequences.size(); ++s) {
      const auto& seq = batch.sequences[s];
      if (seq.query_start < 0 || seq.query_len < 0 || seq.query_start + seq.query_len > tokens) {
        return absl::InvalidArgumentError("ForwardBatch: bad sequence rows");
      }
      for (int32_t r = seq.query_start; r < seq.query_start + seq.query_len; ++r) {
        out.row_sequence_[r] = static_cast<int32_t>(s);
      }
    }
    for (int32_t s : out.row_sequence_) {
      if (s < 0) return absl::InvalidArgumentError("ForwardBatch: a row belongs to no sequence");
    }
  }
  return out;
}

const SequenceBudget* StepBudgets::of(int32_t s) const {
  const ForwardBatch& b = *batch_;
  if (b.budgets.empty() || b.budgets[s] == nullptr || b.budgets[s]->empty()) return nullptr;
  return b.budgets[s];
}

namespace {

absl::StatusOr<Tensor> IdsTensor(const std::vector<int32_t>& v, kernels::Device device) {
  SLUICE_ASSIGN_OR_RETURN(Tensor t, Tensor::Empty({static_cast<int64_t>(v.size())}, DType::kI32, device));
  SLUICE_RETURN_IF_ERROR(kernels::CopyFromHost(v.data(), &t));
  return t;
}

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
  SLUICE_ASSIGN_OR_RETURN(sub->row_ids, IdsTensor(rows, device));
  SLUICE_ASSIGN_OR_RETURN(const DeviceBatch meta, DeviceBatch::Upload(out, full.kv_cache->shape().block_size, device));
  sub->step.positions = meta.positions;
  sub->step.slot_mapping = meta.slot_mapping;
  sub->step.attention = meta.attention;
  sub->step.linear = meta.linear;
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


}  // namespace

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
absl::Status ResidualBranchRunner::Run(const ResidualBranch& branch, const StepBudgets& budgets,
                                       const StepTensors& step, const Tensor& normed, Tensor* x,
                                       Tensor* branch_out, std::vector<SequenceCost>* costs) const {
  const int64_t li = branch.layer;
  const int br = branch.index;
  const ResidualGate& gate = *branch.gate;
  const bool gated = gate.weight != nullptr;
  const bool any_budget = budgets.any();
  const std::vector<int32_t>& row_sequence = budgets.row_sequence();
  auto run = [&](const StepTensors& st, const Tensor& in, Tensor* out) -> absl::Status {
    return branch.mixer != nullptr ? branch.mixer->Forward(st, in, out) : branch.ffn->Forward(in, out, st.controls);
  };
  if (!any_budget && !gated) {
    // The dense path, exactly as a server without budgets runs it.
    SLUICE_RETURN_IF_ERROR(run(step, normed, branch_out));
    return kernels::AddInPlace(*branch_out, x);
  }
  const ForwardBatch& b = *step.batch;
  const int64_t tokens = b.num_tokens();
  const kernels::Device device = x->device();
  auto budget_of = [&](int32_t s) { return budgets.of(s); };
  // Mixers whose cache holds every position (attention) see a row subset as queries at
  // their own positions; recurrent ones see it as one shorter sequence.
  const bool attention =
      branch.mixer != nullptr && branch.mixer->CacheSpec().kind == LayerCacheSpec::Kind::kKvBlocks;
  const bool recurrent =
      branch.mixer != nullptr && branch.mixer->CacheSpec().kind == LayerCacheSpec::Kind::kStateSlot;

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
      // The one device-to-host copy a GateSkip branch needs: which rows it keeps decides
      // the shapes of everything after it.
      SLUICE_RETURN_IF_ERROR(kernels::CopyToHost(imp, importance.data()));
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
        } else if (thresholds_ != nullptr && importance[i] < thresholds_->DecodeThreshold(li, br, bud->skip_ratio)) {
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
    const double gate_flops = gate.FlopsPerToken();
    const double kv_flops = branch.mixer != nullptr ? branch.mixer->SkippedRowFlopsPerToken() : 0.0;
    for (int32_t r = 0; r < tokens; ++r) {
      if (budget_of(row_sequence[r]) == nullptr) continue;
      SequenceCost& c = (*costs)[row_sequence[r]];
      ++c.branches_total;
      if (state[r] == 0) continue;
      ++c.branches_skipped;
      const double f = branch.mixer != nullptr ? branch.mixer->FlopsPerToken(b.positions[r] + 1)
                                               : branch.ffn->FlopsPerToken();
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
    if (controls.costs != nullptr && !controls.gate_floor.empty()) controls.head_skips = head_skips_;
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
    SLUICE_RETURN_IF_ERROR(branch.mixer->WriteSkippedRows(sub->step, xs));
  }
  // A new sequence none of whose rows enter a linear layer still needs a zero state.
  if (recurrent) {
    std::vector<uint8_t> has_kept(b.sequences.size(), 0);
    for (int32_t r : kept) has_kept[row_sequence[r]] = 1;
    for (int32_t r : active) {
      const int32_t s = row_sequence[r];
      if (!has_kept[s] && b.state_fresh[s]) {
        SLUICE_RETURN_IF_ERROR(branch.mixer->ResetState(step.state_cache, b.state_slots[s]));
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
  SLUICE_RETURN_IF_ERROR(kernels::FillConstant(1.f, &ones));
  return kernels::ScaledScatterAdd(ys, sub->row_ids, ones, x);
}

}  // namespace sluice::engine
