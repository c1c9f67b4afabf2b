#include "kernels/cpu/gemm_int4_cpu.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
// GCC 12's AVX-512 headers initialise undefined vectors as `__Y = __Y`, which trips
// -Wmaybe-uninitialized wherever an intrinsic is inlined.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#define SLUICE_INT4_AVX512 1
#if defined(__AVX512VNNI__)
#define SLUICE_INT4_VNNI 1  // the vpdpbusd body (else AVX-512BW's vpmaddubsw body only)
#endif
#endif

#include "absl/strings/str_cat.h"
#include "kernels/cpu/int4_fit.h"

namespace sluice::kernels::cpu {

namespace {

constexpr int64_t kCols = PackedInt4Weight::kPanelCols;
constexpr int64_t kBlockK = PackedInt4Weight::kBlockK;
constexpr int64_t kBlockWords = 2 * 16;   // two 64-byte lines of nibbles per 8 K
constexpr int64_t kHeaderWords = 2 * 16;  // two 64-byte lines of (s, m) pairs per group
constexpr int kMaxRows = 6;               // rows per kernel call sharing each weight load

int64_t BlocksIn(int64_t group_k) { return (group_k + kBlockK - 1) / kBlockK; }

float LoadAsF32(const void* w, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kBF16:
      return Bf16ToF32(static_cast<const uint16_t*>(w)[i]);
    case DType::kF16:
      return F16ToF32(static_cast<const uint16_t*>(w)[i]);
    default:
      return static_cast<const float*>(w)[i];
  }
}

}  // namespace

PackedInt4Weight::PackedInt4Weight(const void* w, DType dtype, int64_t n, int64_t k,
                                   int64_t group_size)
    : n_(n), k_(k), group_size_(group_size) {
  const int64_t groups = num_groups();
  const int64_t last_k = k - (groups - 1) * group_size;
  panel_words_ = (groups - 1) * group_words() + kHeaderWords + BlocksIn(last_k) * kBlockWords;
  data_.assign(static_cast<size_t>(num_panels() * panel_words_), 0);  // zero padding
  std::atomic<bool> finite{true};
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t p = 0; p < num_panels(); ++p) {
    uint32_t* dst = data_.data() + p * panel_words_;
    std::vector<float> row(static_cast<size_t>(k));
    bool panel_finite = true;
    for (int64_t c = 0; c < kCols; ++c) {
      const int64_t col = p * kCols + c;
      if (col >= n) break;
      for (int64_t kk = 0; kk < k; ++kk) {
        row[kk] = LoadAsF32(w, dtype, col * k + kk);
        panel_finite = panel_finite && std::isfinite(row[kk]);
      }
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t k0 = g * group_size, gk = std::min(group_size, k - k0);
        const Int4GroupParams fit = FitInt4Group(row.data() + k0, gk);  // kernels/cpu/int4_fit.h
        const float s = Bf16ToF32(fit.scale), m = Bf16ToF32(fit.minimum);
        uint32_t* group = dst + g * group_words();
        group[c] = static_cast<uint32_t>(fit.scale) | (static_cast<uint32_t>(fit.minimum) << 16);
        uint32_t* blocks = group + kHeaderWords;
        for (int64_t kk = 0; kk < gk; ++kk) {
          const int q = Int4Code(row[k0 + kk], s, m);
          blocks[(kk / kBlockK) * kBlockWords + c] |= static_cast<uint32_t>(q)
                                                      << (4 * (kk % kBlockK));
        }
      }
    }
    if (!panel_finite) finite.store(false, std::memory_order_relaxed);
  }
  all_finite_ = finite.load();
}

float PackedInt4Weight::scale(int64_t c, int64_t g) const {
  const uint32_t word = panel(c / kCols)[g * group_words() + c % kCols];
  return Bf16ToF32(static_cast<uint16_t>(word & 0xffff));
}

float PackedInt4Weight::minimum(int64_t c, int64_t g) const {
  const uint32_t word = panel(c / kCols)[g * group_words() + c % kCols];
  return Bf16ToF32(static_cast<uint16_t>(word >> 16));
}

int PackedInt4Weight::code(int64_t c, int64_t k) const {
  const int64_t g = k / group_size_, kk = k % group_size_;
  const uint32_t word =
      panel(c / kCols)[g * group_words() + kHeaderWords + (kk / kBlockK) * kBlockWords + c % kCols];
  return static_cast<int>((word >> (4 * (kk % kBlockK))) & 0xf);
}

