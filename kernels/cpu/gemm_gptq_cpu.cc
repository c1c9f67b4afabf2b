#include "kernels/cpu/gemm_gptq_cpu.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/tensor.h"

#if defined(__x86_64__) || defined(__i386__)
// GCC 12's AVX-512 headers initialise undefined vectors as `__Y = __Y`, which trips
// -Wmaybe-uninitialized wherever an intrinsic is inlined.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#define SLUICE_GPTQ_X86 1
// Compiled for AVX-512 whatever the build's -march, chosen at run time.
#define SLUICE_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma")))
#endif

namespace sluice::kernels::cpu {

namespace {

constexpr int64_t kCols = PackedGptqWeight::kPanelCols;
constexpr int64_t kBlock = PackedGptqWeight::kBlockSlots;
constexpr int64_t kBlockWords = 2 * 16;   // two 64-byte lines of nibbles per 8 slots
constexpr int64_t kHeaderWords = 2 * 16;  // two 64-byte lines of (scale, 8 − zero) per group
constexpr int kMaxRows = 10;              // rows sharing each decoded weight vector (as int4)
constexpr uint32_t kPadNibble = 8;        // decodes to q − 8 = 0

int Nibble(int32_t word, int64_t i) {
  return static_cast<int>((static_cast<uint32_t>(word) >> (4 * i)) & 0xf);
}

}  // namespace

absl::StatusOr<PackedGptqWeight> PackedGptqWeight::Create(const std::vector<Rows>& parts, int64_t k,
                                                          int64_t groups,
                                                          const std::vector<int32_t>& group_of) {
  if (k <= 0 || k % 8 != 0 || groups <= 0 || static_cast<int64_t>(group_of.size()) != k ||
      parts.empty()) {
    return absl::InvalidArgumentError(
        "gptq weight: inputs must be a positive multiple of 8, one group each");
  }
  PackedGptqWeight w;
  w.k_ = k;
  for (const Rows& r : parts) {
    if (r.n <= 0 || r.source.col0 < 0 || r.source.col0 + r.n > r.source.n_total ||
        r.source.n_total % 8 != 0) {
      return absl::InvalidArgumentError("gptq weight: a row range outside its module");
    }
    w.n_ += r.n;
  }
  // Inputs sorted by group (stable), each non-empty group padded to a multiple of 8 slots.
  std::vector<std::vector<int32_t>> members(static_cast<size_t>(groups));
  for (int64_t kk = 0; kk < k; ++kk) {
    const int32_t g = group_of[kk];
    if (g < 0 || g >= groups) {
      return absl::InvalidArgumentError(
          absl::StrCat("gptq weight: g_idx[", kk, "] = ", g, " is outside [0, ", groups, ")"));
    }
    members[g].push_back(static_cast<int32_t>(kk));
  }
  std::vector<int32_t> source_group;  // the checkpoint group of each (non-empty) packed group
  w.group_slots_.push_back(0);
  w.input_slot_.assign(static_cast<size_t>(k), -1);
  w.input_group_.assign(static_cast<size_t>(k), -1);
  for (int64_t g = 0; g < groups; ++g) {
    if (members[g].empty()) continue;
    const int64_t begin = w.group_slots_.back();
    const int64_t slots = (static_cast<int64_t>(members[g].size()) + kBlock - 1) / kBlock * kBlock;
    for (int64_t i = 0; i < slots; ++i) {
      const int32_t input = i < static_cast<int64_t>(members[g].size()) ? members[g][i] : -1;
      w.slot_input_.push_back(input);
      if (input >= 0) {
        w.input_slot_[input] = begin + i;
        w.input_group_[input] = static_cast<int32_t>(source_group.size());
      }
    }
    source_group.push_back(static_cast<int32_t>(g));
    w.group_slots_.push_back(begin + slots);
  }
  bool identity = w.num_slots() == k;
  for (int64_t s = 0; identity && s < k; ++s) identity = w.slot_input_[s] == s;
  if (identity) w.slot_input_.clear();

  const int64_t packed_groups = static_cast<int64_t>(source_group.size());
  w.panel_words_ = packed_groups * kHeaderWords + (w.num_slots() / kBlock) * kBlockWords;
  w.data_.assign(static_cast<size_t>(w.num_panels() * w.panel_words_), 0);
  // The source of each packed column.
  std::vector<std::pair<const Source*, int64_t>> columns;  // (source, column in its module)
  for (const Rows& r : parts) {
    for (int64_t i = 0; i < r.n; ++i) columns.emplace_back(&r.source, r.source.col0 + i);
  }
  const std::vector<int32_t>& slot_input = w.slot_input_;
  std::atomic<bool> bad_scale{false};
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t p = 0; p < w.num_panels(); ++p) {
    uint32_t* dst = w.data_.data() + p * w.panel_words_;
    for (int64_t c = 0; c < kCols; ++c) {
      const int64_t packed_col = p * kCols + c;
      if (packed_col >= w.n_) break;
      const Source& src = *columns[packed_col].first;
      const int64_t col = columns[packed_col].second;
      uint32_t* group = dst;
      for (int64_t pg = 0; pg < packed_groups; ++pg) {
        const int64_t g = source_group[pg];
        const uint16_t s = src.scales[g * src.n_total + col];
        if (((s >> 10) & 0x1f) == 0x1f) bad_scale.store(true);
        const int32_t zero =
            Nibble(src.qzeros[g * (src.n_total / 8) + col / 8], col % 8) + src.zero_offset;
        const int16_t correction = static_cast<int16_t>(8 - zero);
        group[c] = static_cast<uint32_t>(s) |
                   (static_cast<uint32_t>(static_cast<uint16_t>(correction)) << 16);
        uint32_t* blocks = group + kHeaderWords;
        const int64_t s0 = w.group_slots_[pg], s1 = w.group_slots_[pg + 1];
        for (int64_t slot = s0; slot < s1; ++slot) {
          const int32_t input = slot_input.empty() ? static_cast<int32_t>(slot) : slot_input[slot];
          const uint32_t q = input < 0
                                 ? kPadNibble
                                 : static_cast<uint32_t>(Nibble(
                                       src.qweight[(input / 8) * src.n_total + col], input % 8));
          const int64_t i = slot - s0;
          blocks[(i / kBlock) * kBlockWords + c] |= q << (4 * (i % kBlock));
        }
        group = blocks + ((s1 - s0) / kBlock) * kBlockWords;
      }
    }
  }
  if (bad_scale.load()) return absl::InvalidArgumentError("gptq weight: a scale is not finite");
  return w;
}

