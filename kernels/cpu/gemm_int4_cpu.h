// f32-activation × 4-bit group-wise weight GEMM/GEMV, f32 accumulation, for
// `--quantization int4`. Decoding reads every weight once per step, so bytes per
// weight set its speed: 4 bits plus one bf16 scale and one bf16 minimum per group.
//
// Format (asymmetric, per group of `group_size` consecutive K of one output column):
//   lo = min_k w, hi = max_k w over the group;
//   m  = bf16(lo) rounded toward −∞ (so m ≤ lo);
//   s  = bf16((hi − m) / 15) rounded toward +∞ (so hi − m ≤ 15·s), s = 0 for a
//        constant group;
//   q  = clamp(round((w − m) / s), 0, 15)   (round half away from zero; q = 0 if s = 0);
//   dequant(w) = s·q + m.
// The directed roundings of s and m mean no weight is clamped, so
// |w − dequant(w)| ≤ s/2 (plus f32 rounding of the division) for every element.
//
// Layout: panels of 32 output columns, as PackedBf16Weight, each one sequential stream:
//   for each group: two 64-byte lines of (s, m) bf16 pairs (32-bit lane j: s in the low
//   half, m in the high half; columns 0..15 then 16..31), then for each block of 8 K
//   two 64-byte lines (columns 0..15, 16..31) whose 32-bit lane j holds the 8 nibbles
//   of column j, nibble i (bits 4i..4i+3) for k = block·8 + i.
// K is zero-padded to a multiple of 8 inside its last group (those x are taken as 0)
// and N to a multiple of 32 (zero scale and minimum: the padded outputs are 0).
//
// Kernel (AVX-512): one load gives 16 columns × 8 K; nibble i is a shift by 4i and a
// vpermps from a 16-entry table of the floats 0..15 (vpermps reads only the index's
// low 4 bits, so no mask and no int→float conversion). Up to 10 rows share each decoded
// weight vector (12 spilled registers and ran slower); at 1 to 3 rows, 4 or 2 panels
// are interleaved so enough independent FMA chains hide the FMA latency. The broadcast
// activations are accumulated against q per group, then the group is folded in:
//   a_g = Σ_{k∈g} x_k·q_k (one fma chain, k ascending),
//   y   = fma(m_g, Σ_{k∈g} x_k, fma(s_g, a_g, y))   (groups ascending).
// At M = 1 this is bound by arithmetic, not bandwidth: one Zen 4 core decodes ~16-18 GB/s
// of packed bytes (2-thread bursts reached 27-36), 2.1-2.5× the bf16 kernel's time on
// weights far larger than the caches (bench/int4_gemv_bench.cc, a heavily loaded machine).
// Every output is that one sequential chain whatever the number of rows M, so a row's
// result does not depend on the batch it shares; the scalar fallback (no AVX-512 in
// the build or the CPU) computes the same chain with std::fma and gives the same bits.
#ifndef SLUICE_KERNELS_CPU_GEMM_INT4_CPU_H_
#define SLUICE_KERNELS_CPU_GEMM_INT4_CPU_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/ops.h"
#include "kernels/tensor.h"

namespace sluice::kernels::cpu {

// A [N, K] weight quantized to 4 bits per group and packed as described above.
class PackedInt4Weight {
 public:
  static constexpr int64_t kPanelCols = 32;
  static constexpr int64_t kBlockK = 8;  // K per 32-bit lane

  PackedInt4Weight() = default;
  // w: [n, k] row-major (Hugging Face layout) of dtype f32, bf16 or f16.
  // group_size: a positive multiple of 8. Non-finite weights clear all_finite().
  PackedInt4Weight(const void* w, DType dtype, int64_t n, int64_t k, int64_t group_size);
  bool all_finite() const { return all_finite_; }

  int64_t n() const { return n_; }
  int64_t k() const { return k_; }
  int64_t group_size() const { return group_size_; }
  int64_t num_groups() const { return (k_ + group_size_ - 1) / group_size_; }
  int64_t num_panels() const { return (n_ + kPanelCols - 1) / kPanelCols; }
  // K padded to a multiple of 8 (the activations the kernel reads per row).
  int64_t padded_k() const { return (k_ + kBlockK - 1) / kBlockK * kBlockK; }
  // 32-bit words of one panel, and the panel's first word.
  int64_t panel_words() const { return panel_words_; }
  const uint32_t* panel(int64_t p) const { return data_.data() + p * panel_words_; }
  // Bytes one forward pass reads (the whole packed stream, padding included).
  size_t bytes() const { return data_.size() * sizeof(uint32_t); }