float PackedInt4Weight::Dequantized(int64_t c, int64_t k) const {
  const int64_t g = k / group_size_;
  return std::fma(scale(c, g), static_cast<float>(code(c, k)), minimum(c, g));
}

namespace {

constexpr int64_t kQBlock = 32;  // K per activation block scale
// The byte of a quantized row holding k, within its block of 8: (x0, x2, x4, x6, x1, x3, x5, x7).
constexpr int64_t SlotInBlock8(int64_t i) { return (i & 1) * 4 + (i >> 1); }

// What every panel kernel reads besides the weight, per row r (see the header):
//   q[r·ld_q + …]: the int8 activations, row stride ld_q = w.padded_k(), each 8 K in
//                  the order (x0, x2, x4, x6, x1, x3, x5, x7);
//   d[r·ld_d + b]: the block scales, ld_d = Int4ActivationBlocks(w.k());
//   xsum[r·groups + g]: the f32 group sums of x.
struct Activations {
  const int8_t* q;
  int64_t ld_q;
  const float* d;
  int64_t ld_d;
  const float* xsum;
  int64_t groups;
};

std::atomic<Int4Kernel> g_forced_kernel{Int4Kernel::kAuto};

bool CpuHasAvx512Bw() {
#ifdef SLUICE_INT4_AVX512
  static const bool available = __builtin_cpu_supports("avx512f") &&
                                __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512vl");
  return available;
#else
  return false;
#endif
}

bool CpuHasVnni() {
#ifdef SLUICE_INT4_VNNI
  static const bool available = CpuHasAvx512Bw() && __builtin_cpu_supports("avx512vnni");
  return available;
#else
  return false;
#endif
}

// q for one activation: clamp(round(x / d), −127, 127), round half away from zero, 0 for
// a NaN quotient (x NaN, or x and d both infinite). d ≠ 0.
inline int QuantizeOne(float x, float d) {
  const float v = x / d;
  if (!(v == v)) return 0;
  return static_cast<int>(std::clamp(std::round(v), -127.0f, 127.0f));
}

// The scalar prologue: x[0, k) → q[0, roundup(k, 8)) (interleaved, zero past k) and
// d[0, ceil(k / 32)).
void QuantizeRowScalar(const float* x, int64_t k, int8_t* q, float* d) {
  const int64_t kp = (k + kBlockK - 1) / kBlockK * kBlockK;
  for (int64_t b0 = 0; b0 < k; b0 += kQBlock) {
    const int64_t n = std::min(kQBlock, k - b0), nq = std::min(kQBlock, kp - b0);
    float amax = 0;
    for (int64_t i = 0; i < n; ++i) {
      const float a = std::fabs(x[b0 + i]);
      if (a > amax) amax = a;  // NaN never compares greater: ignored
    }
    const float scale = amax / 127.0f;
    d[b0 / kQBlock] = scale;
    for (int64_t i = 0; i < nq; ++i) {
      const int v = (i < n && scale != 0) ? QuantizeOne(x[b0 + i], scale) : 0;
      q[b0 + (i & ~int64_t{7}) + SlotInBlock8(i & 7)] = static_cast<int8_t>(v);
    }
  }
}

#ifdef SLUICE_INT4_AVX512

// The AVX-512 prologue: the same values as QuantizeRowScalar, 16 at a time. max_ps(a, b)
// returns b when a is NaN, as the scalar comparison ignores it; the division is the same
// IEEE division; round half away from zero is trunc(v) plus sign(v) where |v − trunc(v)|
// ≥ 0.5 (v − trunc(v) is exact); the clamp and the NaN → 0 rule as QuantizeOne.
void QuantizeRowAvx512(const float* x, int64_t k, int8_t* q, float* d) {
  const int64_t kp = (k + kBlockK - 1) / kBlockK * kBlockK;
  const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  const __m512 sign_mask = _mm512_castsi512_ps(_mm512_set1_epi32(static_cast<int>(0x80000000u)));
  const __m512 one = _mm512_set1_ps(1.0f), half = _mm512_set1_ps(0.5f);
  const __m512 lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
  const __m128i order = _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
  for (int64_t b0 = 0; b0 < k; b0 += kQBlock) {
    const int64_t n = std::min(kQBlock, k - b0), nq = std::min(kQBlock, kp - b0);
    __m512 v[2];
    __m512 amax = _mm512_setzero_ps();
    for (int h = 0; h < 2; ++h) {
      const int64_t valid = std::clamp<int64_t>(n - 16 * h, 0, 16);
      const __mmask16 m = static_cast<__mmask16>((1u << valid) - 1);
      v[h] = _mm512_maskz_loadu_ps(m, x + b0 + 16 * h);
      amax = _mm512_max_ps(_mm512_and_ps(v[h], abs_mask), amax);
    }
    const float scale = _mm512_reduce_max_ps(amax) / 127.0f;
    d[b0 / kQBlock] = scale;
    for (int h = 0; h < 2; ++h) {
      const int64_t bytes = std::clamp<int64_t>(nq - 16 * h, 0, 16);
      if (bytes == 0) break;
      __m128i packed = _mm_setzero_si128();
      if (scale != 0) {
        const __m512 t = _mm512_div_ps(v[h], _mm512_set1_ps(scale));
        const __mmask16 ordered = _mm512_cmp_ps_mask(t, t, _CMP_ORD_Q);
        __m512 r = _mm512_roundscale_ps(t, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        const __m512 frac = _mm512_and_ps(_mm512_sub_ps(t, r), abs_mask);
        const __mmask16 up = _mm512_cmp_ps_mask(frac, half, _CMP_GE_OQ);
        r = _mm512_mask_add_ps(r, up, r, _mm512_or_ps(_mm512_and_ps(t, sign_mask), one));
        r = _mm512_min_ps(_mm512_max_ps(r, lo), hi);
        packed = _mm_shuffle_epi8(_mm512_cvtepi32_epi8(_mm512_maskz_cvtps_epi32(ordered, r)), order);
      }
      _mm_mask_storeu_epi8(q + b0 + 16 * h, static_cast<__mmask16>((1u << bytes) - 1), packed);
    }
  }
}

// The stream is prefetched 4 KB ahead, both lines of each block, as the bf16 kernel does.
inline void PrefetchBlock(const uint32_t* line) {
  constexpr int64_t kAhead = 4096 / sizeof(uint32_t);
  _mm_prefetch(reinterpret_cast<const char*>(line + kAhead), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(line + kAhead + 16), _MM_HINT_T0);
}

inline __m512i Broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof(v));
  return _mm512_set1_epi32(v);
}

