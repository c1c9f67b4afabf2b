#include "kernels/cpu/gemm_bf16_cpu.h"

#include <algorithm>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define SLUICE_GEMM_AVX512 1
#endif

#include "kernels/tensor.h"

namespace sluice::kernels::cpu {

namespace {
constexpr int64_t kRows = PackedBf16Weight::kPanelRows;
constexpr int64_t kChunk = PackedBf16Weight::kChunk;
}  // namespace

PackedBf16Weight::PackedBf16Weight(const uint16_t* w, int64_t n, int64_t k, bool bf16_compute)
    : n_(n), k_(k), padded_k_((k + kChunk - 1) / kChunk * kChunk), bf16_compute_(bf16_compute) {
  data_.assign(static_cast<size_t>(num_panels()) * kRows * padded_k_, 0);  // zero padding
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < num_panels(); ++p) {
    uint16_t* dst = data_.data() + p * kRows * padded_k_;
    for (int64_t c = 0; c < padded_k_ / kChunk; ++c) {
      for (int64_t r = 0; r < kRows; ++r) {
        const int64_t row = p * kRows + r;
        if (row >= n) continue;
        uint16_t* line = dst + (c * kRows + r) * kChunk;
        for (int64_t j = 0; j < kChunk; ++j) {
          const int64_t kk = c * kChunk + j;
          if (kk >= k) break;
          // f32 compute: element j < 16 → slot 2j (low half of lane j), element 16 + j →
          // slot 2j + 1. bf16 compute: natural order (lane j pairs elements 2j, 2j + 1).
          line[bf16_compute ? j : (j < 16 ? 2 * j : 2 * (j - 16) + 1)] = w[row * k + kk];
        }
      }
    }
  }
}

