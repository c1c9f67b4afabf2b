// Which compute-budget controls a model honours, and the validation of a request's
// ComputeBudget against them (INVALID_ARGUMENT for values out of range,
// FAILED_PRECONDITION naming the supported controls for one the model cannot honour).
#ifndef SLUICE_ENGINE_BUDGET_COMPUTE_BUDGET_H_
#define SLUICE_ENGINE_BUDGET_COMPUTE_BUDGET_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/request.h"

namespace sluice::engine {

// What a loaded model offers the budget controls.
struct BudgetCapabilities {
  std::string model_type;
  int64_t num_layers = 0;
  bool residual_gates = false;     // GateSkip gates on some branch: skip_ratio
  int64_t moe_top_k = 0;           // the model's k; 0: not a mixture of experts
  bool gated_attention = false;    // softmax layers with an output gate: attention_gate_floor
};

// The controls the model honours, by ComputeBudget field name.
std::vector<std::string> SupportedBudgetControls(const BudgetCapabilities& caps);
absl::Status ValidateBudget(const BudgetCapabilities& caps, const ComputeBudget& budget);

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_BUDGET_COMPUTE_BUDGET_H_