float PackedGptqWeight::Dequantized(int64_t c, int64_t kk) const {
  const int64_t slot = input_slot_[kk];
  const int64_t pg = input_group_[kk];
  const uint32_t* group = panel(c / kCols);
  for (int64_t g = 0; g < pg; ++g)
    group += kHeaderWords + ((group_slots_[g + 1] - group_slots_[g]) / kBlock) * kBlockWords;
  const uint32_t header = group[c % kCols];
  const float s = F16ToF32(static_cast<uint16_t>(header & 0xffff));
  const int zero = 8 - static_cast<int16_t>(header >> 16);
  const int64_t i = slot - group_slots_[pg];
  const uint32_t word = group[kHeaderWords + (i / kBlock) * kBlockWords + c % kCols];
  const int q = static_cast<int>((word >> (4 * (i % kBlock))) & 0xf);
  return s * static_cast<float>(q - zero);
}

namespace {

// What every panel kernel reads besides the weight: the activations in slot order (row
// stride slots) and each row's group sums xsum[r · groups + g], summed slots ascending.
struct Activations {
  const float* x;
  int64_t slots;
  const float* xsum;
  int64_t groups;
  const int64_t* group_slots;
};

// The portable body: the same stream and the same chain per output, with std::fma.
void PanelKernelScalar(const Activations& a, int64_t row0, int64_t rows, const uint32_t* panel,
                       float* y, int64_t ldy, int64_t valid_cols) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = a.x + (row0 + r) * a.slots;
    const float* xsum = a.xsum + (row0 + r) * a.groups;
    float out[kCols] = {};
    const uint32_t* p = panel;
    for (int64_t g = 0; g < a.groups; ++g) {
      const int64_t s0 = a.group_slots[g], blocks = (a.group_slots[g + 1] - s0) / kBlock;
      const uint32_t* header = p;
      p += kHeaderWords;
      float acc[kCols] = {};
      for (int64_t b = 0; b < blocks; ++b, p += kBlockWords) {
        for (int i = 0; i < kBlock; ++i) {
          const float xv = x[s0 + b * kBlock + i];
          for (int64_t c = 0; c < kCols; ++c) {
            acc[c] = std::fma(xv, static_cast<float>(static_cast<int>((p[c] >> (4 * i)) & 0xf) - 8),
                              acc[c]);
          }
        }
      }
      for (int64_t c = 0; c < kCols; ++c) {
        const float s = F16ToF32(static_cast<uint16_t>(header[c] & 0xffff));
        const float m = s * static_cast<float>(static_cast<int16_t>(header[c] >> 16));
        out[c] = std::fma(m, xsum[g], std::fma(s, acc[c], out[c]));
      }
    }
    std::memcpy(y + (row0 + r) * ldy, out, sizeof(float) * static_cast<size_t>(valid_cols));
  }
}

