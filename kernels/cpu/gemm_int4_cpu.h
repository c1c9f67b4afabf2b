// 4-bit group-wise weight GEMM/GEMV for `--quantization int4`, f32 in and out: the
// activations are quantized to int8 per 32 K and the products summed as exact integers.
// Decoding reads every weight once per step, so bytes per weight set its speed: 4 bits
// plus one bf16 scale and one bf16 minimum per group.
//
// Format (asymmetric, per group of `group_size` consecutive K of one output column):
//   (s, m) = the bf16 scale and minimum kernels/cpu/int4_fit.h fits to the group
//            (least squares over its codes, kept only when its squared error is below
//            min-max's; s = 0 for a constant group);
//   q  = clamp(round((w − m) / s), 0, 15)   (round half away from zero; q = 0 if s = 0);
//   dequant(w) = s·q + m.
// A fitted pair may clamp a group's extreme weights; its squared error is never above
// min-max's (m = lo rounded down, s = (hi − m)/15 rounded up: every |w − dequant(w)| ≤ s/2).
//
// Layout: panels of 32 output columns, as PackedBf16Weight, each one sequential stream:
//   for each group: two 64-byte lines of (s, m) bf16 pairs (32-bit lane j: s in the low
//   half, m in the high half; columns 0..15 then 16..31), then for each block of 8 K
//   two 64-byte lines (columns 0..15, 16..31) whose 32-bit lane j holds the 8 nibbles
//   of column j, nibble i (bits 4i..4i+3) for k = block·8 + i.
// K is zero-padded to a multiple of 8 inside its last group (those x are taken as 0)
// and N to a multiple of 32 (zero scale and minimum: the padded outputs are 0).
//
// Numerics (one definition; every body gives the same bits). Per row x of the
// activations (f32, length K), once per call (the per-row prologue, Int4QuantizeRow):
//   blocks b of 32 consecutive K (k = 32b .. 32b+31; a group of 32, 64 or 128 holds 1, 2
//   or 4 whole blocks, the last group's last block may be short; the missing x are 0):
//   d_b = max_{k∈b} |x_k| / 127                 (one f32 division; NaN x ignored in the max)
//   q_k = clamp(round(x_k / d_b), −127, 127)     (f32 division, not a multiply by 1/d_b;
//                                                round half away from zero; q_k = 0 when
//                                                d_b = 0 or x_k / d_b is NaN)
//   xsum_g = Σ_{k∈g} x_k                         (f32, k ascending: Int4GroupSums)
// Per output column c and weight group g (codes c_k in 0..15, scale s_g, minimum m_g):
//   i_b = Σ_{k∈b} q_k·c_k                        (exact int32, |i_b| ≤ 32·127·15)
//   a_g = fma(d_b, float(i_b), a_g) over the blocks b of g ascending, from a_g = 0
//   y   = fma(m_g, xsum_g, fma(s_g, a_g, y)) over the groups ascending, from y = 0.
// So y = Σ_k dequant(w)_k·x̂_k up to f32 rounding of the chain, with x̂_k = d_b·q_k in
// the scale term and the exact x in the minimum term (|x_k − x̂_k| ≤ d_b·(1/2 + 2⁻¹⁷)).
// Non-finite x make the group's outputs non-finite (through xsum and d_b).
//
// The quantized row (the pieces API below): int8 q, row stride padded_k(), each block of
// 8 K stored as (q0, q2, q4, q6, q1, q3, q5, q7) so that one broadcast 32-bit load
// matches the low or the high nibbles of a weight lane; zero past K. Then
// Int4ActivationBlocks(K) scales d_b and num_groups() sums per row.
//
// Bodies, chosen at run time (Int4SelectedKernel; builds with the AVX-512 flags, CPU
// checked with cpuid): AVX-512 VNNI (vpdpbusd: unsigned codes × signed activations, 4
// products per 32-bit lane), AVX-512BW without VNNI (vpmaddubsw into int16 lanes, at most
// 16 products of |15·127| per lane per block, 30480 < 2¹⁵, then vpmaddwd by 1: exact), and
// scalar integer loops. Per block of 8 K one 64-byte load gives 16 columns; its low
// nibbles (& 0x0F0F0F0F) are k = 0, 2, 4, 6 and its high nibbles (>> 4, masked) k = 1, 3,
// 5, 7. Up to 6 rows share each decoded weight vector (their int32 and f32 accumulators
// fill the 32 registers); at 1 or 2 rows, 4 or 2 panels are interleaved for enough
// independent chains and streams. The integer sums are exact and the f32 chain is the
// same in every body, so the bodies agree bit for bit, and every output is one chain
// whatever the number of rows M: a row's result does not depend on the batch it shares.
// Measured (bench/int4_gemv_bench.cc, 2-core Zen 4, loaded machine, 4096×1024 and
// 1024×4096): at M = 1 one core decodes 40-58 GB/s of cache-resident packed bytes (the
// f32-activation kernel before it: 14-19), two cores 70-93 GB/s (25-35), so weights far
// larger than the caches run at about the streaming bandwidth; M = 64 and 512 on two
// cores take ~0.3× the f32-activation kernel's time. The AVX-512BW body reaches ~35-39
// GB/s per core at M = 1 and half the VNNI body's speed at M = 64.
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

