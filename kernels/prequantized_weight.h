// Pre-quantized checkpoint weights (FP8 with block scales, GPTQ int4) on their way from the
// checkpoint to a Linear.
//
// Model code loads every projection the same way: it reads [N, K] weights from the
// checkpoint, reorders or stacks their rows (q|k|v, gate|up, the Gated DeltaNet in_proj
// parts, the attention output gate's rows), and hands the result to Linear::Create. A
// pre-quantized weight cannot travel that path as a plain tensor: its scales are per block
// of rows (FP8) or per group of inputs with a zero point (GPTQ), and its codes are packed
// along K (GPTQ). So the checkpoint hands out a kWeightRowRefs tensor instead: [N, K],
// one byte per element, whose row r begins with a 16-byte reference to row r of a
// registered PrequantizedWeight (the rest of the row is zero). Row copies, ConcatRows and
// reshapes move references exactly as they would move rows, and Linear::Create resolves
// them and packs the rows from the checkpoint's own tensors (memory-mapped, never copied
// or dequantized). Any other op refuses the dtype.
//
// The registry holds weights weakly: whoever makes the references (the checkpoint, for as
// long as it is open) keeps the PrequantizedWeight alive until the Linears exist. A
// reference to a released weight is FAILED_PRECONDITION, never garbage.
#ifndef SLUICE_KERNELS_PREQUANTIZED_WEIGHT_H_
#define SLUICE_KERNELS_PREQUANTIZED_WEIGHT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/tensor.h"

namespace sluice::kernels {

struct PrequantizedWeight {
  enum class Format {
    // A plain f32|bf16|f16 weight handed out in the same form, so that it can share a
    // fused projection with pre-quantized rows (e.g. in_proj_b/a, kept bf16 next to an
    // FP8 in_proj_qkv).
    kDense,
    // transformers' fine-grained FP8: codes f8_e4m3 [N, K]; block_scales f32|bf16
    // [ceil(N / block_rows), ceil(K / block_cols)] (the checkpoint's weight_scale_inv);
    // w[n, k] = fp8(codes[n, k]) · block_scales[n / block_rows, k / block_cols].
    kFp8Block,
    // GPTQ, 4 bits: qweight i32 [K / 8, N] (input 8i + j in bits 4j.. of word i);
    // qzeros i32 [G, N / 8] (column 8c + j in bits 4j.. of word c); scales f16 [G, N];
    // g_idx i32 [K] (or undefined: input k in group k / group_size);
    // w[n, k] = scales[g, n] · (q[k, n] − (qzero[g, n] + zero_offset)), g = g_idx[k].
    kGptqInt4,
  };
  Format format = Format::kDense;
  std::string name;  // the checkpoint module, for errors ("model.layers.0.mlp.up_proj")
  int64_t rows = 0;  // N, output features
  int64_t cols = 0;  // K, input features

  Tensor dense;  // kDense

  Tensor codes;         // kFp8Block
  Tensor block_scales;  // kFp8Block
  int64_t block_rows = 0;
  int64_t block_cols = 0;

  Tensor qweight;  // kGptqInt4
  Tensor qzeros;
  Tensor scales;
  Tensor g_idx;
  int64_t group_size = 0;  // 0: one group per row (group_size -1 in config.json)
  int32_t zero_offset = 0;

  // Shapes, dtypes and devices (CPU), never contents (the packing checks those).
  absl::Status Validate() const;
  // Bytes of the checkpoint's tensors (what the format stores).
  uint64_t StoredBytes() const;
};

// Validates and registers `weight`, and returns a kWeightRowRefs tensor [N, K] on the CPU
// whose row r refers to row r of it. K must be at least 16 (the reference's size).
absl::StatusOr<Tensor> MakeWeightRowRefs(std::shared_ptr<const PrequantizedWeight> weight);

struct WeightRowRef {
  std::shared_ptr<const PrequantizedWeight> weight;
  int64_t row = 0;
};
// Every row of a kWeightRowRefs tensor, resolved. INVALID_ARGUMENT for a row that is not
// a reference, FAILED_PRECONDITION for a weight released since.
absl::StatusOr<std::vector<WeightRowRef>> ResolveWeightRowRefs(const Tensor& refs);

}  // namespace sluice::kernels

#endif  // SLUICE_KERNELS_PREQUANTIZED_WEIGHT_H_