#ifdef SLUICE_GPTQ_X86

// MR rows × NP consecutive panels, as the int4 kernel (cpu/gemm_int4_cpu.cc) with the
// table −8..7 and the (f16 scale, 8 − zero) header.
template <int MR, int NP>
SLUICE_TARGET_AVX512 void PanelKernelAvx512(const Activations& a, int64_t row0,
                                            const uint32_t* panel0, int64_t panel_words, float* y,
                                            int64_t ldy, int64_t valid_last) {
  const __m512 table = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
  alignas(64) float out[MR][NP * kCols];
  for (int r = 0; r < MR; ++r) {
    for (int j = 0; j < 2 * NP; ++j) _mm512_store_ps(out[r] + 16 * j, _mm512_setzero_ps());
  }
  const float* x = a.x + row0 * a.slots;
  const float* xsum = a.xsum + row0 * a.groups;
  const uint32_t* p = panel0;  // panel j's stream is at p + j·panel_words
  constexpr int64_t kAhead = 4096 / sizeof(uint32_t);
  for (int64_t g = 0; g < a.groups; ++g) {
    const int64_t s0 = a.group_slots[g], blocks = (a.group_slots[g + 1] - s0) / kBlock;
    const uint32_t* header = p;
    p += kHeaderWords;
    __m512 acc[MR][2 * NP];
    for (int r = 0; r < MR; ++r) {
      for (int j = 0; j < 2 * NP; ++j) acc[r][j] = _mm512_setzero_ps();
    }
    for (int64_t b = 0; b < blocks; ++b, p += kBlockWords) {
      __m512i v[2 * NP];
      for (int j = 0; j < NP; ++j) {
        const uint32_t* line = p + j * panel_words;
        _mm_prefetch(reinterpret_cast<const char*>(line + kAhead), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(line + kAhead + 16), _MM_HINT_T0);
        v[2 * j] = _mm512_loadu_si512(line);
        v[2 * j + 1] = _mm512_loadu_si512(line + 16);
      }
      const float* xk = x + s0 + b * kBlock;
#pragma GCC unroll 8
      for (int i = 0; i < kBlock; ++i) {
        // vpermps indexes with the low 4 bits only: the shifted word is the index.
        __m512 q[2 * NP];
        for (int j = 0; j < 2 * NP; ++j)
          q[j] = _mm512_permutexvar_ps(_mm512_srli_epi32(v[j], 4 * i), table);
        for (int r = 0; r < MR; ++r) {
          const __m512 xb = _mm512_set1_ps(xk[r * a.slots + i]);
          for (int j = 0; j < 2 * NP; ++j) acc[r][j] = _mm512_fmadd_ps(xb, q[j], acc[r][j]);
        }
      }
    }
    for (int j = 0; j < 2 * NP; ++j) {
      const __m512i h = _mm512_loadu_si512(header + (j / 2) * panel_words + 16 * (j % 2));
      const __m512 s = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h));
      const __m512 m = _mm512_mul_ps(s, _mm512_cvtepi32_ps(_mm512_srai_epi32(h, 16)));
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

template <typename Kernel, int... R>
void WithRows(int64_t rows, Kernel&& kernel, std::integer_sequence<int, R...>) {
  ((rows == R + 1 ? kernel.template operator()<R + 1>() : void()), ...);
}

#endif  // SLUICE_GPTQ_X86

}  // namespace