// The bodies. kAuto: the fastest this build and CPU run (or the one
// SetInt4KernelForTesting forced); a body the build or CPU lacks falls back to the next
// (VNNI → AVX-512BW → scalar). All give the same bits.
enum class Int4Kernel { kAuto, kVnni, kAvx512Bw, kScalar };
const char* Int4KernelName(Int4Kernel body);
bool Int4KernelAvailable(Int4Kernel body);  // kAuto and kScalar always
Int4Kernel Int4SelectedKernel(Int4Kernel requested = Int4Kernel::kAuto);  // never kAuto
// Test hook: kAuto resolves to `body` process-wide until reset with kAuto.
void SetInt4KernelForTesting(Int4Kernel body);
// True when this build and CPU run an AVX-512 body (VNNI or BW; else scalar, same bits).
bool Int4Avx512Available();

// y[r, c] = Σ_k x[r, k] · dequant(w)[c, k] for r < m and c < w.n(), computed as the
// header says (x quantized per 32 K; w.group_size() a multiple of 32, as the Linear's 32,
// 64 or 128). x: f32 [m, w.k()] (row stride w.k()); y: f32 with row stride ldy. Threads
// the prologue over rows and the panels with OpenMP.
void GemmF32Int4(const float* x, int64_t m, const PackedInt4Weight& w, float* y, int64_t ldy,
                 Int4Kernel body = Int4Kernel::kAuto);

// The pieces of GemmF32Int4, for callers that split the work over threads themselves (the
// grouped-experts op, kernels/cpu/moe_cpu.cc). They never thread and give every output
// exactly GemmF32Int4's value.
//
// Activation blocks of 32 K per row of length k (one scale each).
inline int64_t Int4ActivationBlocks(int64_t k) { return (k + 31) / 32; }
// The byte of a quantized row (from its start) that holds activation k.
inline int64_t Int4ActivationSlot(int64_t k) { return (k & ~int64_t{7}) + (k & 1) * 4 + ((k & 7) >> 1); }
// sums[g] = Σ_{k∈g} x[k], k ascending, for the groups of group_size over x[0, k).
void Int4GroupSums(const float* x, int64_t k, int64_t group_size, float* sums);
// The per-row prologue GemmF32Int4 runs before its panels, for x[0, k): q[0, roundup(k, 8))
// (interleaved, zero past k), d[0, Int4ActivationBlocks(k)) and sums[0, ceil(k / group_size)).
// x may start at any group boundary of a row (group_size a multiple of 32): the values are
// those of the whole row's prologue at that offset (q + offset, d + offset/32, sums +
// offset/group_size). body picks the SIMD or scalar code; both give the same bytes.
void Int4QuantizeRow(const float* x, int64_t k, int64_t group_size, int8_t* q, float* d, float* sums,
                     Int4Kernel body = Int4Kernel::kAuto);
// y[r, p·32 + c] for rows r < m, panels p in [p0, p1) and their valid columns c. Row r's
// activations: xq + r·w.padded_k(), xd + r·Int4ActivationBlocks(w.k()), xsum +
// r·w.num_groups(), as Int4QuantizeRow wrote them for the whole row; y points at row 0,
// column 0 of the output (row stride ldy).
void GemmInt4Panels(const int8_t* xq, const float* xd, const float* xsum, int64_t m,
                    const PackedInt4Weight& w, int64_t p0, int64_t p1, float* y, int64_t ldy,
                    Int4Kernel body = Int4Kernel::kAuto);

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
