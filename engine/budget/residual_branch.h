// The compute-budget machinery of one forward pass: which rows of the ragged batch run
// each residual branch (skip_layers, GateSkip), the per-row knobs the branches honour
// (experts_per_token, attention_gate_floor), and the accounting of what was not run.
// The model (engine/model/causal_lm.cc) calls ResidualBranchRunner::Run once per branch;
// the mixers and FFNs see only the rows they must compute.
#ifndef SLUICE_ENGINE_BUDGET_RESIDUAL_BRANCH_H_
#define SLUICE_ENGINE_BUDGET_RESIDUAL_BRANCH_H_

#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/budget/budget.h"
#include "engine/budget/gateskip_calibration.h"
#include "engine/model/blocks.h"
#include "kernels/ops.h"
#include "kernels/tensor.h"

namespace sluice::engine {

// GateSkip residual gate of one branch: out = h + sigmoid(W x + b) ⊙ f(x), x the branch
// input (after the branch's norm). weight is null when the branch has none.
struct ResidualGate {
  std::unique_ptr<kernels::Linear> weight;  // [width, hidden], width = hidden or 1
  kernels::Tensor bias;                     // f32 [width], undefined when absent
  int64_t width = 0;
  double FlopsPerToken() const { return weight ? 2.0 * weight->in_features() * width : 0.0; }
};

// One residual branch of one layer: its mixer or its FFN (exactly one is set).
struct ResidualBranch {
  int64_t layer = 0;
  int index = 0;  // 0: the mixer branch, 1: the FFN branch
  const ResidualGate* gate = nullptr;
  Mixer* mixer = nullptr;
  FeedForward* ffn = nullptr;
};

// The budgets of one forward pass, resolved per row once for all its branches.
class StepBudgets {
 public:
  // INVALID_ARGUMENT when batch.budgets is neither empty nor one per sequence, or (when
  // rows must be attributed: any budget, or gates) a row belongs to no sequence.
  static absl::StatusOr<StepBudgets> Create(const ForwardBatch& batch, bool has_residual_gates);
  bool any() const { return any_; }
  // The sequence's budget, or null when it runs dense.
  const SequenceBudget* of(int32_t sequence) const;
  // [T] sequence of each row; empty unless any() or the model has gates.
  const std::vector<int32_t>& row_sequence() const { return row_sequence_; }
  // Some sequence has an attention-gate floor.
  bool any_gate_floor() const { return any_gate_floor_; }

 private:
  const ForwardBatch* batch_ = nullptr;
  bool any_ = false;
  bool any_gate_floor_ = false;
  std::vector<int32_t> row_sequence_;
};

class ResidualBranchRunner {
 public:
  // thresholds: GateSkip decode thresholds (may be empty: decode never skips).
  // importance_sink: when set (calibration), every row's importance per (layer, branch).
  // head_skips: where attention layers record their head-skip masks (null: not counted).
  ResidualBranchRunner(const GateSkipThresholds* thresholds,
                       GateSkipThresholds::Importances* importance_sink, HeadSkipRecorder* head_skips)
      : thresholds_(thresholds), importance_sink_(importance_sink), head_skips_(head_skips) {}

  // x[r] += gate_r ⊙ f(normed)[r] for the rows r that run the branch (gate_r = 1 without
  // a residual gate); see the definition for which rows skip. branch_out: f32 [T, hidden]
  // scratch. costs (one per sequence, or null) collects what budgeted sequences saved.
  absl::Status Run(const ResidualBranch& branch, const StepBudgets& budgets, const StepTensors& step,
                   const kernels::Tensor& normed, kernels::Tensor* x, kernels::Tensor* branch_out,
                   std::vector<SequenceCost>* costs) const;

 private:
  const GateSkipThresholds* thresholds_;
  GateSkipThresholds::Importances* importance_sink_;
  HeadSkipRecorder* head_skips_;
};

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_BUDGET_RESIDUAL_BRANCH_H_
