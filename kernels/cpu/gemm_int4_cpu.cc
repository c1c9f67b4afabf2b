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
#endif

#include "absl/strings/str_cat.h"

namespace sluice::kernels::cpu {

namespace {

constexpr int64_t kCols = PackedInt4Weight::kPanelCols;
constexpr int64_t kBlockK = PackedInt4Weight::kBlockK;
constexpr int64_t kBlockWords = 2 * 16;   // two 64-byte lines of nibbles per 8 K
constexpr int64_t kHeaderWords = 2 * 16;  // two 64-byte lines of (s, m) pairs per group
constexpr int kMaxRows = 10;              // rows per kernel call sharing each weight load

int64_t BlocksIn(int64_t group_k) { return (group_k + kBlockK - 1) / kBlockK; }

// The neighbouring bf16 values toward −∞ and +∞ (finite inputs).
uint16_t Bf16NextDown(uint16_t b) {
  if (b == 0x0000) return 0x8001;       // +0 → the smallest negative subnormal
  return (b & 0x8000) ? b + 1 : b - 1;  // away from zero if negative, toward it if positive
}
uint16_t Bf16NextUp(uint16_t b) {
  if (b == 0x8000) b = 0x0000;  // −0 → +0, then up
  if ((b & 0x8000) == 0) return b + 1;
  return b - 1;
}
uint16_t Bf16AtMost(float v) {
  uint16_t b = F32ToBf16(v);
  while (Bf16ToF32(b) > v) b = Bf16NextDown(b);
  return b;
}
uint16_t Bf16AtLeast(float v) {
  uint16_t b = F32ToBf16(v);
  while (Bf16ToF32(b) < v) b = Bf16NextUp(b);
  return b;
}

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
        float lo = row[k0], hi = row[k0];
        for (int64_t kk = k0; kk < k0 + gk; ++kk) {
          lo = std::min(lo, row[kk]);
          hi = std::max(hi, row[kk]);
        }
        const uint16_t mb = std::isfinite(lo) ? Bf16AtMost(lo) : 0;
        const float m = Bf16ToF32(mb);
        const float range = hi - m;
        const uint16_t sb = (std::isfinite(range) && range > 0) ? Bf16AtLeast(range / 15.0f) : 0;
        const float s = Bf16ToF32(sb);
        uint32_t* group = dst + g * group_words();
        group[c] = static_cast<uint32_t>(sb) | (static_cast<uint32_t>(mb) << 16);
        uint32_t* blocks = group + kHeaderWords;
        for (int64_t kk = 0; kk < gk; ++kk) {
          int q = 0;
          if (s > 0)
            q = static_cast<int>(std::clamp(std::round((row[k0 + kk] - m) / s), 0.0f, 15.0f));
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

// What every panel kernel reads besides the weight: the activations padded to a
// multiple of 8 K (row stride kp, zeros past k) and each row's group sums
// xsum[r · groups + g] = Σ_{k∈g} x[r, k], summed k ascending.
struct Activations {
  const float* x;
  int64_t kp;
  const float* xsum;
  int64_t groups;
};

#ifdef SLUICE_INT4_AVX512

// The stream is prefetched 4 KB ahead, both lines of each block, as the bf16 kernel does.
inline void PrefetchBlock(const uint32_t* line) {
  constexpr int64_t kAhead = 4096 / sizeof(uint32_t);
  _mm_prefetch(reinterpret_cast<const char*>(line + kAhead), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(line + kAhead + 16), _MM_HINT_T0);
}

// MR rows × NP consecutive panels (one stream each). Per block of 8 K and panel: two
// loads, then per K two shifts, two vpermps and 2·MR FMAs. Several panels at once only
// add independent chains: at M = 1 one panel has 2 chains of dependent FMAs, too few to
// hide the FMA latency; 4 panels give 8. Each output's chain is the same whatever MR and
// NP. The outputs live in a stack tile touched once per group, so the 2·MR·NP group
// accumulators, the codes and the table fit in the 32 vector registers.
template <int MR, int NP>
void PanelKernel(const Activations& a, int64_t row0, int64_t k, int64_t group_size,
                 const uint32_t* panel0, int64_t panel_words, float* y, int64_t ldy,
                 int64_t valid_last) {
  const __m512 table = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  alignas(64) float out[MR][NP * kCols];
  for (int r = 0; r < MR; ++r) {
    for (int j = 0; j < 2 * NP; ++j) _mm512_store_ps(out[r] + 16 * j, _mm512_setzero_ps());
  }
  const float* x = a.x + row0 * a.kp;
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
    for (int64_t b = 0; b < blocks; ++b, p += kBlockWords) {
      __m512i v[2 * NP];
      for (int j = 0; j < NP; ++j) {
        PrefetchBlock(p + j * panel_words);
        v[2 * j] = _mm512_loadu_si512(p + j * panel_words);
        v[2 * j + 1] = _mm512_loadu_si512(p + j * panel_words + 16);
      }
      const float* xk = x + k0 + b * kBlockK;
#pragma GCC unroll 8
      for (int i = 0; i < kBlockK; ++i) {
        // vpermps indexes with the low 4 bits only: the shifted word is the index.
        __m512 q[2 * NP];
        for (int j = 0; j < 2 * NP; ++j)
          q[j] = _mm512_permutexvar_ps(_mm512_srli_epi32(v[j], 4 * i), table);
        for (int r = 0; r < MR; ++r) {
          const __m512 xb = _mm512_set1_ps(xk[r * a.kp + i]);
          for (int j = 0; j < 2 * NP; ++j) acc[r][j] = _mm512_fmadd_ps(xb, q[j], acc[r][j]);
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

// The portable body: the same stream, the same chain per output, with std::fma.
void PanelKernelScalar(const Activations& a, int64_t row0, int64_t rows, int64_t k,
                       int64_t group_size, const uint32_t* panel, float* y, int64_t ldy,
                       int64_t valid_cols) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = a.x + (row0 + r) * a.kp;
    const float* xsum = a.xsum + (row0 + r) * a.groups;
    float out[kCols] = {};
    const uint32_t* p = panel;
    for (int64_t g = 0; g < a.groups; ++g) {
      const int64_t k0 = g * group_size;
      const int64_t blocks = BlocksIn(std::min(group_size, k - k0));
      const uint32_t* header = p;
      p += kHeaderWords;
      float acc[kCols] = {};
      for (int64_t b = 0; b < blocks; ++b, p += kBlockWords) {
        for (int i = 0; i < kBlockK; ++i) {
          const float xv = x[k0 + b * kBlockK + i];
          for (int64_t c = 0; c < kCols; ++c) {
            acc[c] = std::fma(xv, static_cast<float>((p[c] >> (4 * i)) & 0xf), acc[c]);
          }
        }
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

// Panels per kernel call for row groups of at most max_rows rows: enough independent FMA
// chains at small M (see PanelKernel).
int64_t PanelsPerCall(int64_t max_rows, bool simd) {
  return simd ? (max_rows == 1 ? 4 : max_rows <= 3 ? 2 : 1) : 1;
}

// Rows [m0, m0 + rows) of a × panels [p0, p1): the rows cut into the fewest near-equal
// groups of at most kMaxRows, the panels np at a time (np = PanelsPerCall of the largest
// group), a short tail panel by panel. y points at row 0, column 0 of the output.
void PanelRange(const Activations& a, int64_t m0, int64_t rows, const PackedInt4Weight& w, int64_t p0,
                int64_t p1, float* y, int64_t ldy, bool simd) {
  const int64_t k = w.k(), gs = w.group_size();
  const int64_t row_groups = (rows + kMaxRows - 1) / kMaxRows;
  const int64_t np = PanelsPerCall((rows + row_groups - 1) / row_groups, simd);
  int64_t r = m0;
  for (int64_t rg = 0; rg < row_groups; ++rg) {
    const int64_t n_rows = rows / row_groups + (rg < rows % row_groups ? 1 : 0);
#ifdef SLUICE_INT4_AVX512
    if (simd) {
      for (int64_t p = p0; p < p1;) {
        // A full chunk of np panels in one call; a short tail panel by panel.
        const int64_t step = p1 - p >= np ? np : 1;
        const int64_t valid_last = std::min(kCols, w.n() - (p + step - 1) * kCols);
        float* yp = y + r * ldy + p * kCols;
        auto call = [&]<int R>() {
          if constexpr (R == 1) {
            if (step == 4) {
              PanelKernel<R, 4>(a, r, k, gs, w.panel(p), w.panel_words(), yp, ldy, valid_last);
              return;
            }
          }
          if constexpr (R <= 3) {
            if (step == 2) {
              PanelKernel<R, 2>(a, r, k, gs, w.panel(p), w.panel_words(), yp, ldy, valid_last);
              return;
            }
          }
          PanelKernel<R, 1>(a, r, k, gs, w.panel(p), w.panel_words(), yp, ldy, valid_last);
        };
        WithRows(n_rows, call, std::make_integer_sequence<int, kMaxRows>());
        p += step;
      }
      r += n_rows;
      continue;
    }
#endif
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t valid = std::min(kCols, w.n() - p * kCols);
      PanelKernelScalar(a, r, n_rows, k, gs, w.panel(p), y + p * kCols, ldy, valid);
    }
    r += n_rows;
  }
}

}  // namespace

bool Int4Avx512Available() {
#ifdef SLUICE_INT4_AVX512
  static const bool available = __builtin_cpu_supports("avx512f") &&
                                __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512vl");
  return available;
#else
  return false;
#endif
}

void Int4GroupSums(const float* x, int64_t k, int64_t group_size, float* sums) {
  for (int64_t g = 0, k0 = 0; k0 < k; ++g, k0 += group_size) {
    float s = 0;
    for (int64_t kk = k0; kk < std::min(k, k0 + group_size); ++kk) s += x[kk];
    sums[g] = s;
  }
}

void GemmF32Int4(const float* x, int64_t m, const PackedInt4Weight& w, float* y, int64_t ldy,
                 bool portable) {
  if (m <= 0) return;
  const int64_t k = w.k(), kp = w.padded_k(), groups = w.num_groups(), gs = w.group_size();
  // Per-row prologue (independent of the other rows): pad K to 8 and sum each group.
  static thread_local std::vector<float> padded, sums;
  const float* xs = x;
  if (kp != k) {
    padded.assign(static_cast<size_t>(m * kp), 0.0f);
    for (int64_t r = 0; r < m; ++r)
      std::memcpy(padded.data() + r * kp, x + r * k, sizeof(float) * k);
    xs = padded.data();
  }
  sums.resize(static_cast<size_t>(m * groups));
  for (int64_t r = 0; r < m; ++r) Int4GroupSums(xs + r * kp, k, gs, sums.data() + r * groups);
  const Activations a{xs, kp, sums.data(), groups};
  const bool simd = !portable && Int4Avx512Available();
  // Rows go in tiles whose activations stay in L2 while every panel streams past, each
  // tile cut into the fewest near-equal groups of at most kMaxRows (16 rows → 8 + 8).
  const int64_t tile = std::max<int64_t>(kMaxRows, (256 * 1024) / (4 * kp) / kMaxRows * kMaxRows);
  for (int64_t m0 = 0; m0 < m; m0 += tile) {
    const int64_t rows = std::min(tile, m - m0);
    const int64_t row_groups = (rows + kMaxRows - 1) / kMaxRows;
    const int64_t np = PanelsPerCall((rows + row_groups - 1) / row_groups, simd);
    const int64_t chunks = (w.num_panels() + np - 1) / np;
    // Guided, as the bf16 GEMM: a core taken by the OS leaves its panels to the other.
#pragma omp parallel for schedule(guided)
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const int64_t p0 = chunk * np, p1 = std::min(w.num_panels(), p0 + np);
      PanelRange(a, m0, rows, w, p0, p1, y, ldy, simd);
    }
  }
}

void GemmF32Int4Panels(const float* xp, const float* sums, int64_t m, const PackedInt4Weight& w, int64_t p0,
                       int64_t p1, float* y, int64_t ldy, bool portable) {
  if (m <= 0 || p0 >= p1) return;
  const Activations a{xp, w.padded_k(), sums, w.num_groups()};
  PanelRange(a, 0, m, w, p0, p1, y, ldy, !portable && Int4Avx512Available());
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
