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

// A bf16 weight [N, K] repacked once at load into panels of kPanelRows rows. Inside a
// panel the K axis is cut into chunks of 32 and each chunk stores the panel's rows one
// after another, one 64-byte cache line per row. A decode step then reads every panel
// as one sequential stream, which the hardware prefetcher follows at full bandwidth;
// reading the [N, K] layout directly means kPanelRows interleaved streams per thread.
// Within a line the 32 values are interleaved (element j in the low half of 32-bit
// lane j, element 16 + j in its high half), so two plain bit operations widen a line
// to two f32 vectors with no shuffle: lane << 16 and lane & 0xffff0000.
//
//
// With bf16 compute (MatmulPrecision::kBf16) a panel is instead kPairPanelCols output
// columns wide, stored K pair by K pair: for pair q, two 64-byte lines hold columns
// 0..15 and 16..31, lane j being (w[j][2q], w[j][2q + 1]), the pair one vdpbf16ps lane
// multiplies. The kernel broadcasts an activation pair and accumulates an outer product,
// so no horizontal sums are needed and one weight load feeds up to 12 token rows; with
// a dot-product layout the loads and the horizontal sums held the kernel to a third of
// the vdpbf16ps peak. Each output is still one sequential chain over K whatever M is.
class PackedBf16Weight {
 public:
  static constexpr int64_t kPanelRows = 8;
  static constexpr int64_t kChunk = 32;
  static constexpr int64_t kPairPanelCols = 32;

  PackedBf16Weight() = default;
  // w: bf16 [n, k] row-major (Hugging Face layout).
  PackedBf16Weight(const uint16_t* w, int64_t n, int64_t k, bool bf16_compute);
  bool bf16_compute() const { return bf16_compute_; }

  int64_t n() const { return n_; }
  int64_t k() const { return k_; }
  // K rounded up to a whole chunk (f32 compute) or pair (bf16 compute).
  int64_t padded_k() const { return padded_k_; }
  // Output rows (f32 compute) or columns (bf16 compute) per panel.
  int64_t panel_width() const { return bf16_compute_ ? kPairPanelCols : kPanelRows; }
  const uint16_t* panel(int64_t p) const { return data_.data() + p * panel_width() * padded_k_; }
  int64_t num_panels() const { return (n_ + panel_width() - 1) / panel_width(); }

 private:
  int64_t n_ = 0, k_ = 0, padded_k_ = 0;
  bool bf16_compute_ = false;
  std::vector<uint16_t> data_;
};

// True when this build and CPU can run the bf16 dot-product kernel (AVX512-BF16).
bool Bf16ComputeAvailable();

// y[m, n] = Σ_k x[m, k] · w[n, k] for all m < M and n < N. With a weight packed for
// bf16 compute, x is rounded to bf16 first and pairs are multiplied with vdpbf16ps
// (f32 accumulation): twice the arithmetic rate, at bf16 rounding of the activations.
// x: f32 [M, K] (row stride K); y: f32 with row stride ldy. Each (m, n) dot product is
// summed in the same order whatever M is, so a row's result does not depend on what
// else shares the batch.
void GemmF32Bf16(const float* x, int64_t m, const PackedBf16Weight& w, float* y, int64_t ldy);

}  // namespace sluice::kernels::cpu

#endif  // SLUICE_KERNELS_CPU_GEMM_BF16_CPU_H_