// MR rows × NP consecutive panels (one stream each). Per block of 8 K and panel: two
// loads, each split into its low nibbles (k = 0, 2, 4, 6 of every column, one byte each)
// and high nibbles (k = 1, 3, 5, 7), then per row and 16 columns: VNNI, two vpdpbusd
// (codes unsigned × activations signed, 4 products per 32-bit lane) into the block's
// int32 sums; without VNNI, two vpmaddubsw (2 products per 16-bit lane, |sum| ≤ 2·15·127)
// added as int16 (4 blocks of 8: |sum| ≤ 16·15·127 = 30480 < 2¹⁵) and one vpmaddwd by 1
// per 32 K. Once per 32 K the int32 sums are folded into the group's f32 accumulator,
// a = fma(d_b, float(i_b), a); once per group into the outputs. Several panels at once
// only add independent chains (at M = 1 one panel has 2). Each output's chain is the same
// whatever MR, NP and the body. The outputs live in a stack tile touched once per group.
template <bool kVnni, int MR, int NP>
void PanelKernel(const Activations& a, int64_t row0, int64_t k, int64_t group_size,
                 const uint32_t* panel0, int64_t panel_words, float* y, int64_t ldy,
                 int64_t valid_last) {
  const __m512i nibble = _mm512_set1_epi8(0x0f);
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  alignas(64) float out[MR][NP * kCols];
  for (int r = 0; r < MR; ++r) {
    for (int j = 0; j < 2 * NP; ++j) _mm512_store_ps(out[r] + 16 * j, _mm512_setzero_ps());
  }
  const int8_t* xq = a.q + row0 * a.ld_q;
  const float* xd = a.d + row0 * a.ld_d;
  const float* xsum = a.xsum + row0 * a.groups;
  const uint32_t* p = panel0;  // panel j's stream is at p + j·panel_words
  for (int64_t g = 0; g < a.groups; ++g) {
    const int64_t k0 = g * group_size;
    const int64_t blocks = BlocksIn(std::min(group_size, k - k0));
    const uint32_t* header = p;
    p += kHeaderWords;
    __m512 acc[MR][2 * NP];
    for (int r = 0; r < MR; ++r) {
      for (int j = 0; j < 2 * NP; ++j) acc[r][j] = _mm512_setzero_ps();
    }
    for (int64_t b = 0; b < blocks; b += kQBlock / kBlockK) {
      const int64_t n8 = std::min(kQBlock / kBlockK, blocks - b);
      __m512i sum[MR][2 * NP];
      for (int r = 0; r < MR; ++r) {
        for (int j = 0; j < 2 * NP; ++j) sum[r][j] = _mm512_setzero_si512();
      }
      auto block8 = [&](int64_t i) __attribute__((always_inline)) {
        const uint32_t* pb = p + i * kBlockWords;
        __m512i even[2 * NP], odd[2 * NP];
        for (int j = 0; j < NP; ++j) {
          PrefetchBlock(pb + j * panel_words);
          for (int h = 0; h < 2; ++h) {
            const __m512i v = _mm512_loadu_si512(pb + j * panel_words + 16 * h);
            even[2 * j + h] = _mm512_and_si512(v, nibble);
            odd[2 * j + h] = _mm512_and_si512(_mm512_srli_epi32(v, 4), nibble);
          }
        }
        const int8_t* xk = xq + k0 + (b + i) * kBlockK;
        for (int r = 0; r < MR; ++r) {
          const __m512i xe = Broadcast4(xk + r * a.ld_q), xo = Broadcast4(xk + r * a.ld_q + 4);
          for (int j = 0; j < 2 * NP; ++j) {
            if constexpr (kVnni) {
#ifdef SLUICE_INT4_VNNI
              sum[r][j] = _mm512_dpbusd_epi32(sum[r][j], even[j], xe);
              sum[r][j] = _mm512_dpbusd_epi32(sum[r][j], odd[j], xo);
#endif
            } else {
              sum[r][j] = _mm512_add_epi16(
                  sum[r][j], _mm512_add_epi16(_mm512_maddubs_epi16(even[j], xe),
                                              _mm512_maddubs_epi16(odd[j], xo)));
            }
          }
        }
      };
      if (n8 == kQBlock / kBlockK) {
#pragma GCC unroll 4
        for (int64_t i = 0; i < kQBlock / kBlockK; ++i) block8(i);
      } else {
        for (int64_t i = 0; i < n8; ++i) block8(i);
      }
      p += n8 * kBlockWords;
      const int64_t qb = (k0 + b * kBlockK) / kQBlock;
      for (int r = 0; r < MR; ++r) {
        const __m512 dv = _mm512_set1_ps(xd[r * a.ld_d + qb]);
        for (int j = 0; j < 2 * NP; ++j) {
          __m512i s = sum[r][j];
          if constexpr (!kVnni) s = _mm512_madd_epi16(s, _mm512_set1_epi16(1));
          acc[r][j] = _mm512_fmadd_ps(dv, _mm512_cvtepi32_ps(s), acc[r][j]);
        }
      }
    }
    for (int j = 0; j < 2 * NP; ++j) {
      const __m512i h = _mm512_loadu_si512(header + (j / 2) * panel_words + 16 * (j % 2));
      const __m512 s = _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
      const __m512 m = _mm512_castsi512_ps(_mm512_and_si512(h, high));
      for (int r = 0; r < MR; ++r) {
        float* o = out[r] + 16 * j;
        _mm512_store_ps(o, _mm512_fmadd_ps(m, _mm512_set1_ps(xsum[r * a.groups + g]),
                                           _mm512_fmadd_ps(s, acc[r][j], _mm512_load_ps(o))));
      }
    }
  }
  const size_t last = sizeof(float) * static_cast<size_t>((NP - 1) * kCols + valid_last);
  for (int r = 0; r < MR; ++r) std::memcpy(y + r * ldy, out[r], last);
}

