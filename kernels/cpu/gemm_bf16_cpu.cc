#include "kernels/cpu/gemm_bf16_cpu.h"

#include <algorithm>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define SLUICE_GEMM_AVX512 1
#endif

#include "kernels/tensor.h"

namespace sluice::kernels::cpu {
namespace {

#ifdef SLUICE_GEMM_AVX512

inline __m512 LoadBf16(const uint16_t* p, __mmask16 mask) {
  const __m256i raw = _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

// MR activation rows × NR weight rows, 16 lanes per accumulator.
template <int MR, int NR>
void MicroKernel(const float* x, int64_t k, const uint16_t* w, float* y, int64_t ldy) {
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t kk = 0;
  for (; kk + 16 <= k; kk += 16) {
    __m512 wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = LoadBf16(w + j * k + kk, 0xffff);
    for (int i = 0; i < MR; ++i) {
      const __m512 xv = _mm512_loadu_ps(x + i * k + kk);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  if (kk < k) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (k - kk)) - 1);
    __m512 wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = LoadBf16(w + j * k + kk, mask);
    for (int i = 0; i < MR; ++i) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + i * k + kk);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) y[i * ldy + j] = _mm512_reduce_add_ps(acc[i][j]);
}

template <int NR>
void RowBlock(const float* x, int64_t m, int64_t k, const uint16_t* w, float* y, int64_t ldy) {
  int64_t i = 0;
  for (; i + 4 <= m; i += 4) MicroKernel<4, NR>(x + i * k, k, w, y + i * ldy, ldy);
  switch (m - i) {
    case 3: MicroKernel<3, NR>(x + i * k, k, w, y + i * ldy, ldy); break;
    case 2: MicroKernel<2, NR>(x + i * k, k, w, y + i * ldy, ldy); break;
    case 1: MicroKernel<1, NR>(x + i * k, k, w, y + i * ldy, ldy); break;
    default: break;
  }
}

#endif  // SLUICE_GEMM_AVX512

}  // namespace

void GemmF32Bf16(const float* x, int64_t m, int64_t k, const uint16_t* w, int64_t n_begin,
                 int64_t n_end, float* y, int64_t ldy) {
#ifdef SLUICE_GEMM_AVX512
  constexpr int64_t kNr = 4;
  // Activation rows go in tiles small enough to stay in L2 while every weight block
  // streams past them once; a weight block (kNr rows) stays in L1 across the tile.
  const int64_t tile = std::max<int64_t>(4, std::min<int64_t>(64, (192 * 1024) / (4 * k) / 4 * 4));
  const int64_t blocks = (n_end - n_begin + kNr - 1) / kNr;
  for (int64_t m0 = 0; m0 < m; m0 += tile) {
    const int64_t rows = std::min(tile, m - m0);
    const float* xt = x + m0 * k;
    float* yt = y + m0 * ldy;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t n = n_begin + b * kNr;
      const uint16_t* wn = w + n * k;
      float* yn = yt + n;
      switch (std::min<int64_t>(kNr, n_end - n)) {
        case 4: RowBlock<4>(xt, rows, k, wn, yn, ldy); break;
        case 3: RowBlock<3>(xt, rows, k, wn, yn, ldy); break;
        case 2: RowBlock<2>(xt, rows, k, wn, yn, ldy); break;
        default: RowBlock<1>(xt, rows, k, wn, yn, ldy); break;
      }
    }
  }
#else
  // Portable fallback: same math, 16 partial sums per dot product like the SIMD path.
#pragma omp parallel for schedule(static)
  for (int64_t n = n_begin; n < n_end; ++n) {
    for (int64_t i = 0; i < m; ++i) {
      float lanes[16] = {};
      for (int64_t kk = 0; kk < k; ++kk) lanes[kk % 16] += x[i * k + kk] * Bf16ToF32(w[n * k + kk]);
      float s = 0;
      for (float l : lanes) s += l;
      y[i * ldy + n] = s;
    }
  }
#endif
}

}  // namespace sluice::kernels::cpu
