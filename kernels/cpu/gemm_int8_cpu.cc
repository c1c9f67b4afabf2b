#include "kernels/cpu/gemm_int8_cpu.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
// GCC 12's AVX-512 headers initialise undefined vectors as `__Y = __Y`, which trips
// -Wmaybe-uninitialized wherever an intrinsic is inlined.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#define SLUICE_INT8_X86 1
// The AVX-512 kernels are compiled for AVX-512 whatever the build's -march, and chosen
// at run time (Int8Avx512Available), so one binary serves CPUs with and without it.
#define SLUICE_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#endif

namespace sluice::kernels::cpu {

namespace {
constexpr int64_t kCols = PackedInt8Weight::kPanelCols;
constexpr int kMaxRows = 12;  // rows per kernel call: 24 accumulators + 2 weights + broadcasts
}  // namespace

float QuantizeRowInt8(const float* w, int64_t k, int8_t* q) {
  float amax = 0.f;
  for (int64_t i = 0; i < k; ++i) amax = std::max(amax, std::fabs(w[i]));
  if (!(amax > 0.f) || !std::isfinite(amax)) {
    // All zero (or not finite: no scale represents it; zeros keep the model running and
    // the golden tests catch a checkpoint that needs it).
    for (int64_t i = 0; i < k; ++i) q[i] = 0;
    return 0.f;
  }
  const float scale = amax / 127.f;
  for (int64_t i = 0; i < k; ++i) {
    const float r = std::nearbyint(w[i] / scale);  // round half to even (default FP mode)
    q[i] = static_cast<int8_t>(std::clamp(r, -127.f, 127.f));
  }
  return scale;
}

PackedInt8Weight::PackedInt8Weight(const float* w, int64_t n, int64_t k) : n_(n), k_(k) {
  data_.assign(static_cast<size_t>(num_panels() * kCols * k), 0);  // zero padding columns
  scales_.assign(static_cast<size_t>(n), 0.f);
#pragma omp parallel
  {
    std::vector<int8_t> row(static_cast<size_t>(k));
#pragma omp for schedule(static)
    for (int64_t col = 0; col < n; ++col) {
      scales_[col] = QuantizeRowInt8(w + col * k, k, row.data());
      int8_t* dst = data_.data() + (col / kCols) * kCols * k + col % kCols;
      for (int64_t kk = 0; kk < k; ++kk) dst[kk * kCols] = row[kk];
    }
  }
}

namespace {

// Scalar reference of the panel kernel: the same FMA chain per output, so it gives the
// AVX-512 kernel's bits (the compiler may vectorise across columns, never across k).
void PanelKernelScalar(int rows, const float* x, int64_t k, const int8_t* panel, const float* scales,
                       float* y, int64_t ldy, int64_t valid_cols) {
  for (int i = 0; i < rows; ++i) {
    for (int64_t c = 0; c < valid_cols; ++c) {
      float acc = 0.f;
      for (int64_t kk = 0; kk < k; ++kk) {
        acc = std::fma(x[i * k + kk], static_cast<float>(panel[kk * kCols + c]), acc);
      }
      y[i * ldy + c] = acc * scales[c];
    }
  }
}

#ifdef SLUICE_INT8_X86

// MR rows of x (f32, row stride k) × one panel. Per k: two 16-byte loads widened to two
// f32 vectors (columns 0..15 and 16..31), each used by all MR rows: 2·MR FMAs per k.
template <int MR>
SLUICE_TARGET_AVX512 void PanelKernelAvx512(const float* x, int64_t k, const int8_t* panel,
                                            const float* scales, float* y, int64_t ldy,
                                            int64_t valid_cols) {
  __m512 lo[MR], hi[MR];
  for (int i = 0; i < MR; ++i) lo[i] = hi[i] = _mm512_setzero_ps();
  for (int64_t kk = 0; kk < k; ++kk) {
    const int8_t* line = panel + kk * kCols;
    // One 64-byte line per two k; prefetch 4 KB ahead (see gemm_bf16_cpu.cc for why).
    if ((kk & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(line + 4096), _MM_HINT_T0);
    const __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(line))));
    const __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(line + 16))));
    for (int i = 0; i < MR; ++i) {
      const __m512 xb = _mm512_set1_ps(x[i * k + kk]);
      lo[i] = _mm512_fmadd_ps(xb, w0, lo[i]);
      hi[i] = _mm512_fmadd_ps(xb, w1, hi[i]);
    }
  }
  const __mmask16 mlo = static_cast<__mmask16>(valid_cols >= 16 ? 0xffff : (1u << valid_cols) - 1);
  const __mmask16 mhi = static_cast<__mmask16>(valid_cols <= 16 ? 0 : valid_cols >= 32 ? 0xffff : (1u << (valid_cols - 16)) - 1);
  const __m512 s0 = _mm512_maskz_loadu_ps(mlo, scales);
  const __m512 s1 = _mm512_maskz_loadu_ps(mhi, scales + 16);
  for (int i = 0; i < MR; ++i) {
    _mm512_mask_storeu_ps(y + i * ldy, mlo, _mm512_mul_ps(lo[i], s0));
    _mm512_mask_storeu_ps(y + i * ldy + 16, mhi, _mm512_mul_ps(hi[i], s1));
  }
}