#endif  // SLUICE_INT4_AVX512

// The portable body: the same stream, the same integer sums, the same f32 chain per
// output with std::fma.
void PanelKernelScalar(const Activations& a, int64_t row0, int64_t rows, int64_t k,
                       int64_t group_size, const uint32_t* panel, float* y, int64_t ldy,
                       int64_t valid_cols) {
  for (int64_t r = 0; r < rows; ++r) {
    const int8_t* xq = a.q + (row0 + r) * a.ld_q;
    const float* xd = a.d + (row0 + r) * a.ld_d;
    const float* xsum = a.xsum + (row0 + r) * a.groups;
    float out[kCols] = {};
    const uint32_t* p = panel;
    for (int64_t g = 0; g < a.groups; ++g) {
      const int64_t k0 = g * group_size;
      const int64_t blocks = BlocksIn(std::min(group_size, k - k0));
      const uint32_t* header = p;
      p += kHeaderWords;
      float acc[kCols] = {};
      for (int64_t b = 0; b < blocks; b += kQBlock / kBlockK) {
        const int64_t n8 = std::min(kQBlock / kBlockK, blocks - b);
        int32_t sum[kCols] = {};
        for (int64_t i = 0; i < n8; ++i, p += kBlockWords) {
          const int8_t* xk = xq + k0 + (b + i) * kBlockK;
          for (int64_t c = 0; c < kCols; ++c) {
            int32_t s = 0;
            for (int t = 0; t < kBlockK; ++t)
              s += static_cast<int32_t>((p[c] >> (4 * t)) & 0xf) * xk[SlotInBlock8(t)];
            sum[c] += s;
          }
        }
        const float d = xd[(k0 + b * kBlockK) / kQBlock];
        for (int64_t c = 0; c < kCols; ++c) acc[c] = std::fma(d, static_cast<float>(sum[c]), acc[c]);
      }
      for (int64_t c = 0; c < kCols; ++c) {
        const float s = Bf16ToF32(static_cast<uint16_t>(header[c] & 0xffff));
        const float m = Bf16ToF32(static_cast<uint16_t>(header[c] >> 16));
        out[c] = std::fma(m, xsum[g], std::fma(s, acc[c], out[c]));
      }
    }
    std::memcpy(y + (row0 + r) * ldy, out, sizeof(float) * static_cast<size_t>(valid_cols));
  }
}

