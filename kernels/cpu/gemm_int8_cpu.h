// f32-activation × int8-weight GEMM for weights quantized at load: symmetric, one f32
// scale per output channel (row of the Hugging Face [N, K] weight):
//   scale[n] = max_k |w[n, k]| / 127,   q[n, k] = round_half_even(w[n, k] / scale[n]) ∈ [−127, 127]
// and y[m, n] = scale[n] · Σ_k x[m, k] · q[n, k].
//
// Decode is bound by the bytes of weight read per token, so reading one byte per weight
// and widening it in registers (vpmovsxbd + vcvtdq2ps, exact for |q| ≤ 127) halves the
// traffic of the bf16 kernel (gemm_bf16_cpu.h) at the same f32 arithmetic. The scale is
// applied once per output, after the K loop, so the integer weights need no per-k multiply.
#ifndef SLUICE_KERNELS_CPU_GEMM_INT8_CPU_H_
#define SLUICE_KERNELS_CPU_GEMM_INT8_CPU_H_

#include <cstddef>
#include <cstdint>
#include <vector>

namespace sluice::kernels::cpu {

// Quantizes one row of k f32 values as above; returns its scale (0 for an all-zero row,
// whose q are all 0). The one definition of the int8 format: the Linear, the embedding
// table and the tests all quantize through it.
float QuantizeRowInt8(const float* w, int64_t k, int8_t* q);

// An int8 weight [N, K] repacked once at load into panels of kPanelCols output columns.
// A panel is stored k by k: 32 bytes per k (columns 0..31 of the panel), so one 64-byte
// line holds two k of the panel, and a decode step reads each panel as one sequential
// stream (prefetched 4 KB ahead, as the bf16 kernel). Columns past N are zero.
//
// Every output is one sequential f32 FMA chain over k = 0, 1, 2, ... followed by one
// multiply by its scale, whatever the number of rows M and whichever kernel (AVX-512 or
// the scalar fallback: both use fused multiply-adds in the same order, so they agree bit
// for bit). A row's result therefore never depends on what else shares the batch.
class PackedInt8Weight {
 public:
  static constexpr int64_t kPanelCols = 32;

  PackedInt8Weight() = default;
  // w: [n, k] row-major f32 (the caller widens bf16/f16 first).
  PackedInt8Weight(const float* w, int64_t n, int64_t k);

  int64_t n() const { return n_; }
  int64_t k() const { return k_; }
  int64_t num_panels() const { return (n_ + kPanelCols - 1) / kPanelCols; }
  const int8_t* panel(int64_t p) const { return data_.data() + p * kPanelCols * k_; }
  // Per-output scales [n] and the quantized value of w[col, kk] (for tests and references).
  const std::vector<float>& scales() const { return scales_; }
  int8_t q(int64_t col, int64_t kk) const {
    return data_[(col / kPanelCols) * kPanelCols * k_ + kk * kPanelCols + col % kPanelCols];
  }
  // Bytes a forward pass reads: the int8 panels (N rounded up to the panel) and the scales.
  size_t bytes() const { return data_.size() + scales_.size() * sizeof(float); }

 private:
  int64_t n_ = 0, k_ = 0;
  std::vector<int8_t> data_;
  std::vector<float> scales_;
};

// Which kernel GemmF32Int8 runs: kAuto picks AVX-512 when the CPU has AVX512F/BW/VL
// (checked at run time), else the scalar loop; the others force one (tests).
enum class Int8Kernel { kAuto, kAvx512, kScalar };
bool Int8Avx512Available();

// y[m, n] = scale[n] · Σ_k x[m, k] · q[n, k] for m < M, n < N.
// x: f32 [M, K] (row stride K); y: f32 with row stride ldy. Threads over panels (OpenMP).
void GemmF32Int8(const float* x, int64_t m, const PackedInt8Weight& w, float* y, int64_t ldy,
                 Int8Kernel kernel = Int8Kernel::kAuto);
// One panel of GemmF32Int8, for callers that split the work over threads themselves (the
// grouped-experts op, kernels/cpu/moe_cpu.cc): y[r, panel·32 + c] for r < m and the
// panel's valid columns, exactly GemmF32Int8's values; never threads. x: f32 [m, K] (row
// stride K); y points at row 0, column 0 of the output (row stride ldy).
void GemmF32Int8Panel(const float* x, int64_t m, const PackedInt8Weight& w, int64_t panel, float* y,
                      int64_t ldy, Int8Kernel kernel = Int8Kernel::kAuto);

}  // namespace sluice::kernels::cpu

#endif  // SLUICE_KERNELS_CPU_GEMM_INT8_CPU_H_