  // The stored values for column c and group g, and the 4-bit code of w[c, k].
  float scale(int64_t c, int64_t g) const;
  float minimum(int64_t c, int64_t g) const;
  int code(int64_t c, int64_t k) const;
  // dequant(w)[c, k] = scale·code + minimum, in f32 (the reference weights).
  float Dequantized(int64_t c, int64_t k) const;

 private:
  // Words of one full group in a panel: 2 lines of (s, m) + 2 lines per block of 8 K.
  int64_t group_words() const { return 32 + 4 * group_size_; }
  int64_t n_ = 0, k_ = 0, group_size_ = 0, panel_words_ = 0;
  bool all_finite_ = true;
  std::vector<uint32_t> data_;
};

// True when this build and CPU run the AVX-512 body (else the scalar one, same bits).
bool Int4Avx512Available();

// y[r, c] = Σ_k x[r, k] · dequant(w)[c, k] for r < m and c < w.n(), summed as the
// header says. x: f32 [m, w.k()] (row stride w.k()); y: f32 with row stride ldy.
// Threads over panels with OpenMP. portable forces the scalar body (tests compare the two).
void GemmF32Int4(const float* x, int64_t m, const PackedInt4Weight& w, float* y, int64_t ldy,
                 bool portable = false);

// The pieces of GemmF32Int4, for callers that split the work over threads themselves (the
// grouped-experts op, kernels/cpu/moe_cpu.cc). They never thread and give every output
// exactly GemmF32Int4's value.
//
// sums[g] = Σ_{k∈g} x[k], k ascending, for the groups of group_size over x[0, k): the
// per-row prologue GemmF32Int4 runs before its panels.
void Int4GroupSums(const float* x, int64_t k, int64_t group_size, float* sums);
// y[r, p·32 + c] for rows r < m, panels p in [p0, p1) and their valid columns c.
// xp: f32 [m, w.padded_k()], each row x zero-padded past w.k(); sums: [m, w.num_groups()]
// from Int4GroupSums; y points at row 0, column 0 of the output (row stride ldy).
void GemmF32Int4Panels(const float* xp, const float* sums, int64_t m, const PackedInt4Weight& w, int64_t p0,
                       int64_t p1, float* y, int64_t ldy, bool portable = false);

// The Linear body for `--quantization int4` on the CPU.
class Int4Linear final : public Linear {
 public:
  // weight: [N, K] f32, bf16 or f16 on the CPU; group_size 32, 64 or 128.
  static absl::StatusOr<std::unique_ptr<Int4Linear>> Create(const Tensor& weight,
                                                            int64_t group_size);

  const PackedInt4Weight& packed() const { return packed_; }
  // The real bytes a forward pass reads (codes, scales, minimums, padding).
  size_t weight_bytes() const override { return packed_.bytes(); }
  size_t packed_bytes() const { return packed_.bytes(); }  // the same, by its older name

 protected:
  absl::Status Run(const Tensor& x, Tensor* y) override;

 private:
  Int4Linear(int64_t in, int64_t out, DType source_dtype, PackedInt4Weight packed)
      : Linear(in, out, source_dtype, Device::kCpu, WeightQuantization::kInt4),
        packed_(std::move(packed)) {}
  PackedInt4Weight packed_;
};

// weight: [N, K] f32|bf16|f16 on the CPU; group_size 32, 64 or 128, else
// INVALID_ARGUMENT (so are non-finite weights). The Linear's quantization() is kInt4,
// its weight_bytes() the packed bytes, and its weight_dtype() the source dtype (there is
// no 4-bit DType).
absl::StatusOr<std::unique_ptr<Linear>> CreateInt4Linear(const Tensor& weight, int64_t group_size);

}  // namespace sluice::kernels::cpu

#endif  // SLUICE_KERNELS_CPU_GEMM_INT4_CPU_H_
