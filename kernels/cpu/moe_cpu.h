// The per-device bodies of the mixture-of-experts ops (kernels/moe.h), declared the
// dispatch.h way: the primary template answers UNIMPLEMENTED, cpu/moe_cpu.cc defines
// the kCpu specialisations (a CUDA file would add kCuda ones). Internal to kernels/.
// The bodies may assume what kernels/moe.cc checked (shapes, dtypes, devices) and check
// what reads tensor contents.
#ifndef SLUICE_KERNELS_CPU_MOE_CPU_H_
#define SLUICE_KERNELS_CPU_MOE_CPU_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/dispatch.h"
#include "kernels/moe.h"
#include "kernels/ops.h"
#include "kernels/tensor.h"

namespace sluice::kernels {

SLUICE_DECLARE_DEVICE_BODY(absl::Status, AlignRowsByExpert, "AlignRowsByExpert", const Tensor& experts,
                           const Tensor& weights, Tensor* expert_offsets, Tensor* sorted_rows,
                           Tensor* sorted_weights, Tensor* expert_tokens);
SLUICE_DECLARE_DEVICE_BODY(absl::StatusOr<std::vector<uint64_t>>, ReadExpertTokenCounter,
                           "ReadExpertTokenCounter", const Tensor& expert_tokens);
// gate_up and down: host tensors, checked for shape and dtype; options: a positive int4
// group size checked (the body checks the sizes its format supports).
SLUICE_DECLARE_DEVICE_BODY(absl::StatusOr<std::unique_ptr<GroupedExperts>>, CreateGroupedExperts,
                           "GroupedExperts", absl::Span<const Tensor> gate_up, absl::Span<const Tensor> down,
                           const LinearOptions& options);

}  // namespace sluice::kernels

#endif  // SLUICE_KERNELS_CPU_MOE_CPU_H_
