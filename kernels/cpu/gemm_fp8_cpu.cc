#include "kernels/cpu/gemm_fp8_cpu.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/fp8.h"

#if defined(__x86_64__) || defined(__i386__)
// GCC 12's AVX-512 headers initialise undefined vectors as `__Y = __Y`, which trips
// -Wmaybe-uninitialized wherever an intrinsic is inlined.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#define SLUICE_FP8_X86 1
// The SIMD bodies are compiled for their instruction sets whatever the build's -march and
// chosen at run time, so one binary serves CPUs with and without AVX-512.
#define SLUICE_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma")))
#define SLUICE_TARGET_AVX2 __attribute__((target("avx2,f16c,fma")))
#endif

namespace sluice::kernels::cpu {

namespace {

constexpr int64_t kCols = PackedFp8Weight::kPanelCols;
constexpr int64_t kHeaderBytes = kCols * sizeof(float);  // two 64-byte lines of scales
constexpr int kMaxRows = 10;  // rows sharing each widened weight vector (as the int4 kernel)

// The f16 bit pattern whose value is fp8(code) / 256 (see the header), and its scalar value.
inline float Fp8Over256(uint8_t code) { return Fp8E4M3ToF32(code) * 0x1p-8f; }

}  // namespace

absl::StatusOr<PackedFp8Weight> PackedFp8Weight::Create(const std::vector<Row>& rows, int64_t k,
                                                        int64_t block_k) {
  if (k <= 0 || block_k <= 0 || rows.empty()) {
    return absl::InvalidArgumentError("fp8 weight: empty shape or block");
  }
  PackedFp8Weight w;
  w.n_ = static_cast<int64_t>(rows.size());
  w.k_ = k;
  w.block_k_ = block_k;
  const int64_t blocks = w.num_blocks();
  w.panel_bytes_ = blocks * kHeaderBytes + kCols * k;
  w.data_.assign(static_cast<size_t>(w.num_panels() * w.panel_bytes_), 0);  // padding columns: 0
  std::atomic<int64_t> bad_row{-1};
  std::atomic<bool> bad_scale{false};
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t p = 0; p < w.num_panels(); ++p) {
    uint8_t* dst = w.data_.data() + p * w.panel_bytes_;
    for (int64_t c = 0; c < kCols; ++c) {
      const int64_t row = p * kCols + c;
      if (row >= w.n_) break;
      const Row& src = rows[row];
      for (int64_t b = 0; b < blocks; ++b) {
        uint8_t* block = dst + w.block_offset(b);
        const float s = src.scales[b] * 256.f;  // exact: a power-of-two multiple
        if (!std::isfinite(src.scales[b]) || !std::isfinite(s)) bad_scale.store(true);
        std::memcpy(block + c * sizeof(float), &s, sizeof(float));
        const int64_t k0 = b * block_k, len = std::min(block_k, k - k0);
        uint8_t* codes = block + kHeaderBytes;
        for (int64_t i = 0; i < len; ++i) {
          const uint8_t v = src.codes[k0 + i];
          if ((v & 0x7f) == 0x7f) bad_row.store(row);
          codes[i * kCols + c] = v;
        }
      }
    }
  }
  if (bad_row.load() >= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("fp8 weight: row ", bad_row.load(), " holds a NaN code (0x7f or 0xff)"));
  }
  if (bad_scale.load()) {
    return absl::InvalidArgumentError("fp8 weight: a block scale is not finite (or too large)");
  }
  return w;
}

absl::StatusOr<PackedFp8Weight> PackedFp8Weight::FromBlocks(const uint8_t* codes, int64_t n,
                                                            int64_t k, const float* block_scales,
                                                            int64_t block_n, int64_t block_k) {
  if (n <= 0 || k <= 0 || block_n <= 0 || block_k <= 0) {
    return absl::InvalidArgumentError("fp8 weight: empty shape or block");
  }
  const int64_t kb = (k + block_k - 1) / block_k;
  std::vector<Row> rows(static_cast<size_t>(n));
  for (int64_t r = 0; r < n; ++r) rows[r] = Row{codes + r * k, block_scales + (r / block_n) * kb};
  return Create(rows, k, block_k);
}

