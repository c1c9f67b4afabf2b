#include "kernels/cpu/gemm_bf16_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
// GCC 12's AVX-512 headers initialise undefined vectors as `__Y = __Y`, which trips
// -Wmaybe-uninitialized wherever an intrinsic is inlined.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#define SLUICE_GEMM_AVX512 1
#if defined(__AVX512BF16__)
#define SLUICE_GEMM_AVX512_BF16 1
#endif
#endif

#include "kernels/tensor.h"

namespace sluice::kernels::cpu {

namespace {
constexpr int64_t kCols = PackedBf16Weight::kPanelCols;
constexpr int64_t kLine = 32;    // bf16 values per 64-byte line: 16 columns × one K pair
constexpr int kMaxRows = 12;     // rows per kernel call: 24 accumulators + weights + broadcasts
}  // namespace

PackedBf16Weight::PackedBf16Weight(const uint16_t* w, int64_t n, int64_t k, bool bf16_compute)
    : n_(n), k_(k), bf16_compute_(bf16_compute) {
  data_.assign(static_cast<size_t>(num_panels()) * kCols * 2 * pairs(), 0);  // zero padding
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < num_panels(); ++p) {
    uint16_t* dst = data_.data() + p * kCols * 2 * pairs();
    for (int64_t c = 0; c < kCols; ++c) {
      const int64_t col = p * kCols + c;
      if (col >= n) break;
      for (int64_t kk = 0; kk < k; ++kk) dst[(kk / 2) * kCols * 2 + c * 2 + kk % 2] = w[col * k + kk];
    }
  }
}

namespace {

#ifdef SLUICE_GEMM_AVX512

// The weight stream is prefetched 4 KB ahead, both lines of each pair: the hardware
// prefetcher alone left the batch-16 LM head (508 MB) at 30 GB/s; this reaches ~42.
inline void PrefetchPair(const uint16_t* line) {
  constexpr int64_t kAhead = 4096 / sizeof(uint16_t);
  _mm_prefetch(reinterpret_cast<const char*>(line + kAhead), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(line + kAhead + kLine), _MM_HINT_T0);
}

template <int MR>
inline void StoreRows(const __m512* lo, const __m512* hi, float* y, int64_t ldy, int64_t valid_cols) {
  if (valid_cols == kCols) {
    for (int i = 0; i < MR; ++i) {
      _mm512_storeu_ps(y + i * ldy, lo[i]);
      _mm512_storeu_ps(y + i * ldy + 16, hi[i]);
    }
    return;
  }
  const __mmask16 mlo = static_cast<__mmask16>(valid_cols >= 16 ? 0xffff : (1u << valid_cols) - 1);
  const __mmask16 mhi = static_cast<__mmask16>(valid_cols <= 16 ? 0 : (1u << (valid_cols - 16)) - 1);
  for (int i = 0; i < MR; ++i) {
    _mm512_mask_storeu_ps(y + i * ldy, mlo, lo[i]);
    _mm512_mask_storeu_ps(y + i * ldy + 16, mhi, hi[i]);
  }
}

// f32 compute: MR rows of x (f32, row stride k) × one panel. Per K pair, two weight
// lines widen to four f32 vectors (even and odd k of columns 0..15 and 16..31), each
// used by all MR rows: 4·MR FMAs per two loads.
template <int MR>
void PanelKernelF32(const float* x, int64_t k, const uint16_t* panel, float* y, int64_t ldy,
                    int64_t valid_cols) {
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  __m512 lo[MR], hi[MR];
  for (int i = 0; i < MR; ++i) lo[i] = hi[i] = _mm512_setzero_ps();
  const int64_t full = k / 2;
  for (int64_t q = 0; q < full; ++q) {
    const uint16_t* line = panel + q * 2 * kLine;
    PrefetchPair(line);
    const __m512i r0 = _mm512_loadu_si512(line), r1 = _mm512_loadu_si512(line + kLine);
    const __m512 w0e = _mm512_castsi512_ps(_mm512_slli_epi32(r0, 16));
    const __m512 w0o = _mm512_castsi512_ps(_mm512_and_si512(r0, high));
    const __m512 w1e = _mm512_castsi512_ps(_mm512_slli_epi32(r1, 16));
    const __m512 w1o = _mm512_castsi512_ps(_mm512_and_si512(r1, high));
    for (int i = 0; i < MR; ++i) {
      const __m512 xe = _mm512_set1_ps(x[i * k + 2 * q]);
      const __m512 xo = _mm512_set1_ps(x[i * k + 2 * q + 1]);
      lo[i] = _mm512_fmadd_ps(xo, w0o, _mm512_fmadd_ps(xe, w0e, lo[i]));
      hi[i] = _mm512_fmadd_ps(xo, w1o, _mm512_fmadd_ps(xe, w1e, hi[i]));
    }
  }
  if (k % 2 == 1) {  // the last pair holds only an even element
    const uint16_t* line = panel + full * 2 * kLine;
    const __m512 w0e = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_loadu_si512(line), 16));
    const __m512 w1e = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_loadu_si512(line + kLine), 16));
    for (int i = 0; i < MR; ++i) {
      const __m512 xe = _mm512_set1_ps(x[i * k + 2 * full]);
      lo[i] = _mm512_fmadd_ps(xe, w0e, lo[i]);
      hi[i] = _mm512_fmadd_ps(xe, w1e, hi[i]);
    }
  }
  StoreRows<MR>(lo, hi, y, ldy, valid_cols);
}

