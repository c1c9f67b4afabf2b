#include "kernels/cpu/gemm_bf16_cpu.h"

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
// GCC 12's AVX-512 headers initialise undefined vectors as `__Y = __Y`, which trips
// -Wmaybe-uninitialized wherever an intrinsic is inlined.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
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
    : n_(n), k_(k), bf16_compute_(bf16_compute) {
  if (bf16_compute) {
    // Column panels, K pair by K pair (see the header); odd K and short panels are
    // zero-padded.
    constexpr int64_t kCols = kPairPanelCols;
    padded_k_ = (k + 1) / 2 * 2;
    data_.assign(static_cast<size_t>(num_panels()) * kCols * padded_k_, 0);
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < num_panels(); ++p) {
      uint16_t* dst = data_.data() + p * kCols * padded_k_;
      for (int64_t c = 0; c < kCols; ++c) {
        const int64_t col = p * kCols + c;
        if (col >= n) break;
        for (int64_t kk = 0; kk < k; ++kk) dst[(kk / 2) * kCols * 2 + c * 2 + kk % 2] = w[col * k + kk];
      }
    }
    return;
  }
  padded_k_ = (k + kChunk - 1) / kChunk * kChunk;
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
          // element j < 16 → slot 2j (low half of lane j), element 16 + j → slot 2j + 1
          line[j < 16 ? 2 * j : 2 * (j - 16) + 1] = w[row * k + kk];
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
constexpr int kMaxPairRows = 12;  // 24 accumulators + 2 weight registers + a broadcast

// MR token rows × one 32-column pair panel. xb: the rows as bf16 pairs (kp per row).
// Per K pair: two weight lines, MR broadcasts and 2·MR vdpbf16ps. The weight stream is
// prefetched a few KB ahead, both lines of each pair: the hardware prefetcher alone
// left the batch-16 LM head (508 MB) at 30 GB/s, this gets it to DRAM speed.
template <int MR>
void PairPanelKernel(const uint32_t* xb, int64_t kp, const uint16_t* panel, float* y, int64_t ldy,
                     int64_t valid_cols) {
  constexpr int64_t kLine = 32;  // bf16 values per 64-byte line
  constexpr int64_t kAhead = 4096 / sizeof(uint16_t);
  __m512 lo[MR], hi[MR];
  for (int i = 0; i < MR; ++i) lo[i] = hi[i] = _mm512_setzero_ps();
  for (int64_t q = 0; q < kp; ++q) {
    const uint16_t* line = panel + q * 2 * kLine;
    _mm_prefetch(reinterpret_cast<const char*>(line + kAhead), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(line + kAhead + kLine), _MM_HINT_T0);
    const __m512bh w0 = (__m512bh)_mm512_loadu_si512(line);
    const __m512bh w1 = (__m512bh)_mm512_loadu_si512(line + kLine);
    for (int i = 0; i < MR; ++i) {
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(static_cast<int>(xb[i * kp + q]));
      lo[i] = _mm512_dpbf16_ps(lo[i], xv, w0);
      hi[i] = _mm512_dpbf16_ps(hi[i], xv, w1);
    }
  }
  if (valid_cols == 2 * 16) {
    for (int i = 0; i < MR; ++i) {
      _mm512_storeu_ps(y + i * ldy, lo[i]);
      _mm512_storeu_ps(y + i * ldy + 16, hi[i]);
    }
  } else {
    const __mmask16 mlo = static_cast<__mmask16>(valid_cols >= 16 ? 0xffff : (1u << valid_cols) - 1);
    const __mmask16 mhi = static_cast<__mmask16>(valid_cols <= 16 ? 0 : (1u << (valid_cols - 16)) - 1);
    for (int i = 0; i < MR; ++i) {
      _mm512_mask_storeu_ps(y + i * ldy, mlo, lo[i]);
      _mm512_mask_storeu_ps(y + i * ldy + 16, mhi, hi[i]);
    }
  }
}

template <int... MR>
void PairPanelRows(int64_t rows, const uint32_t* xb, int64_t kp, const uint16_t* panel, float* y,
                   int64_t ldy, int64_t valid_cols, std::integer_sequence<int, MR...>) {
  ((rows == MR + 1 ? PairPanelKernel<MR + 1>(xb, kp, panel, y, ldy, valid_cols) : void()), ...);
}

// Rounds rows [0, m) of x to bf16 pairs (round to nearest even, as F32ToBf16), zero
// padding K to the packed pair count.
void ToBf16Pairs(const float* x, int64_t m, int64_t k, int64_t kp, uint32_t* xb) {
  for (int64_t i = 0; i < m; ++i) {
    uint16_t* dst = reinterpret_cast<uint16_t*>(xb + i * kp);
    const float* src = x + i * k;
    int64_t kk = 0;
    for (; kk + 32 <= k; kk += 32) {
      const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + kk + 16), _mm512_loadu_ps(src + kk));
      _mm512_storeu_si512(dst + kk, (__m512i)v);
    }
    for (; kk < k; ++kk) dst[kk] = F32ToBf16(src[kk]);
    for (; kk < 2 * kp; ++kk) dst[kk] = 0;
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
    // Round the activations to bf16 pairs once, then cut each tile of rows into the
    // fewest groups of at most kMaxPairRows and stream every panel past each group.
    const int64_t kp = w.padded_k() / 2;
    static thread_local std::vector<uint32_t> buffer;
    if (buffer.size() < static_cast<size_t>(m * kp)) buffer.resize(static_cast<size_t>(m * kp));
    const uint32_t* xb = buffer.data();
    ToBf16Pairs(x, m, k, kp, buffer.data());
    constexpr int64_t kCols = PackedBf16Weight::kPairPanelCols;
    const int64_t tile = std::max<int64_t>(kMaxPairRows, (256 * 1024) / (4 * kp) / kMaxPairRows * kMaxPairRows);
    for (int64_t m0 = 0; m0 < m; m0 += tile) {
      const int64_t rows = std::min(tile, m - m0);
      const int64_t groups = (rows + kMaxPairRows - 1) / kMaxPairRows;
#pragma omp parallel for schedule(static)
      for (int64_t p = 0; p < panels; ++p) {
        const int64_t valid = std::min(kCols, w.n() - p * kCols);
        int64_t r = m0;
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t n_rows = rows / groups + (g < rows % groups ? 1 : 0);
          PairPanelRows(n_rows, xb + r * kp, kp, w.panel(p), y + r * ldy + p * kCols, ldy, valid,
                        std::make_integer_sequence<int, kMaxPairRows>());
          r += n_rows;
        }
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