uint8_t PackedFp8Weight::code(int64_t c, int64_t kk) const {
  const int64_t b = kk / block_k_, i = kk % block_k_;
  return panel(c / kCols)[block_offset(b) + kHeaderBytes + i * kCols + c % kCols];
}

float PackedFp8Weight::scale(int64_t c, int64_t b) const {
  float s;
  std::memcpy(&s, panel(c / kCols) + block_offset(b) + (c % kCols) * sizeof(float), sizeof(float));
  return s * 0x1p-8f;
}

float PackedFp8Weight::Dequantized(int64_t c, int64_t kk) const {
  return Fp8E4M3ToF32(code(c, kk)) * scale(c, kk / block_k_);
}

namespace {

// The portable body: the same stream and the same chain per output, with std::fma.
void PanelKernelScalar(const float* x, int64_t rows, const PackedFp8Weight& w, const uint8_t* panel,
                       float* y, int64_t ldy, int64_t valid_cols) {
  const int64_t k = w.k(), bk = w.block_k();
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * k;
    float out[kCols] = {};
    const uint8_t* p = panel;
    for (int64_t k0 = 0; k0 < k; k0 += bk) {
      const int64_t len = std::min(bk, k - k0);
      float scales[kCols];
      std::memcpy(scales, p, sizeof(scales));
      const uint8_t* codes = p + kHeaderBytes;
      float acc[kCols] = {};
      for (int64_t i = 0; i < len; ++i) {
        const float xv = xr[k0 + i];
        for (int64_t c = 0; c < kCols; ++c)
          acc[c] = std::fma(xv, Fp8Over256(codes[i * kCols + c]), acc[c]);
      }
      for (int64_t c = 0; c < kCols; ++c) out[c] = std::fma(scales[c], acc[c], out[c]);
      p = codes + len * kCols;
    }
    std::memcpy(y + r * ldy, out, sizeof(float) * static_cast<size_t>(valid_cols));
  }
}

#ifdef SLUICE_FP8_X86

// MR rows × NP consecutive panels (one stream each). Per k and panel: one 32-byte load,
// widened to 32 f16 patterns (sign-extend, shift, clear bit 14: the sign-extension's copy
// of the sign), two vcvtph2ps, then 2·MR FMAs. Several panels only add independent chains
// (at M = 1, one panel's 2 chains cannot hide the FMA latency). The outputs live in a
// stack tile touched once per block.
template <int MR, int NP>
SLUICE_TARGET_AVX512 void PanelKernelAvx512(const float* x, int64_t k, int64_t bk,
                                            const uint8_t* panel0, int64_t panel_bytes, float* y,
                                            int64_t ldy, int64_t valid_last) {
  const __m512i keep = _mm512_set1_epi16(static_cast<short>(0xbfff));
  alignas(64) float out[MR][NP * kCols];
  for (int r = 0; r < MR; ++r) {
    for (int j = 0; j < 2 * NP; ++j) _mm512_store_ps(out[r] + 16 * j, _mm512_setzero_ps());
  }
  const uint8_t* p = panel0;  // panel j's stream is at p + j·panel_bytes
  for (int64_t k0 = 0; k0 < k; k0 += bk) {
    const int64_t len = std::min(bk, k - k0);
    const uint8_t* header = p;
    const uint8_t* codes = p + kHeaderBytes;
    __m512 acc[MR][2 * NP];
    for (int r = 0; r < MR; ++r) {
      for (int j = 0; j < 2 * NP; ++j) acc[r][j] = _mm512_setzero_ps();
    }
    for (int64_t i = 0; i < len; ++i, codes += kCols) {
      __m512 w[2 * NP];
      for (int j = 0; j < NP; ++j) {
        const uint8_t* line = codes + j * panel_bytes;
        // One 64-byte line per two k; prefetch 4 KB ahead, as the other weight kernels.
        if ((i & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(line + 4096), _MM_HINT_T0);
        const __m512i b =
            _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(line)));
        const __m512i h = _mm512_and_si512(_mm512_slli_epi16(b, 7), keep);
        w[2 * j] = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
        w[2 * j + 1] = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
      }
      for (int r = 0; r < MR; ++r) {
        const __m512 xb = _mm512_set1_ps(x[r * k + k0 + i]);
        for (int j = 0; j < 2 * NP; ++j) acc[r][j] = _mm512_fmadd_ps(xb, w[j], acc[r][j]);
      }
    }
    for (int j = 0; j < 2 * NP; ++j) {
      const __m512 s = _mm512_loadu_ps(
          reinterpret_cast<const float*>(header + (j / 2) * panel_bytes) + 16 * (j % 2));
      for (int r = 0; r < MR; ++r) {
        float* o = out[r] + 16 * j;
        _mm512_store_ps(o, _mm512_fmadd_ps(s, acc[r][j], _mm512_load_ps(o)));
      }
    }
    p = header + kHeaderBytes + len * kCols;
  }
  const size_t last = sizeof(float) * static_cast<size_t>((NP - 1) * kCols + valid_last);
  for (int r = 0; r < MR; ++r) std::memcpy(y + r * ldy, out[r], last);
}