template <typename Kernel, int... R>
void WithRows(int64_t rows, Kernel&& kernel, std::integer_sequence<int, R...>) {
  ((rows == R + 1 ? kernel.template operator()<R + 1>() : void()), ...);
}

// Panels per kernel call for row groups of at most max_rows rows: enough independent
// chains at small M (see PanelKernel).
int64_t PanelsPerCall(int64_t max_rows, bool simd) {
  return simd ? (max_rows == 1 ? 4 : max_rows <= 2 ? 2 : 1) : 1;
}

#ifdef SLUICE_INT4_AVX512
template <bool kVnni>
void SimdPanels(const Activations& a, int64_t r, int64_t n_rows, const PackedInt4Weight& w,
                int64_t p0, int64_t p1, int64_t np, float* y, int64_t ldy) {
  const int64_t k = w.k(), gs = w.group_size();
  for (int64_t p = p0; p < p1;) {
    // A full chunk of np panels in one call; a short tail panel by panel.
    const int64_t step = p1 - p >= np ? np : 1;
    const int64_t valid_last = std::min(kCols, w.n() - (p + step - 1) * kCols);
    float* yp = y + r * ldy + p * kCols;
    auto call = [&]<int R>() {
      if constexpr (R == 1) {
        if (step == 4) {
          PanelKernel<kVnni, R, 4>(a, r, k, gs, w.panel(p), w.panel_words(), yp, ldy, valid_last);
          return;
        }
      }
      if constexpr (R <= 2) {
        if (step == 2) {
          PanelKernel<kVnni, R, 2>(a, r, k, gs, w.panel(p), w.panel_words(), yp, ldy, valid_last);
          return;
        }
      }
      PanelKernel<kVnni, R, 1>(a, r, k, gs, w.panel(p), w.panel_words(), yp, ldy, valid_last);
    };
    WithRows(n_rows, call, std::make_integer_sequence<int, kMaxRows>());
    p += step;
  }
}
#endif

