// f32-activation × FP8 (e4m3) block-scaled weight GEMM/GEMV, f32 accumulation, for
// pre-quantized checkpoints in transformers' fine-grained FP8 format (Qwen's -FP8 models:
// kernels/prequantized_weight.h). The weight stays one byte per element and is widened
// in registers, so a decode step reads ~1 byte per weight (plus 4 bytes of scale per
// 128 weights), half of what the bf16 kernel reads.
//
// Format: w[n, k] = fp8(code[n, k]) · scale[n, k / block_k], one f32 scale per output row
// and block of block_k inputs. The checkpoint's [N/128, K/128] block grid is expanded to
// one scale per row and input block at packing, so that any rows (q|k|v of different
// heights, row-permuted projections) can share one packed weight.
//
// Layout: panels of 32 output columns, each one sequential stream: for each input block,
// two 64-byte lines of the 32 columns' scales (f32, pre-multiplied by 256, see below),
// then for each k of the block 32 code bytes (columns 0..31).
//
// Widening (AVX-512, exact for every finite code): a code's sign and 7 magnitude bits
// placed as the f16 bits (sign << 15) | (magnitude << 7) read as an f16 of exactly
// fp8 / 256 (the e4m3 exponent field lands in f16's with bias 15 instead of 7, and the
// e4m3 subnormals become f16 subnormals of the same mantissa); vcvtph2ps widens that to
// f32 exactly. So per 32 weights: vpmovsxbw, a shift, an and, and two vcvtph2ps. The
// factor 256 goes into the block scale instead (a power of two: exact).
//
// Every output is one chain: per input block b (ascending), a_b = Σ_{k∈b} x_k · (w_k/256)
// (one fma chain, k ascending), then y = fma(256·scale_b, a_b, y). Scaling by 256 is exact,
// so this equals the same chain over the dequantized weights' blocks. The chain is the
// same whatever the number of rows M, so a row's result never depends on the batch it
// shares; the AVX-512, AVX2 and scalar bodies (picked at run time) give the same bits.
// The NaN codes (0x7f, 0xff) are refused at packing.
#ifndef SLUICE_KERNELS_CPU_GEMM_FP8_CPU_H_
#define SLUICE_KERNELS_CPU_GEMM_FP8_CPU_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace sluice::kernels::cpu {

class PackedFp8Weight {
 public:
  static constexpr int64_t kPanelCols = 32;

  // One output row's source: its K codes and its ceil(K / block_k) f32 block scales.
  struct Row {
    const uint8_t* codes = nullptr;
    const float* scales = nullptr;
  };

  PackedFp8Weight() = default;
  // rows: n entries. Fails (INVALID_ARGUMENT) on a NaN code, or a scale that is not
  // finite or whose 256-fold is not finite.
  static absl::StatusOr<PackedFp8Weight> Create(const std::vector<Row>& rows, int64_t k,
                                                int64_t block_k);
  // The checkpoint's form: codes [n, k] row-major, block_scales [ceil(n / block_n),
  // ceil(k / block_k)] row-major f32.
  static absl::StatusOr<PackedFp8Weight> FromBlocks(const uint8_t* codes, int64_t n, int64_t k,
                                                    const float* block_scales, int64_t block_n,
                                                    int64_t block_k);

  int64_t n() const { return n_; }
  int64_t k() const { return k_; }
  int64_t block_k() const { return block_k_; }
  int64_t num_blocks() const { return (k_ + block_k_ - 1) / block_k_; }
  int64_t num_panels() const { return (n_ + kPanelCols - 1) / kPanelCols; }
  int64_t panel_bytes() const { return panel_bytes_; }
  const uint8_t* panel(int64_t p) const { return data_.data() + p * panel_bytes_; }
  // Bytes one forward pass reads (codes, scales, padding columns).
  size_t bytes() const { return data_.size(); }

  // The stored code of w[c, k] and the scale of (c, block b); Dequantized is their
  // product, the reference weight (for tests).
  uint8_t code(int64_t c, int64_t k) const;
  float scale(int64_t c, int64_t b) const;
  float Dequantized(int64_t c, int64_t k) const;

 private:
  int64_t block_offset(int64_t b) const { return b * (128 + 32 * block_k_); }
  int64_t n_ = 0, k_ = 0, block_k_ = 0, panel_bytes_ = 0;
  std::vector<uint8_t> data_;
};

// Which body GemmF32Fp8 runs: kAuto picks AVX-512 (F, BW, VL, F16C) when the CPU has it,
// else AVX2 (with FMA and F16C), else the scalar loop; the others force one (tests).
enum class Fp8Kernel { kAuto, kAvx512, kAvx2, kScalar };
bool Fp8Avx512Available();
bool Fp8Avx2Available();

// y[r, c] = Σ_k x[r, k] · dequant(w)[c, k], summed as the header says, for r < m, c < n.
// x: f32 [m, w.k()] (row stride w.k()); y: f32 with row stride ldy. Threads over panels.
// Forcing a kernel the CPU lacks falls back to the scalar one.
void GemmF32Fp8(const float* x, int64_t m, const PackedFp8Weight& w, float* y, int64_t ldy,
                Fp8Kernel kernel = Fp8Kernel::kAuto);

}  // namespace sluice::kernels::cpu

#endif  // SLUICE_KERNELS_CPU_GEMM_FP8_CPU_H_