#ifdef SLUICE_GEMM_AVX512_BF16
// bf16 compute: MR rows of x as bf16 pairs (kp 32-bit pairs per row) × one panel. Per
// K pair: two weight lines, MR broadcasts and 2·MR vdpbf16ps.
template <int MR>
void PanelKernelBf16(const uint32_t* xb, int64_t kp, const uint16_t* panel, float* y, int64_t ldy,
                     int64_t valid_cols) {
  __m512 lo[MR], hi[MR];
  for (int i = 0; i < MR; ++i) lo[i] = hi[i] = _mm512_setzero_ps();
  for (int64_t q = 0; q < kp; ++q) {
    const uint16_t* line = panel + q * 2 * kLine;
    PrefetchPair(line);
    const __m512bh w0 = (__m512bh)_mm512_loadu_si512(line);
    const __m512bh w1 = (__m512bh)_mm512_loadu_si512(line + kLine);
    for (int i = 0; i < MR; ++i) {
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(static_cast<int>(xb[i * kp + q]));
      lo[i] = _mm512_dpbf16_ps(lo[i], xv, w0);
      hi[i] = _mm512_dpbf16_ps(hi[i], xv, w1);
    }
  }
  StoreRows<MR>(lo, hi, y, ldy, valid_cols);
}

// Rounds x [m, k] to bf16 pairs (round to nearest even, as F32ToBf16), zero padding
// K to 2·kp.
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
#endif  // SLUICE_GEMM_AVX512_BF16

#else  // portable fallback, same layout and the same summation order per output

template <int MR>
void PanelKernelF32(const float* x, int64_t k, const uint16_t* panel, float* y, int64_t ldy,
                    int64_t valid_cols) {
  for (int i = 0; i < MR; ++i) {
    for (int64_t c = 0; c < valid_cols; ++c) {
      float acc = 0;
      for (int64_t kk = 0; kk < k; ++kk) {
        acc = std::fma(x[i * k + kk], Bf16ToF32(panel[(kk / 2) * kCols * 2 + c * 2 + kk % 2]), acc);
      }
      y[i * ldy + c] = acc;
    }
  }
}

#endif  // SLUICE_GEMM_AVX512

// Calls kernel.template operator()<R>() for the R in [1, kMaxRows] equal to rows.
template <typename Kernel, int... R>
void WithRows(int64_t rows, Kernel&& kernel, std::integer_sequence<int, R...>) {
  ((rows == R + 1 ? kernel.template operator()<R + 1>() : void()), ...);
}

// Runs kernel(rows, first_row, panel) over all panels for x's rows [0, m): rows go in
// tiles whose activations stay in L2 while every panel streams past, each tile cut into
// the fewest near-equal groups of at most kMaxRows (16 rows → 8 + 8).
template <typename Kernel>
void ForEachPanelAndRowGroup(int64_t m, int64_t row_bytes, const PackedBf16Weight& w, Kernel&& kernel) {
  const int64_t tile = GemmRowTile(row_bytes);
  for (int64_t m0 = 0; m0 < m; m0 += tile) {
    const int64_t rows = std::min(tile, m - m0);
    const int64_t groups = (rows + kMaxRows - 1) / kMaxRows;
    // Guided, not static: when the OS takes a core for the server's own threads, the
    // other thread picks up the panels instead of the step waiting at the barrier.
#pragma omp parallel for schedule(guided)
    for (int64_t p = 0; p < w.num_panels(); ++p) {
      int64_t r = m0;
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t n_rows = rows / groups + (g < rows % groups ? 1 : 0);
        kernel(n_rows, r, p);
        r += n_rows;
      }
    }
  }
}

}  // namespace

