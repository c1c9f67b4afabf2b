// f32-activation × bf16-weight GEMM, f32 accumulation. Written by hand because
// oneDNN 2.6 (Debian's) has no f32 × bf16 matmul: its bf16 path first rounds the
// activations to bf16, which costs ~1e-2 absolute on logits and flips greedy tokens
// against transformers. Decoding is bound by weight bandwidth, so reading bf16 weights
// and widening them in registers (a 16-bit shift) is also the fast path.
#ifndef SLUICE_KERNELS_CPU_GEMM_BF16_CPU_H_
#define SLUICE_KERNELS_CPU_GEMM_BF16_CPU_H_

#include <cstdint>
#include <vector>

namespace sluice::kernels::cpu {

// A bf16 weight [N, K] repacked once at load into panels of kPanelCols output columns.
// A panel is stored K pair by K pair: for pair q, two 64-byte lines hold columns 0..15
// and 16..31, 32-bit lane j holding (w[j][2q], w[j][2q + 1]). A decode step reads each
// panel as one sequential stream, which the prefetchers follow at DRAM speed.
//
// The kernels broadcast activations and accumulate outer products: one weight load
// feeds up to 12 token rows and no horizontal sums are needed. A lane is widened to the
// two f32 weights of its pair with two bit operations (lane << 16, lane & 0xffff0000),
// or, with bf16 compute, is exactly the pair one vdpbf16ps lane multiplies. The
// dot-product layout this replaced (rows of 32-element chunks) spent its time on loads
// and horizontal sums: 0.23-0.38 TFLOP/s in f32 and 0.39-0.6 in bf16 on two Zen 4
// cores, against 0.47-0.52 and 0.8-1.0 now (peaks 0.57 and 1.13).
//
// Every output is one sequential chain over K (k = 0, 1, 2, ...) whatever the number
// of rows M, so a row's result does not depend on what else shares the batch.
class PackedBf16Weight {
 public:
  static constexpr int64_t kPanelCols = 32;

  PackedBf16Weight() = default;
  // w: bf16 [n, k] row-major (Hugging Face layout).
  PackedBf16Weight(const uint16_t* w, int64_t n, int64_t k, bool bf16_compute);
  bool bf16_compute() const { return bf16_compute_; }

  int64_t n() const { return n_; }
  int64_t k() const { return k_; }
  int64_t pairs() const { return (k_ + 1) / 2; }  // K pairs, the last zero-padded if K is odd
  const uint16_t* panel(int64_t p) const { return data_.data() + p * kPanelCols * 2 * pairs(); }
  int64_t num_panels() const { return (n_ + kPanelCols - 1) / kPanelCols; }

 private:
  int64_t n_ = 0, k_ = 0;
  bool bf16_compute_ = false;
  std::vector<uint16_t> data_;
};

// True when this build and CPU can run the bf16 dot-product kernel (AVX512-BF16).
bool Bf16ComputeAvailable();

// y[m, n] = Σ_k x[m, k] · w[n, k] for all m < M and n < N. With a weight packed for
// bf16 compute, x is rounded to bf16 first and pairs are multiplied with vdpbf16ps
// (f32 accumulation): twice the arithmetic rate, at bf16 rounding of the activations.
// x: f32 [M, K] (row stride K); y: f32 with row stride ldy.
void GemmF32Bf16(const float* x, int64_t m, const PackedBf16Weight& w, float* y, int64_t ldy);

// The pieces of GemmF32Bf16, for callers that split the work over threads themselves
// (the grouped-experts op runs many weights in one parallel region). They never thread
// and give every output exactly the value GemmF32Bf16 gives it.
//
// Rows of activations per L2 tile for rows of row_bytes bytes (what GemmF32Bf16 keeps
// resident while every panel streams past).
int64_t GemmRowTile(int64_t row_bytes);
// For a weight packed for bf16 compute: rounds x [m, k] (row stride k) to bf16 pairs,
// kp = w.pairs() per row, as GemmF32Bf16 does before its panels. No-op layout otherwise.
void RoundRowsToBf16Pairs(const float* x, int64_t m, int64_t k, int64_t kp, uint32_t* xb);
// y[r, panel·32 + c] for rows r < m and the panel's valid columns c. The activations are
// x (f32, row stride w.k()) for an f32-compute weight, xb (bf16 pairs, row stride
// w.pairs(), from RoundRowsToBf16Pairs) for a bf16-compute one; the other may be null.
// y points at row 0, column 0 of the output (row stride ldy).
void GemmF32Bf16Panel(const float* x, const uint32_t* xb, int64_t m, const PackedBf16Weight& w,
                      int64_t panel, float* y, int64_t ldy);

}  // namespace sluice::kernels::cpu

#endif  // SLUICE_KERNELS_CPU_GEMM_BF16_CPU_H_
