// Device-neutral half of the mixture-of-experts ops: shape, dtype and device checks
// (never tensor contents, which may live on a GPU), then dispatch on the device
// (dispatch.h; the bodies are declared in cpu/moe_cpu.h).
#include "kernels/moe.h"

#include <initializer_list>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/moe_cpu.h"
#include "kernels/dispatch.h"

namespace sluice::kernels {
namespace {

absl::Status Invalid(absl::string_view op, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(op, ": ", what));
}

// Every tensor non-null, defined and on `device`.
absl::Status OnDevice(absl::string_view op, Device device, std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors) {
    if (t == nullptr || !t->defined()) return Invalid(op, "undefined tensor");
    if (t->device() != device) {
      return Invalid(op, absl::StrCat("tensor on ", DeviceName(t->device()), ", expected ", DeviceName(device)));
    }
  }
  return absl::OkStatus();
}

// The grouping tensors AlignRowsByExpert writes and GroupedExperts reads.
absl::Status CheckGrouping(absl::string_view op, const Tensor& offsets, const Tensor& rows,
                           const Tensor& weights) {
  if (offsets.dtype() != DType::kI32 || offsets.rank() != 1 || offsets.numel() < 1) {
    return Invalid(op, absl::StrCat("expert_offsets must be i32 [E + 1], got ", offsets.DebugString()));
  }
  if (rows.dtype() != DType::kI32 || rows.rank() != 1) {
    return Invalid(op, absl::StrCat("sorted_rows must be i32 [T·k], got ", rows.DebugString()));
  }
  if (weights.dtype() != DType::kF32 || weights.rank() != 1 || weights.numel() != rows.numel()) {
    return Invalid(op, absl::StrCat("sorted_weights must be f32 like sorted_rows, got ", weights.DebugString()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status AlignRowsByExpert(const Tensor& experts, const Tensor& weights, Tensor* expert_offsets,
                               Tensor* sorted_rows, Tensor* sorted_weights, Tensor* expert_tokens) {
  constexpr absl::string_view kOp = "AlignRowsByExpert";
  if (!experts.defined()) return Invalid(kOp, "undefined tensor");
  const Device device = experts.device();
  if (auto s = OnDevice(kOp, device, {&weights, expert_offsets, sorted_rows, sorted_weights}); !s.ok()) return s;
  if (expert_tokens != nullptr) {
    if (auto s = OnDevice(kOp, device, {expert_tokens}); !s.ok()) return s;
  }
  if (experts.dtype() != DType::kI32 || experts.rank() != 2) {
    return Invalid(kOp, absl::StrCat("experts must be i32 [T, k], got ", experts.DebugString()));
  }
  if (weights.dtype() != DType::kF32 || weights.shape() != experts.shape()) {
    return Invalid(kOp, absl::StrCat("weights must be f32 shaped like experts, got ", weights.DebugString()));
  }
  if (auto s = CheckGrouping(kOp, *expert_offsets, *sorted_rows, *sorted_weights); !s.ok()) return s;
  if (sorted_rows->numel() != experts.numel()) {
    return Invalid(kOp, absl::StrCat("sorted_rows must hold T·k = ", experts.numel(), " entries, got ",
                                     sorted_rows->numel()));
  }
  const int64_t num_experts = expert_offsets->numel() - 1;
  if (expert_tokens != nullptr &&
      (expert_tokens->dtype() != DType::kI64 || expert_tokens->numel() != num_experts)) {
    return Invalid(kOp, absl::StrCat("expert_tokens must be i64 [", num_experts, "], got ",
                                     expert_tokens->DebugString()));
  }
  return SLUICE_DEVICE_DISPATCH(device, AlignRowsByExpertBody<D>(experts, weights, expert_offsets, sorted_rows,
                                                                  sorted_weights, expert_tokens));
}

absl::StatusOr<std::vector<uint64_t>> ReadExpertTokenCounter(const Tensor& expert_tokens) {
  constexpr absl::string_view kOp = "ReadExpertTokenCounter";
  if (!expert_tokens.defined() || expert_tokens.dtype() != DType::kI64 || expert_tokens.rank() != 1) {
    return Invalid(kOp, "expected an i64 [E] counter");
  }
  return SLUICE_DEVICE_DISPATCH(expert_tokens.device(), ReadExpertTokenCounterBody<D>(expert_tokens));
}

absl::StatusOr<std::unique_ptr<GroupedExperts>> GroupedExperts::Create(absl::Span<const Tensor> gate_up,
                                                                       absl::Span<const Tensor> down,
                                                                       Device device) {
  return Create(gate_up, down, device, DefaultLinearOptions());
}

absl::StatusOr<std::unique_ptr<GroupedExperts>> GroupedExperts::Create(absl::Span<const Tensor> gate_up,
                                                                       absl::Span<const Tensor> down,
                                                                       Device device,
                                                                       const LinearOptions& options) {
  constexpr absl::string_view kOp = "GroupedExperts";
  if (options.quantization == WeightQuantization::kInt4 && options.group_size <= 0) {
    return Invalid(kOp, absl::StrCat("int4 group size ", options.group_size, " must be positive"));
  }
  if (gate_up.empty() || gate_up.size() != down.size()) {
    return Invalid(kOp, "needs one gate_up and one down weight per expert, at least one expert");
  }
  const Tensor& g0 = gate_up[0];
  if (!g0.defined() || g0.rank() != 2 || g0.dim(0) <= 0 || g0.dim(0) % 2 != 0 || g0.dim(1) <= 0) {
    return Invalid(kOp, absl::StrCat("gate_up must be [2I, H], got ", g0.DebugString()));
  }
  const int64_t inter = g0.dim(0) / 2;
  const int64_t hidden = g0.dim(1);
  for (size_t e = 0; e < gate_up.size(); ++e) {
    for (const Tensor* t : {&gate_up[e], &down[e]}) {
      if (!t->defined() || (t->dtype() != DType::kF32 && t->dtype() != DType::kBF16 &&
                            t->dtype() != DType::kF16 && t->dtype() != DType::kWeightRowRefs)) {
        return Invalid(kOp, absl::StrCat("expert ", e,
                                         ": weights must be f32, bf16, f16 or a pre-quantized checkpoint's "
                                         "row references"));
      }
      if (t->device() != Device::kCpu) {
        return absl::UnimplementedError(absl::StrCat(kOp, ": packing a weight from a ", DeviceName(t->device()),
                                                     " tensor"));
      }
    }
    if (gate_up[e].shape() != g0.shape() || down[e].rank() != 2 || down[e].dim(0) != hidden ||
        down[e].dim(1) != inter) {
      return Invalid(kOp, absl::StrCat("expert ", e, ": gate_up ", gate_up[e].DebugString(), " and down ",
                                       down[e].DebugString(), " do not match [2I, H] = ", ShapeString(g0.shape()),
                                       " and [H, I]"));
    }
  }
  return SLUICE_DEVICE_DISPATCH(device, CreateGroupedExpertsBody<D>(gate_up, down, options));
}

absl::Status GroupedExperts::Forward(const Tensor& x, const Tensor& expert_offsets, const Tensor& sorted_rows,
                                     const Tensor& sorted_weights, Tensor* out) {
  constexpr absl::string_view kOp = "GroupedExperts";
  if (auto s = OnDevice(kOp, device_, {&x, &expert_offsets, &sorted_rows, &sorted_weights, out}); !s.ok()) {
    return s;
  }
  if (x.dtype() != DType::kF32 || x.rank() != 2 || x.dim(1) != hidden_ || out->dtype() != DType::kF32 ||
      out->shape() != x.shape()) {
    return Invalid(kOp, absl::StrCat("x and out must be f32 [T, ", hidden_, "], got x ", x.DebugString(),
                                     ", out ", out->DebugString()));
  }
  if (auto s = CheckGrouping(kOp, expert_offsets, sorted_rows, sorted_weights); !s.ok()) return s;
  if (expert_offsets.numel() != num_experts_ + 1) {
    return Invalid(kOp, absl::StrCat("expert_offsets must hold E + 1 = ", num_experts_ + 1, " entries, got ",
                                     expert_offsets.numel()));
  }
  return Run(x, expert_offsets, sorted_rows, sorted_weights, out);
}

}  // namespace sluice::kernels
