// A request's compute budget as the model runs it, and what a forward pass reports it
// actually ran. Plain data shared by the scheduler, the model and engine/budget/.
#ifndef SLUICE_ENGINE_BUDGET_BUDGET_H_
#define SLUICE_ENGINE_BUDGET_BUDGET_H_

#include <algorithm>
#include <cstdint>
#include <vector>

#include "engine/request.h"

namespace sluice::engine {

// A request's compute budget as the model runs it (Engine::Submit has validated the
// ComputeBudget it comes from; see CausalLm::ValidateBudget).
struct SequenceBudget {
  float skip_ratio = 0.f;            // GateSkip: share of branch rows to skip, [0, 0.9]
  int32_t experts_per_token = 0;     // MoE top-k override; 0: the model's k
  float attention_gate_floor = 0.f;  // gated attention: skip heads whose mean gate < floor
  std::vector<uint8_t> skip_layer;   // [num_layers] (or empty): 1 = layer skipped
  int32_t num_skipped_layers = 0;

  bool empty() const {
    return skip_ratio == 0.f && experts_per_token == 0 && attention_gate_floor == 0.f &&
           num_skipped_layers == 0;
  }
  bool SkipsLayer(int64_t layer) const {
    return !skip_layer.empty() && skip_layer[static_cast<size_t>(layer)] != 0;
  }
};

// Resolves a validated ComputeBudget for a model of `num_layers` layers.
inline SequenceBudget ResolveBudget(const ComputeBudget& budget, int64_t num_layers) {
  SequenceBudget b;
  b.skip_ratio = budget.skip_ratio;
  b.experts_per_token = budget.experts_per_token;
  b.attention_gate_floor = budget.attention_gate_floor;
  if (!budget.skip_layers.empty()) {
    b.skip_layer.assign(static_cast<size_t>(num_layers), 0);
    for (const LayerSpan& span : budget.skip_layers) {
      for (int32_t l = std::max(span.first, 0); l <= span.last && l < num_layers; ++l) {
        b.skip_layer[l] = 1;
      }
    }
    for (uint8_t s : b.skip_layer) b.num_skipped_layers += s;
  }
  return b;
}

// What one sequence's rows of a forward pass actually ran, filled by Forward for each
// sequence that has a non-empty budget. FLOPs count a multiply-add as 2.
struct SequenceCost {
  // FLOPs the budget saved against the dense pass of the same rows: the shapes that were
  // not run (skipped branch rows, skipped heads' attention, experts beyond the row's k).
  // Executed FLOPs = dense FLOPs − saved_flops, so an empty budget saves exactly 0.
  double saved_flops = 0;
  uint64_t branches_skipped = 0;  // (token, layer, branch) triples not run
  uint64_t branches_total = 0;
  uint64_t expert_assignments = 0;  // Σ over (token, MoE layer) of experts actually run
  uint64_t moe_token_layers = 0;    // (token, MoE layer) pairs whose MoE FFN ran
  uint64_t heads_skipped = 0;       // (token, attention layer, query head) triples skipped
  uint64_t heads_total = 0;
};

}  // namespace sluice::engine

#endif  // SLUICE_ENGINE_BUDGET_BUDGET_H_