// The AVX2 body: 8-wide, one panel, up to 3 rows (4 accumulators per row).
template <int MR>
SLUICE_TARGET_AVX2 void PanelKernelAvx2(const float* x, int64_t k, int64_t bk, const uint8_t* panel,
                                        float* y, int64_t ldy, int64_t valid_cols) {
  const __m256i keep = _mm256_set1_epi16(static_cast<short>(0xbfff));
  alignas(32) float out[MR][kCols];
  for (int r = 0; r < MR; ++r) {
    for (int j = 0; j < 4; ++j) _mm256_store_ps(out[r] + 8 * j, _mm256_setzero_ps());
  }
  const uint8_t* p = panel;
  for (int64_t k0 = 0; k0 < k; k0 += bk) {
    const int64_t len = std::min(bk, k - k0);
    const uint8_t* header = p;
    const uint8_t* codes = p + kHeaderBytes;
    __m256 acc[MR][4];
    for (int r = 0; r < MR; ++r) {
      for (int j = 0; j < 4; ++j) acc[r][j] = _mm256_setzero_ps();
    }
    for (int64_t i = 0; i < len; ++i, codes += kCols) {
      __m256 w[4];
      for (int half = 0; half < 2; ++half) {
        const __m256i b = _mm256_cvtepi8_epi16(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + 16 * half)));
        const __m256i h = _mm256_and_si256(_mm256_slli_epi16(b, 7), keep);
        w[2 * half] = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
        w[2 * half + 1] = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
      }
      for (int r = 0; r < MR; ++r) {
        const __m256 xb = _mm256_set1_ps(x[r * k + k0 + i]);
        for (int j = 0; j < 4; ++j) acc[r][j] = _mm256_fmadd_ps(xb, w[j], acc[r][j]);
      }
    }
    for (int j = 0; j < 4; ++j) {
      const __m256 s = _mm256_loadu_ps(reinterpret_cast<const float*>(header) + 8 * j);
      for (int r = 0; r < MR; ++r) {
        float* o = out[r] + 8 * j;
        _mm256_store_ps(o, _mm256_fmadd_ps(s, acc[r][j], _mm256_load_ps(o)));
      }
    }
    p = header + kHeaderBytes + len * kCols;
  }
  for (int r = 0; r < MR; ++r)
    std::memcpy(y + r * ldy, out[r], sizeof(float) * static_cast<size_t>(valid_cols));
}

template <typename Kernel, int... R>
void WithRows(int64_t rows, Kernel&& kernel, std::integer_sequence<int, R...>) {
  ((rows == R + 1 ? kernel.template operator()<R + 1>() : void()), ...);
}

#endif  // SLUICE_FP8_X86

}  // namespace

bool Fp8Avx512Available() {
#ifdef SLUICE_FP8_X86
  static const bool available = __builtin_cpu_supports("avx512f") &&
                                __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512vl") &&
                                __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
  return available;
#else
  return false;
#endif
}

bool Fp8Avx2Available() {
#ifdef SLUICE_FP8_X86
  static const bool available = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") &&
                                __builtin_cpu_supports("fma");
  return available;
#else
  return false;
#endif
}

