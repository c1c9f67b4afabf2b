// f32-activation × bf16-weight GEMM, f32 accumulation. Written by hand because
// oneDNN 2.6 (Debian's) has no f32 × bf16 matmul: its bf16 path first rounds the
// activations to bf16, which costs ~1e-2 absolute on logits and flips greedy tokens
// against transformers. Decoding is bound by weight bandwidth, so reading bf16 weights
// and widening them in registers (a 16-bit shift) is also the fast path.
#ifndef SLUICE_KERNELS_CPU_GEMM_BF16_CPU_H_
#define SLUICE_KERNELS_CPU_GEMM_BF16_CPU_H_

#include <cstdint>

namespace sluice::kernels::cpu {

// y[m, n] = Σ_k x[m, k] · w[n, k] for m < M, n in [n_begin, n_end).
// x: f32 [M, K] (row stride K); w: bf16 [N, K] row-major (Hugging Face layout);
// y: f32 with row stride ldy. Each (m, n) dot product is summed in the same order
// whatever M is, so a row's result does not depend on what else is in the batch.
void GemmF32Bf16(const float* x, int64_t m, int64_t k, const uint16_t* w, int64_t n_begin,
                 int64_t n_end, float* y, int64_t ldy);

}  // namespace sluice::kernels::cpu

#endif  // SLUICE_KERNELS_CPU_GEMM_BF16_CPU_H_
