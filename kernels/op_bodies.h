// The per-device bodies of the ops in ops.h and gated_delta_net.h (see dispatch.h for
// the pattern). Internal to kernels/: the device-neutral .cc files dispatch to these
// after their shape, dtype and device checks; cpu/ defines the kCpu specialisations,
// cuda/ (when built) the kCuda ones, declared in cuda/op_bodies_cuda.h.
//
// A body may assume what the neutral half checked (shapes, dtypes, one device, M > 0
// where stated) and must check what it did not: anything that reads tensor contents.
#ifndef SLUICE_KERNELS_OP_BODIES_H_
#define SLUICE_KERNELS_OP_BODIES_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/dispatch.h"
#include "kernels/gated_delta_net.h"
#include "kernels/ops.h"
#include "kernels/tensor.h"

namespace sluice::kernels {

// Packs `weight` (any device) into a Linear whose GEMM runs on the dispatched device.
SLUICE_DECLARE_DEVICE_BODY(absl::StatusOr<std::unique_ptr<Linear>>, CreateLinear, "Linear",
                           const Tensor& weight);
// A quantized Linear (options.quantization != kNone) on the dispatched device; a device
// without a kernel for the format answers UNIMPLEMENTED.
SLUICE_DECLARE_DEVICE_BODY(absl::StatusOr<std::unique_ptr<Linear>>, CreateQuantizedLinear,
                           "quantized Linear", const Tensor& weight, const LinearOptions& options);
// A Linear over row references to pre-quantized checkpoint weights (prequantized_weight.h),
// on the dispatched device; refs: kWeightRowRefs [N, K] on the CPU.
SLUICE_DECLARE_DEVICE_BODY(absl::StatusOr<std::unique_ptr<Linear>>, CreatePrequantizedLinear,
                           "pre-quantized Linear", const Tensor& refs);
// f32 copy of t on t's device.
SLUICE_DECLARE_DEVICE_BODY(absl::StatusOr<Tensor>, ToF32, "ToF32", const Tensor& t);
// parts: 2-D, equal columns, all on the dispatched device.
SLUICE_DECLARE_DEVICE_BODY(absl::StatusOr<Tensor>, ConcatRows, "ConcatRows",
                           absl::Span<const Tensor> parts);

SLUICE_DECLARE_DEVICE_BODY(absl::Status, EmbeddingLookup, "EmbeddingLookup", const Tensor& table,
                           const Tensor& ids, Tensor* out);
SLUICE_DECLARE_DEVICE_BODY(absl::Status, EmbeddingLookupInt8, "EmbeddingLookup(int8)",
                           const Tensor& table, const Tensor& row_scales, const Tensor& ids,
                           Tensor* out);
SLUICE_DECLARE_DEVICE_BODY(absl::Status, RmsNorm, "RmsNorm", const Tensor& x,
                           const Tensor& weight, float eps, float weight_offset, Tensor* out);
SLUICE_DECLARE_DEVICE_BODY(absl::Status, ApplyRotaryEmbedding, "ApplyRotaryEmbedding",
                           const Tensor& positions, const Tensor& cos_sin, int64_t rotary_dim,
                           Tensor* x);
SLUICE_DECLARE_DEVICE_BODY(absl::Status, SiluMul, "SiluMul", const Tensor& gate_up, Tensor* out);
SLUICE_DECLARE_DEVICE_BODY(absl::Status, CopyColumns, "CopyColumns", const Tensor& src,
                           int64_t col_start, Tensor* dst);
SLUICE_DECLARE_DEVICE_BODY(absl::Status, SigmoidGateInPlace, "SigmoidGateInPlace",
                           const Tensor& gate, Tensor* x);
SLUICE_DECLARE_DEVICE_BODY(absl::Status, ClampInPlace, "ClampInPlace", float limit, Tensor* x);
// row_k: i32 [T] or undefined.
SLUICE_DECLARE_DEVICE_BODY(absl::Status, RouteTopK, "RouteTopK", const Tensor& logits, int64_t k,
                           bool renormalize, Tensor* experts, Tensor* weights,
                           const Tensor& row_k);
SLUICE_DECLARE_DEVICE_BODY(absl::Status, ScaledScatterAdd, "ScaledScatterAdd", const Tensor& y,
                           const Tensor& rows, const Tensor& scale, Tensor* out);
SLUICE_DECLARE_DEVICE_BODY(absl::Status, DeltaRuleGates, "DeltaRuleGates", const Tensor& a,
                           const Tensor& b, const Tensor& a_log, const Tensor& dt_bias, Tensor* g,
                           Tensor* beta);
SLUICE_DECLARE_DEVICE_BODY(absl::Status, SigmoidGroupMean, "SigmoidGroupMean", const Tensor& x,
                           Tensor* out);
SLUICE_DECLARE_DEVICE_BODY(absl::Status, AddBiasInPlace, "AddBiasInPlace", const Tensor& bias,
                           Tensor* x);
SLUICE_DECLARE_DEVICE_BODY(absl::Status, AddInPlace, "AddInPlace", const Tensor& y, Tensor* x);
SLUICE_DECLARE_DEVICE_BODY(absl::Status, FillConstant, "FillConstant", float value, Tensor* x);
SLUICE_DECLARE_DEVICE_BODY(absl::Status, HeadSkipMask, "HeadSkipMask",
                           const Tensor& head_gate_mean, const Tensor& row_floor, Tensor* mask);
SLUICE_DECLARE_DEVICE_BODY(absl::Status, GatherRows, "GatherRows", const Tensor& x,
                           const Tensor& rows, Tensor* out);
// k_scale, v_scale: null unless the cache is f8_e4m3.
SLUICE_DECLARE_DEVICE_BODY(absl::Status, WriteKvCache, "WriteKvCache", const Tensor& k,
                           const Tensor& v, const Tensor& slot_mapping, Tensor* k_cache,
                           Tensor* v_cache, Tensor* k_scale, Tensor* v_scale);
// head_skip: i32 [T, H_q] or undefined; k_scale, v_scale: undefined unless f8_e4m3.
SLUICE_DECLARE_DEVICE_BODY(absl::Status, PagedAttention, "PagedAttention", const Tensor& q,
                           const Tensor& k_cache, const Tensor& v_cache,
                           const AttentionBatch& batch, float scale, Tensor* out,
                           const Tensor& head_skip, const Tensor& k_scale,
                           const Tensor& v_scale);

SLUICE_DECLARE_DEVICE_BODY(absl::Status, CausalConv1dSilu, "CausalConv1dSilu", const Tensor& x,
                           const Tensor& weight, const LinearAttentionBatch& batch,
                           Tensor* conv_state, Tensor* y);
SLUICE_DECLARE_DEVICE_BODY(absl::Status, GatedDeltaRule, "GatedDeltaRule", const Tensor& q,
                           const Tensor& k, const Tensor& v, const Tensor& g, const Tensor& beta,
                           const LinearAttentionBatch& batch, Tensor* state, Tensor* out,
                           GatedDeltaRuleMode mode);
// copies: non-empty, host memory (the body checks the slots).
SLUICE_DECLARE_DEVICE_BODY(absl::Status, CopyStateSlots, "CopyStateSlots",
                           absl::Span<const SlotCopy> copies, Tensor* state);
SLUICE_DECLARE_DEVICE_BODY(absl::Status, GatedRmsNorm, "GatedRmsNorm", const Tensor& x,
                           const Tensor& z, const Tensor& weight, float eps, Tensor* out);

}  // namespace sluice::kernels

#ifdef SLUICE_WITH_CUDA
#include "kernels/cuda/op_bodies_cuda.h"
#endif

#endif  // SLUICE_KERNELS_OP_BODIES_H_