void GemmF32Fp8(const float* x, int64_t m, const PackedFp8Weight& w, float* y, int64_t ldy,
                Fp8Kernel kernel) {
  if (m <= 0 || w.n() == 0) return;
  if (kernel == Fp8Kernel::kAuto) {
    kernel = Fp8Avx512Available() ? Fp8Kernel::kAvx512
             : Fp8Avx2Available() ? Fp8Kernel::kAvx2
                                  : Fp8Kernel::kScalar;
  }
  if ((kernel == Fp8Kernel::kAvx512 && !Fp8Avx512Available()) ||
      (kernel == Fp8Kernel::kAvx2 && !Fp8Avx2Available())) {
    kernel = Fp8Kernel::kScalar;
  }
  const int64_t k = w.k(), bk = w.block_k();
  const int max_rows = kernel == Fp8Kernel::kAvx2 ? 3 : kMaxRows;
  // Rows go in tiles whose activations stay in L2 while every panel streams past, each
  // tile cut into the fewest near-equal groups of at most max_rows (as the int4 GEMM).
  const int64_t tile = std::max<int64_t>(max_rows, (256 * 1024) / (4 * k) / max_rows * max_rows);
  for (int64_t m0 = 0; m0 < m; m0 += tile) {
    const int64_t rows = std::min(tile, m - m0);
    const int64_t row_groups = (rows + max_rows - 1) / max_rows;
    const int64_t group_rows = (rows + row_groups - 1) / row_groups;
    // Panels per call: enough independent FMA chains at small M (see PanelKernelAvx512).
    const int64_t np = kernel == Fp8Kernel::kAvx512 ? (group_rows == 1   ? 4
                                                       : group_rows <= 3 ? 2
                                                                         : 1)
                                                    : 1;
    const int64_t chunks = (w.num_panels() + np - 1) / np;
    // Guided: a core taken by the OS leaves its panels to the other threads.
#pragma omp parallel for schedule(guided)
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const int64_t p0 = chunk * np, p1 = std::min(w.num_panels(), p0 + np);
      int64_t r = m0;
      for (int64_t rg = 0; rg < row_groups; ++rg) {
        const int64_t n_rows = rows / row_groups + (rg < rows % row_groups ? 1 : 0);
        const float* xr = x + r * k;
#ifdef SLUICE_FP8_X86
        if (kernel == Fp8Kernel::kAvx512) {
          // A full chunk in one call; a short last chunk panel by panel.
          const int64_t step = p1 - p0 == np ? np : 1;
          for (int64_t p = p0; p < p1; p += step) {
            const int64_t valid_last = std::min(kCols, w.n() - (p + step - 1) * kCols);
            float* yp = y + r * ldy + p * kCols;
            auto call = [&]<int R>() {
              if constexpr (R == 1) {
                if (step == 4) {
                  PanelKernelAvx512<R, 4>(xr, k, bk, w.panel(p), w.panel_bytes(), yp, ldy,
                                          valid_last);
                  return;
                }
              }
              if constexpr (R <= 3) {
                if (step == 2) {
                  PanelKernelAvx512<R, 2>(xr, k, bk, w.panel(p), w.panel_bytes(), yp, ldy,
                                          valid_last);
                  return;
                }
              }
              PanelKernelAvx512<R, 1>(xr, k, bk, w.panel(p), w.panel_bytes(), yp, ldy, valid_last);
            };
            WithRows(n_rows, call, std::make_integer_sequence<int, kMaxRows>());
          }
          r += n_rows;
          continue;
        }
        if (kernel == Fp8Kernel::kAvx2) {
          for (int64_t p = p0; p < p1; ++p) {
            const int64_t valid = std::min(kCols, w.n() - p * kCols);
            float* yp = y + r * ldy + p * kCols;
            auto call = [&]<int R>() { PanelKernelAvx2<R>(xr, k, bk, w.panel(p), yp, ldy, valid); };
            WithRows(n_rows, call, std::make_integer_sequence<int, 3>());
          }
          r += n_rows;
          continue;
        }
#endif
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t valid = std::min(kCols, w.n() - p * kCols);
          PanelKernelScalar(xr, n_rows, w, w.panel(p), y + r * ldy + p * kCols, ldy, valid);
        }
        r += n_rows;
      }
    }
  }
}

}  // namespace sluice::kernels::cpu