namespace {

#ifdef SLUICE_GEMM_AVX512

// One packed line → f32 of elements 0..15 (low halves) and 16..31 (high halves).
inline void WidenLine(const uint16_t* p, __m512* lo, __m512* hi) {
  const __m512i raw = _mm512_loadu_si512(p);
  *lo = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
  *hi = _mm512_castsi512_ps(_mm512_and_si512(raw, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
}

// MR activation rows against one panel (kRows weight rows). Each weight chunk is
// widened once and used for all MR rows.
template <int MR>
void PanelKernel(const float* x, int64_t k, int64_t padded_k, const uint16_t* panel, float* y,
                 int64_t ldy, int64_t valid_rows) {
  __m512 acc[MR][kRows];
  for (int i = 0; i < MR; ++i)
    for (int r = 0; r < kRows; ++r) acc[i][r] = _mm512_setzero_ps();
  const int64_t chunks = padded_k / kChunk;
  const int64_t full = k / kChunk;
  for (int64_t c = 0; c < chunks; ++c) {
    __m512 xlo[MR], xhi[MR];
    const float* xc = x + c * kChunk;
    if (c < full) {
      for (int i = 0; i < MR; ++i) {
        xlo[i] = _mm512_loadu_ps(xc + i * k);
        xhi[i] = _mm512_loadu_ps(xc + i * k + 16);
      }
    } else {  // K tail: the packed weight is zero-padded, the activations are masked
      const int64_t left = k - c * kChunk;
      const __mmask16 mlo = static_cast<__mmask16>(left >= 16 ? 0xffff : (1u << left) - 1);
      const __mmask16 mhi = static_cast<__mmask16>(left <= 16 ? 0 : (1u << (left - 16)) - 1);
      for (int i = 0; i < MR; ++i) {
        xlo[i] = _mm512_maskz_loadu_ps(mlo, xc + i * k);
        xhi[i] = _mm512_maskz_loadu_ps(mhi, xc + i * k + 16);
      }
    }
    const uint16_t* chunk = panel + c * kRows * kChunk;
    _mm_prefetch(reinterpret_cast<const char*>(chunk + 8 * kRows * kChunk), _MM_HINT_T0);
    for (int r = 0; r < kRows; ++r) {
      __m512 wlo, whi;
      WidenLine(chunk + r * kChunk, &wlo, &whi);
      for (int i = 0; i < MR; ++i) {
        acc[i][r] = _mm512_fmadd_ps(xlo[i], wlo, acc[i][r]);
        acc[i][r] = _mm512_fmadd_ps(xhi[i], whi, acc[i][r]);
      }
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int r = 0; r < valid_rows; ++r) y[i * ldy + r] = _mm512_reduce_add_ps(acc[i][r]);
  }
}

#if defined(__AVX512BF16__)
#define SLUICE_GEMM_AVX512_BF16 1
// xb: the MR activation rows already rounded to bf16, padded_k values each.
template <int MR>
void PanelKernelBf16(const uint16_t* xb, int64_t padded_k, const uint16_t* panel, float* y,
                     int64_t ldy, int64_t valid_rows) {
  __m512 acc[MR][kRows];
  for (int i = 0; i < MR; ++i)
    for (int r = 0; r < kRows; ++r) acc[i][r] = _mm512_setzero_ps();
  const int64_t chunks = padded_k / kChunk;
  for (int64_t c = 0; c < chunks; ++c) {
    __m512bh xv[MR];
    for (int i = 0; i < MR; ++i) xv[i] = (__m512bh)_mm512_loadu_si512(xb + i * padded_k + c * kChunk);
    const uint16_t* chunk = panel + c * kRows * kChunk;
    _mm_prefetch(reinterpret_cast<const char*>(chunk + 8 * kRows * kChunk), _MM_HINT_T0);
    for (int r = 0; r < kRows; ++r) {
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(chunk + r * kChunk);
      for (int i = 0; i < MR; ++i) acc[i][r] = _mm512_dpbf16_ps(acc[i][r], xv[i], wv);
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int r = 0; r < valid_rows; ++r) y[i * ldy + r] = _mm512_reduce_add_ps(acc[i][r]);
  }
}
#endif

#else

// Portable fallback with the same summation order as the SIMD path: per chunk, lane j
// adds element j then element 16 + j; lanes are combined at the end.
template <int MR>
void PanelKernel(const float* x, int64_t k, int64_t padded_k, const uint16_t* panel, float* y,
                 int64_t ldy, int64_t valid_rows) {
  for (int i = 0; i < MR; ++i) {
    for (int r = 0; r < valid_rows; ++r) {
      float lanes[16] = {};
      for (int64_t c = 0; c < padded_k / kChunk; ++c) {
        const uint16_t* line = panel + (c * kRows + r) * kChunk;
        for (int64_t l = 0; l < 16; ++l) {
          const int64_t k0 = c * kChunk + l, k1 = k0 + 16;
          lanes[l] += (k0 < k ? x[i * k + k0] : 0.f) * Bf16ToF32(line[2 * l]);
          lanes[l] += (k1 < k ? x[i * k + k1] : 0.f) * Bf16ToF32(line[2 * l + 1]);
        }
      }
      for (int64_t w = 8; w > 0; w /= 2)
        for (int64_t l = 0; l < w; ++l) lanes[l] += lanes[l + w];
      y[i * ldy + r] = lanes[0];
    }
  }
}

#endif

}  // namespace

// How many 3-row kernel calls cover `rows`: a lone leftover row streams a whole panel
// for one row's work, so 3k + 1 rows run as 3(k - 1) + 2 + 2 instead.
int64_t RowTriples(int64_t rows) {
  const int64_t triples = rows / 3;
  return (rows % 3 == 1 && triples > 0) ? triples - 1 : triples;
}

bool Bf16ComputeAvailable() {
#ifdef SLUICE_GEMM_AVX512_BF16
  return __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

void GemmF32Bf16(const float* x, int64_t m, const PackedBf16Weight& w, float* y, int64_t ldy) {
  const int64_t k = w.k();
  const int64_t panels = w.num_panels();
#ifdef SLUICE_GEMM_AVX512_BF16
  if (w.bf16_compute()) {
    // Round the activations to bf16 once (zero-padded to the packed K), then run the
    // dot-product kernel; the same per-row arithmetic whatever M is.
    const int64_t pk = w.padded_k();
    std::vector<uint16_t> xb(static_cast<size_t>(m) * pk, 0);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t kk = 0; kk < k; ++kk) xb[i * pk + kk] = F32ToBf16(x[i * k + kk]);
    const int64_t tile = std::max<int64_t>(3, std::min<int64_t>(48, (256 * 1024) / (2 * pk) / 3 * 3));
    for (int64_t m0 = 0; m0 < m; m0 += tile) {
      const int64_t rows = std::min(tile, m - m0);
#pragma omp parallel for schedule(static)
      for (int64_t p = 0; p < panels; ++p) {
        const int64_t valid = std::min(kRows, w.n() - p * kRows);
        const uint16_t* xt = xb.data() + m0 * pk;
        float* yt = y + m0 * ldy + p * kRows;
        int64_t i = 0;
        const int64_t triples = RowTriples(rows);
        for (; i < 3 * triples; i += 3) PanelKernelBf16<3>(xt + i * pk, pk, w.panel(p), yt + i * ldy, ldy, valid);
        for (; i + 2 <= rows; i += 2) PanelKernelBf16<2>(xt + i * pk, pk, w.panel(p), yt + i * ldy, ldy, valid);
        if (i < rows) PanelKernelBf16<1>(xt + i * pk, pk, w.panel(p), yt + i * ldy, ldy, valid);
      }
    }
    return;
  }
#endif
  // Activation rows go in tiles small enough to stay in L2 while every panel streams
  // past them once.
  const int64_t tile = std::max<int64_t>(3, std::min<int64_t>(48, (256 * 1024) / (4 * k) / 3 * 3));
  for (int64_t m0 = 0; m0 < m; m0 += tile) {
    const int64_t rows = std::min(tile, m - m0);
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < panels; ++p) {
      const int64_t valid = std::min(kRows, w.n() - p * kRows);
      const float* xt = x + m0 * k;
      float* yt = y + m0 * ldy + p * kRows;
      int64_t i = 0;
      const int64_t triples = RowTriples(rows);
      for (; i < 3 * triples; i += 3) PanelKernel<3>(xt + i * k, k, w.padded_k(), w.panel(p), yt + i * ldy, ldy, valid);
      for (; i + 2 <= rows; i += 2) PanelKernel<2>(xt + i * k, k, w.padded_k(), w.panel(p), yt + i * ldy, ldy, valid);
      if (i < rows) PanelKernel<1>(xt + i * k, k, w.padded_k(), w.panel(p), yt + i * ldy, ldy, valid);
    }
  }
}

}  // namespace sluice::kernels::cpu