// Rows [m0, m0 + rows) of a × panels [p0, p1): the rows cut into the fewest near-equal
// groups of at most kMaxRows, the panels np at a time (np = PanelsPerCall of the largest
// group), a short tail panel by panel. y points at row 0, column 0 of the output.
void PanelRange(const Activations& a, int64_t m0, int64_t rows, const PackedInt4Weight& w, int64_t p0,
                int64_t p1, float* y, int64_t ldy, Int4Kernel body) {
  const bool simd = body != Int4Kernel::kScalar;
  const int64_t row_groups = (rows + kMaxRows - 1) / kMaxRows;
  const int64_t np = PanelsPerCall((rows + row_groups - 1) / row_groups, simd);
  int64_t r = m0;
  for (int64_t rg = 0; rg < row_groups; ++rg) {
    const int64_t n_rows = rows / row_groups + (rg < rows % row_groups ? 1 : 0);
#ifdef SLUICE_INT4_AVX512
    if (body == Int4Kernel::kAvx512Bw) {
      SimdPanels<false>(a, r, n_rows, w, p0, p1, np, y, ldy);
      r += n_rows;
      continue;
    }
#ifdef SLUICE_INT4_VNNI
    if (body == Int4Kernel::kVnni) {
      SimdPanels<true>(a, r, n_rows, w, p0, p1, np, y, ldy);
      r += n_rows;
      continue;
    }
#endif
#endif
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t valid = std::min(kCols, w.n() - p * kCols);
      PanelKernelScalar(a, r, n_rows, w.k(), w.group_size(), w.panel(p), y + p * kCols, ldy, valid);
    }
    r += n_rows;
  }
}

}  // namespace

const char* Int4KernelName(Int4Kernel body) {
  switch (body) {
    case Int4Kernel::kAuto:
      return "auto";
    case Int4Kernel::kVnni:
      return "avx512-vnni";
    case Int4Kernel::kAvx512Bw:
      return "avx512bw";
    case Int4Kernel::kScalar:
      return "scalar";
  }
  return "?";
}

bool Int4KernelAvailable(Int4Kernel body) {
  switch (body) {
    case Int4Kernel::kVnni:
      return CpuHasVnni();
    case Int4Kernel::kAvx512Bw:
      return CpuHasAvx512Bw();
    default:
      return true;
  }
}

Int4Kernel Int4SelectedKernel(Int4Kernel requested) {
  if (requested == Int4Kernel::kAuto) requested = g_forced_kernel.load(std::memory_order_relaxed);
  if (requested == Int4Kernel::kAuto) requested = Int4Kernel::kVnni;
  if (requested == Int4Kernel::kVnni && !CpuHasVnni()) requested = Int4Kernel::kAvx512Bw;
  if (requested == Int4Kernel::kAvx512Bw && !CpuHasAvx512Bw()) requested = Int4Kernel::kScalar;
  return requested;
}

void SetInt4KernelForTesting(Int4Kernel body) { g_forced_kernel.store(body, std::memory_order_relaxed); }

bool Int4Avx512Available() { return CpuHasAvx512Bw(); }

void Int4GroupSums(const float* x, int64_t k, int64_t group_size, float* sums) {
  // The complete groups side by side (independent chains, each k ascending), then the
  // last partial one: the same sums as one group after the other, faster.
  const int64_t full = k / group_size;
  for (int64_t g = 0; g < full; ++g) sums[g] = 0;
  for (int64_t kk = 0; kk < group_size && full > 0; ++kk) {
    for (int64_t g = 0; g < full; ++g) sums[g] += x[g * group_size + kk];
  }
  if (full * group_size < k) {
    float s = 0;
    for (int64_t kk = full * group_size; kk < k; ++kk) s += x[kk];
    sums[full] = s;
  }
}

void Int4QuantizeRow(const float* x, int64_t k, int64_t group_size, int8_t* q, float* d, float* sums,
                     Int4Kernel body) {
  if (k <= 0) return;
  Int4GroupSums(x, k, group_size, sums);
#ifdef SLUICE_INT4_AVX512
  if (Int4SelectedKernel(body) != Int4Kernel::kScalar) {
    QuantizeRowAvx512(x, k, q, d);
    return;
  }
#endif
  QuantizeRowScalar(x, k, q, d);
}

