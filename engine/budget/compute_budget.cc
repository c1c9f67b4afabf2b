#include "engine/budget/compute_budget.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace sluice::engine {

std::vector<std::string> SupportedBudgetControls(const BudgetCapabilities& caps) {
  std::vector<std::string> out;
  if (caps.residual_gates) out.push_back("skip_ratio");
  if (caps.moe_top_k > 0) out.push_back("experts_per_token");
  if (caps.gated_attention) out.push_back("attention_gate_floor");
  out.push_back("skip_layers");
  return out;
}

absl::Status ValidateBudget(const BudgetCapabilities& caps, const ComputeBudget& b) {
  auto unsupported = [&](absl::string_view field, absl::string_view why) {
    return absl::FailedPreconditionError(absl::StrCat(
        "budget.", field, ": this model (", caps.model_type, ") ", why,
        "; the budget controls it supports are: ", absl::StrJoin(SupportedBudgetControls(caps), ", ")));
  };
  if (!(b.skip_ratio >= 0.f && b.skip_ratio <= 0.9f)) {
    return absl::InvalidArgumentError(absl::StrCat("budget.skip_ratio must be in [0, 0.9], got ", b.skip_ratio));
  }
  if (b.skip_ratio > 0.f && !caps.residual_gates) {
    return unsupported("skip_ratio", "has no residual gates (GateSkip)");
  }
  if (b.experts_per_token < 0) {
    return absl::InvalidArgumentError("budget.experts_per_token must be >= 0");
  }
  if (b.experts_per_token > 0) {
    if (caps.moe_top_k == 0) return unsupported("experts_per_token", "is not a mixture of experts");
    if (b.experts_per_token > caps.moe_top_k) {
      return absl::InvalidArgumentError(absl::StrCat("budget.experts_per_token: ", b.experts_per_token,
                                                     " is above the model's k of ", caps.moe_top_k));
    }
  }
  if (!(b.attention_gate_floor >= 0.f && b.attention_gate_floor < 1.f)) {
    return absl::InvalidArgumentError(absl::StrCat("budget.attention_gate_floor must be in [0, 1), got ",
                                                   b.attention_gate_floor));
  }
  if (b.attention_gate_floor > 0.f && !caps.gated_attention) {
    return unsupported("attention_gate_floor", "has no gated attention");
  }
  for (const LayerSpan& span : b.skip_layers) {
    if (span.first < 0 || span.last < span.first) {
      return absl::InvalidArgumentError(absl::StrCat("budget.skip_layers: bad span [", span.first, ", ", span.last, "]"));
    }
    if (span.last >= caps.num_layers) {
      return absl::InvalidArgumentError(absl::StrCat("budget.skip_layers: layer ", span.last,
                                                     " is outside the model's layers [0, ",
                                                     caps.num_layers, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace sluice::engine