bool Bf16ComputeAvailable() {
#ifdef SLUICE_GEMM_AVX512_BF16
  return __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

void GemmF32Bf16(const float* x, int64_t m, const PackedBf16Weight& w, float* y, int64_t ldy) {
  const int64_t k = w.k();
#ifdef SLUICE_GEMM_AVX512_BF16
  if (w.bf16_compute()) {
    // Round the activations to bf16 pairs once; every panel then reuses them.
    const int64_t kp = w.pairs();
    static thread_local std::vector<uint32_t> buffer;
    if (buffer.size() < static_cast<size_t>(m * kp)) buffer.resize(static_cast<size_t>(m * kp));
    ToBf16Pairs(x, m, k, kp, buffer.data());
    const uint32_t* xb = buffer.data();
    ForEachPanelAndRowGroup(m, 4 * kp, w, [&](int64_t rows, int64_t r, int64_t p) {
      const int64_t valid = std::min(kCols, w.n() - p * kCols);
      WithRows(rows, [&]<int R>() { PanelKernelBf16<R>(xb + r * kp, kp, w.panel(p), y + r * ldy + p * kCols, ldy, valid); },
               std::make_integer_sequence<int, kMaxRows>());
    });
    return;
  }
#endif
  ForEachPanelAndRowGroup(m, 4 * k, w, [&](int64_t rows, int64_t r, int64_t p) {
    const int64_t valid = std::min(kCols, w.n() - p * kCols);
    WithRows(rows, [&]<int R>() { PanelKernelF32<R>(x + r * k, k, w.panel(p), y + r * ldy + p * kCols, ldy, valid); },
             std::make_integer_sequence<int, kMaxRows>());
  });
}

int64_t GemmRowTile(int64_t row_bytes) {
  return std::max<int64_t>(kMaxRows, (256 * 1024) / row_bytes / kMaxRows * kMaxRows);
}

void RoundRowsToBf16Pairs(const float* x, int64_t m, int64_t k, int64_t kp, uint32_t* xb) {
#ifdef SLUICE_GEMM_AVX512_BF16
  ToBf16Pairs(x, m, k, kp, xb);
#else
  for (int64_t i = 0; i < m; ++i) {
    uint16_t* dst = reinterpret_cast<uint16_t*>(xb + i * kp);
    int64_t kk = 0;
    for (; kk < k; ++kk) dst[kk] = F32ToBf16(x[i * k + kk]);
    for (; kk < 2 * kp; ++kk) dst[kk] = 0;
  }
#endif
}

void GemmF32Bf16Panel(const float* x, const uint32_t* xb, int64_t m, const PackedBf16Weight& w,
                      int64_t panel, float* y, int64_t ldy) {
  if (m <= 0) return;
  const int64_t k = w.k();
  const int64_t valid = std::min(kCols, w.n() - panel * kCols);
  const int64_t groups = (m + kMaxRows - 1) / kMaxRows;
  int64_t r = 0;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t rows = m / groups + (g < m % groups ? 1 : 0);
#ifdef SLUICE_GEMM_AVX512_BF16
    if (w.bf16_compute()) {
      const int64_t kp = w.pairs();
      WithRows(rows, [&]<int R>() { PanelKernelBf16<R>(xb + r * kp, kp, w.panel(panel), y + r * ldy + panel * kCols, ldy, valid); },
               std::make_integer_sequence<int, kMaxRows>());
      r += rows;
      continue;
    }
#endif
    (void)xb;
    WithRows(rows, [&]<int R>() { PanelKernelF32<R>(x + r * k, k, w.panel(panel), y + r * ldy + panel * kCols, ldy, valid); },
             std::make_integer_sequence<int, kMaxRows>());
    r += rows;
  }
}

}  // namespace sluice::kernels::cpu