void GemmF32Int4(const float* x, int64_t m, const PackedInt4Weight& w, float* y, int64_t ldy,
                 Int4Kernel body) {
  if (m <= 0) return;
  body = Int4SelectedKernel(body);
  const int64_t k = w.k(), kp = w.padded_k(), groups = w.num_groups(), gs = w.group_size();
  const int64_t blocks = Int4ActivationBlocks(k);
  // Per-row prologue (each row's values depend on that row alone): quantize, sum groups.
  static thread_local std::vector<int8_t> q;
  static thread_local std::vector<float> d, sums;
  q.resize(static_cast<size_t>(m * kp));
  d.resize(static_cast<size_t>(m * blocks));
  sums.resize(static_cast<size_t>(m * groups));
  int8_t* qp = q.data();
  float* dp = d.data();
  float* sp = sums.data();
#pragma omp parallel for schedule(static) if (m > 1)
  for (int64_t r = 0; r < m; ++r)
    Int4QuantizeRow(x + r * k, k, gs, qp + r * kp, dp + r * blocks, sp + r * groups, body);
  const Activations a{qp, kp, dp, blocks, sp, groups};
  const bool simd = body != Int4Kernel::kScalar;
  // Rows go in tiles whose activations stay in L2 while every panel streams past, each
  // tile cut into the fewest near-equal groups of at most kMaxRows (8 rows → 4 + 4).
  const int64_t tile = std::max<int64_t>(kMaxRows, (256 * 1024) / kp / kMaxRows * kMaxRows);
  for (int64_t m0 = 0; m0 < m; m0 += tile) {
    const int64_t rows = std::min(tile, m - m0);
    const int64_t row_groups = (rows + kMaxRows - 1) / kMaxRows;
    const int64_t np = PanelsPerCall((rows + row_groups - 1) / row_groups, simd);
    const int64_t chunks = (w.num_panels() + np - 1) / np;
    // Guided, as the bf16 GEMM: a core taken by the OS leaves its panels to the other.
#pragma omp parallel for schedule(guided)
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const int64_t p0 = chunk * np, p1 = std::min(w.num_panels(), p0 + np);
      PanelRange(a, m0, rows, w, p0, p1, y, ldy, body);
    }
  }
}

void GemmInt4Panels(const int8_t* xq, const float* xd, const float* xsum, int64_t m,
                    const PackedInt4Weight& w, int64_t p0, int64_t p1, float* y, int64_t ldy,
                    Int4Kernel body) {
  if (m <= 0 || p0 >= p1) return;
  const Activations a{xq, w.padded_k(), xd, Int4ActivationBlocks(w.k()), xsum, w.num_groups()};
  PanelRange(a, 0, m, w, p0, p1, y, ldy, Int4SelectedKernel(body));
}

absl::StatusOr<std::unique_ptr<Int4Linear>> Int4Linear::Create(const Tensor& weight,
                                                               int64_t group_size) {
  if (group_size != 32 && group_size != 64 && group_size != 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("int4 group size must be 32, 64 or 128, got ", group_size));
  }
  if (!weight.defined() || weight.rank() != 2 || weight.dim(0) <= 0 || weight.dim(1) <= 0) {
    return absl::InvalidArgumentError("int4 Linear: the weight must be a non-empty [N, K] tensor");
  }
  if (weight.device() != Device::kCpu) {
    return absl::InvalidArgumentError("int4 Linear: the weight must be on the CPU");
  }
  const DType dtype = weight.dtype();
  if (dtype != DType::kF32 && dtype != DType::kBF16 && dtype != DType::kF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("int4 Linear: weight dtype ", DTypeName(dtype), " (want f32, bf16 or f16)"));
  }
  PackedInt4Weight packed(weight.raw(), dtype, weight.dim(0), weight.dim(1), group_size);
  if (!packed.all_finite()) {
    return absl::InvalidArgumentError("int4 Linear: the weight holds NaN or infinite values");
  }
  return std::unique_ptr<Int4Linear>(
      new Int4Linear(weight.dim(1), weight.dim(0), dtype, std::move(packed)));
}

absl::Status Int4Linear::Run(const Tensor& x, Tensor* y) {
  GemmF32Int4(x.data<float>(), x.dim(0), packed_, y->data<float>(), out_features_);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Linear>> CreateInt4Linear(const Tensor& weight, int64_t group_size) {
  auto linear = Int4Linear::Create(weight, group_size);
  if (!linear.ok()) return linear.status();
  return std::unique_ptr<Linear>(std::move(*linear));
}

}  // namespace sluice::kernels::cpu