// Calls PanelKernelAvx512<R> for the R in [1, kMaxRows] equal to rows.
template <int... R>
void Avx512WithRows(int rows, std::integer_sequence<int, R...>, const float* x, int64_t k,
                    const int8_t* panel, const float* scales, float* y, int64_t ldy, int64_t valid) {
  ((rows == R + 1 ? PanelKernelAvx512<R + 1>(x, k, panel, scales, y, ldy, valid) : void()), ...);
}

#endif  // SLUICE_INT8_X86

}  // namespace

bool Int8Avx512Available() {
#ifdef SLUICE_INT8_X86
  static const bool available = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512vl");
  return available;
#else
  return false;
#endif
}

namespace {

bool UseAvx512(Int8Kernel kernel) {
#ifdef SLUICE_INT8_X86
  return kernel == Int8Kernel::kAvx512 || (kernel == Int8Kernel::kAuto && Int8Avx512Available());
#else
  (void)kernel;
  return false;
#endif
}

// Rows [0, m) of x × panel p, the rows cut into the fewest near-equal groups of at most
// kMaxRows (the grouping changes no output's bits: each is its own chain).
void PanelRows(const float* x, int64_t m, const PackedInt8Weight& w, int64_t p, float* y, int64_t ldy,
               bool avx512) {
  const int64_t k = w.k();
  const float* scales = w.scales().data() + p * kCols;
  const int64_t valid = std::min(kCols, w.n() - p * kCols);
  const int64_t groups = (m + kMaxRows - 1) / kMaxRows;
  int64_t r = 0;
  for (int64_t g = 0; g < groups; ++g) {
    const int n_rows = static_cast<int>(m / groups + (g < m % groups ? 1 : 0));
    const float* xr = x + r * k;
    float* yr = y + r * ldy + p * kCols;
#ifdef SLUICE_INT8_X86
    if (avx512) {
      Avx512WithRows(n_rows, std::make_integer_sequence<int, kMaxRows>(), xr, k, w.panel(p), scales, yr, ldy, valid);
      r += n_rows;
      continue;
    }
#endif
    PanelKernelScalar(n_rows, xr, k, w.panel(p), scales, yr, ldy, valid);
    r += n_rows;
  }
}

}  // namespace

void GemmF32Int8(const float* x, int64_t m, const PackedInt8Weight& w, float* y, int64_t ldy,
                 Int8Kernel kernel) {
  if (m <= 0) return;
  const bool avx512 = UseAvx512(kernel);
  const int64_t k = w.k();
  // Rows go in tiles whose activations stay in L2 while every panel streams past, each
  // tile cut into the fewest near-equal groups of at most kMaxRows (as the bf16 GEMM).
  const int64_t tile = std::max<int64_t>(kMaxRows, (256 * 1024) / std::max<int64_t>(1, 4 * k) / kMaxRows * kMaxRows);
  for (int64_t m0 = 0; m0 < m; m0 += tile) {
    const int64_t rows = std::min(tile, m - m0);
    // Guided: when the OS takes a core, the other thread picks up the remaining panels.
#pragma omp parallel for schedule(guided)
    for (int64_t p = 0; p < w.num_panels(); ++p) PanelRows(x + m0 * k, rows, w, p, y + m0 * ldy, ldy, avx512);
  }
}

void GemmF32Int8Panel(const float* x, int64_t m, const PackedInt8Weight& w, int64_t panel, float* y,
                      int64_t ldy, Int8Kernel kernel) {
  if (m <= 0) return;
  PanelRows(x, m, w, panel, y, ldy, UseAvx512(kernel));
}

}  // namespace sluice::kernels::cpu