bool GptqAvx512Available() {
#ifdef SLUICE_GPTQ_X86
  static const bool available = __builtin_cpu_supports("avx512f") &&
                                __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512vl") &&
                                __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
  return available;
#else
  return false;
#endif
}

void GemmF32Gptq(const float* x, int64_t m, const PackedGptqWeight& w, float* y, int64_t ldy,
                 bool portable) {
  if (m <= 0 || w.n() == 0) return;
  const int64_t k = w.k(), slots = w.num_slots(), groups = w.num_groups();
  const int64_t* group_slots = w.group_slots().data();
  // Per-row prologue (independent of the other rows): the slot order and the group sums.
  static thread_local std::vector<float> gathered, sums;
  const float* xs = x;
  if (!w.slot_input().empty()) {
    gathered.resize(static_cast<size_t>(m * slots));
    const int32_t* input = w.slot_input().data();
    for (int64_t r = 0; r < m; ++r) {
      float* dst = gathered.data() + r * slots;
      const float* src = x + r * k;
      for (int64_t s = 0; s < slots; ++s) dst[s] = input[s] < 0 ? 0.f : src[input[s]];
    }
    xs = gathered.data();
  }
  sums.resize(static_cast<size_t>(m * groups));
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      float s = 0;
      for (int64_t i = group_slots[g]; i < group_slots[g + 1]; ++i) s += xs[r * slots + i];
      sums[r * groups + g] = s;
    }
  }
  const Activations a{xs, slots, sums.data(), groups, group_slots};
  const bool simd = !portable && GptqAvx512Available();
  // Rows go in tiles whose activations stay in L2 while every panel streams past (int4's).
  const int64_t tile =
      std::max<int64_t>(kMaxRows, (256 * 1024) / (4 * slots) / kMaxRows * kMaxRows);
  for (int64_t m0 = 0; m0 < m; m0 += tile) {
    const int64_t rows = std::min(tile, m - m0);
    const int64_t row_groups = (rows + kMaxRows - 1) / kMaxRows;
    const int64_t max_rows = (rows + row_groups - 1) / row_groups;
    const int64_t np = simd ? (max_rows == 1 ? 4 : max_rows <= 3 ? 2 : 1) : 1;
    const int64_t chunks = (w.num_panels() + np - 1) / np;
#pragma omp parallel for schedule(guided)
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const int64_t p0 = chunk * np, p1 = std::min(w.num_panels(), p0 + np);
      int64_t r = m0;
      for (int64_t rg = 0; rg < row_groups; ++rg) {
        const int64_t n_rows = rows / row_groups + (rg < rows % row_groups ? 1 : 0);
#ifdef SLUICE_GPTQ_X86
        if (simd) {
          const int64_t step = p1 - p0 == np ? np : 1;
          for (int64_t p = p0; p < p1; p += step) {
            const int64_t valid_last = std::min(kCols, w.n() - (p + step - 1) * kCols);
            float* yp = y + r * ldy + p * kCols;
            auto call = [&]<int R>() {
              if constexpr (R == 1) {
                if (step == 4) {
                  PanelKernelAvx512<R, 4>(a, r, w.panel(p), w.panel_words(), yp, ldy, valid_last);
                  return;
                }
              }
              if constexpr (R <= 3) {
                if (step == 2) {
                  PanelKernelAvx512<R, 2>(a, r, w.panel(p), w.panel_words(), yp, ldy, valid_last);
                  return;
                }
              }
              PanelKernelAvx512<R, 1>(a, r, w.panel(p), w.panel_words(), yp, ldy, valid_last);
            };
            WithRows(n_rows, call, std::make_integer_sequence<int, kMaxRows>());
          }
          r += n_rows;
          continue;
        }
#endif
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t valid = std::min(kCols, w.n() - p * kCols);
          PanelKernelScalar(a, r, n_rows, w.panel(p), y + p * kCols, ldy, valid);
        }
        r += n_rows;
      }
    }
  }
}

}  // namespace sluice::kernels::cpu
