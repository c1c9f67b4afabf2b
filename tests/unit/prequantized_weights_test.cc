// Pre-quantized checkpoints (kernels/prequantized_weight.h, engine/weights/checkpoint.h):
// the FP8 and GPTQ GEMMs against a double-precision reference of the same dequantized
// weights, the bodies against each other and across batches, row references through
// ConcatRows and row permutations, the fixture checkpoints (tests/fixtures/
// make_prequantized_fixtures.py) against transformers' logits of their dequantized
// weights, and every refusal: unsupported methods and parameters, mislabelled tensors,
// fused 3-D quantized experts, --quantization on a quantized checkpoint; and routed
// experts in those formats (GroupedExperts) against the per-expert loop.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/config/model_config.h"
#include "engine/model/causal_lm.h"
#include "engine/weights/checkpoint.h"
#include "gtest/gtest.h"
#include "kernels/cpu/gemm_fp8_cpu.h"
#include "kernels/cpu/gemm_gptq_cpu.h"
#include "kernels/fp8.h"
#include "kernels/moe.h"
#include "kernels/ops.h"
#include "kernels/prequantized_weight.h"
#include "tests/golden/fixture.h"

namespace sluice {
namespace {

namespace fs = std::filesystem;
using kernels::DType;
using kernels::Linear;
using kernels::PrequantizedWeight;
using kernels::Tensor;
using kernels::cpu::Fp8Kernel;
using kernels::cpu::GemmF32Fp8;
using kernels::cpu::GemmF32Gptq;
using kernels::cpu::PackedFp8Weight;
using kernels::cpu::PackedGptqWeight;

std::vector<float> RandomVector(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Random finite e4m3 codes (0x7f and 0xff are NaN).
std::vector<uint8_t> RandomCodes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> c(n);
  for (uint8_t& v : c) {
    do v = static_cast<uint8_t>(rng());
    while ((v & 0x7f) == 0x7f);
  }
  return c;
}

// |got − want| ≤ 2e-6 · Σ|x·w| + 1e-30 for each output: f32 summation of K products, in
// another order than the reference (blocks, then the block scale), is within a few ulps
// of the largest partial sum; 2e-6 is ~17 ulps of f32 relative to Σ|x·w|.
void ExpectCloseToReference(const std::vector<float>& got, const std::vector<double>& want,
                            const std::vector<double>& magnitude, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_LE(std::fabs(got[i] - want[i]), 2e-6 * magnitude[i] + 1e-30) << what << " at " << i;
  }
}

// ---------------------------------------------------------------------------------------
// FP8 kernel.

struct Fp8Case {
  int64_t n, k, block_n, block_k;
};
const Fp8Case kFp8Cases[] = {{1, 1, 128, 128},    {33, 130, 128, 128}, {64, 256, 128, 128},
                             {95, 300, 128, 128}, {7, 2049, 128, 128}, {200, 77, 64, 32},
                             {130, 129, 16, 128}};
const int64_t kRows[] = {1, 2, 3, 5, 11, 17};

struct Fp8Problem {
  std::vector<uint8_t> codes;
  std::vector<float> scales;
  PackedFp8Weight packed;
};

Fp8Problem MakeFp8(const Fp8Case& c, uint32_t seed) {
  Fp8Problem p;
  p.codes = RandomCodes(c.n * c.k, seed);
  const int64_t gn = (c.n + c.block_n - 1) / c.block_n, gk = (c.k + c.block_k - 1) / c.block_k;
  std::mt19937 rng(seed + 1);
  std::uniform_real_distribution<float> dist(1e-4f, 4e-3f);  // weight_scale_inv is amax / 448
  for (int64_t i = 0; i < gn * gk; ++i) p.scales.push_back(dist(rng));
  auto packed =
      PackedFp8Weight::FromBlocks(p.codes.data(), c.n, c.k, p.scales.data(), c.block_n, c.block_k);
  EXPECT_TRUE(packed.ok()) << packed.status();
  p.packed = *std::move(packed);
  return p;
}

TEST(Fp8GemmTest, PackingKeepsCodesAndBlockScales) {
  const Fp8Case c{130, 300, 128, 128};
  const Fp8Problem p = MakeFp8(c, 3);
  const int64_t gk = 3;
  for (int64_t n = 0; n < c.n; n += 7) {
    for (int64_t k = 0; k < c.k; k += 11) {
      ASSERT_EQ(p.packed.code(n, k), p.codes[n * c.k + k]);
      const float s = p.scales[(n / 128) * gk + k / 128];
      ASSERT_EQ(p.packed.scale(n, k / 128), s);
      // The reference weight: fp8 · scale_inv of its 128x128 block.
      ASSERT_EQ(p.packed.Dequantized(n, k), kernels::Fp8E4M3ToF32(p.codes[n * c.k + k]) * s);
    }
  }
}

TEST(Fp8GemmTest, EveryFiniteCodeWidensExactly) {
  // One row per code, a one-hot x per input: y = scale · fp8(code), one rounding.
  std::vector<uint8_t> codes;
  for (int v = 0; v < 256; ++v) {
    if ((v & 0x7f) != 0x7f) codes.push_back(static_cast<uint8_t>(v));
  }
  const int64_t n = static_cast<int64_t>(codes.size()), k = 16;
  std::vector<uint8_t> w(n * k, 0);
  for (int64_t r = 0; r < n; ++r) w[r * k + r % k] = codes[r];
  const std::vector<float> scale = {0.75f};
  auto packed = PackedFp8Weight::FromBlocks(w.data(), n, k, scale.data(), 1 << 20, 128);
  ASSERT_TRUE(packed.ok()) << packed.status();
  std::vector<float> x(k * k, 0.f);
  for (int64_t i = 0; i < k; ++i) x[i * k + i] = 1.f;
  for (Fp8Kernel kernel : {Fp8Kernel::kAuto, Fp8Kernel::kAvx2, Fp8Kernel::kScalar}) {
    std::vector<float> y(k * n);
    GemmF32Fp8(x.data(), k, *packed, y.data(), n, kernel);
    for (int64_t r = 0; r < n; ++r) {
      ASSERT_EQ(y[(r % k) * n + r], kernels::Fp8E4M3ToF32(codes[r]) * 0.75f)
          << "code " << int(codes[r]) << " kernel " << static_cast<int>(kernel);
    }
  }
}

TEST(Fp8GemmTest, NanCodesAndBadScalesAreRefused) {
  std::vector<uint8_t> w(4 * 16, 0x38);
  const std::vector<float> scale = {1.f};
  w[17] = 0xff;
  EXPECT_EQ(PackedFp8Weight::FromBlocks(w.data(), 4, 16, scale.data(), 128, 128).status().code(),
            absl::StatusCode::kInvalidArgument);
  w[17] = 0x38;
  const std::vector<float> inf = {INFINITY};
  EXPECT_EQ(PackedFp8Weight::FromBlocks(w.data(), 4, 16, inf.data(), 128, 128).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Fp8GemmTest, MatchesTheDequantizedReference) {
  uint32_t seed = 10;
  for (const Fp8Case& c : kFp8Cases) {
    const Fp8Problem p = MakeFp8(c, seed++);
    for (int64_t m : kRows) {
      const std::vector<float> x = RandomVector(m * c.k, seed++);
      std::vector<double> want(m * c.n), magnitude(m * c.n);
      for (int64_t r = 0; r < m; ++r) {
        for (int64_t n = 0; n < c.n; ++n) {
          double sum = 0, mag = 0;
          for (int64_t k = 0; k < c.k; ++k) {
            const double w = p.packed.Dequantized(n, k);
            sum += static_cast<double>(x[r * c.k + k]) * w;
            mag += std::fabs(static_cast<double>(x[r * c.k + k]) * w);
          }
          want[r * c.n + n] = sum;
          magnitude[r * c.n + n] = mag;
        }
      }
      std::vector<float> reference_bits;
      for (Fp8Kernel kernel :
           {Fp8Kernel::kAuto, Fp8Kernel::kAvx512, Fp8Kernel::kAvx2, Fp8Kernel::kScalar}) {
        std::vector<float> y(m * c.n, -1.f);
        GemmF32Fp8(x.data(), m, p.packed, y.data(), c.n, kernel);
        ExpectCloseToReference(y, want, magnitude, absl::StrCat("fp8 ", c.n, "x", c.k, " m=", m));
        // Every body computes the same chain: the same bits.
        if (reference_bits.empty()) reference_bits = y;
        ASSERT_EQ(0, std::memcmp(y.data(), reference_bits.data(), y.size() * sizeof(float)))
            << "kernel " << static_cast<int>(kernel) << " differs, " << c.n << "x" << c.k
            << " m=" << m;
      }
    }
  }
}

TEST(Fp8GemmTest, RowsAreBatchInvariant) {
  const Fp8Case c{95, 300, 128, 128};
  const Fp8Problem p = MakeFp8(c, 77);
  const int64_t m = 23;
  const std::vector<float> x = RandomVector(m * c.k, 78);
  std::vector<float> batch(m * c.n);
  GemmF32Fp8(x.data(), m, p.packed, batch.data(), c.n);
  for (int64_t r = 0; r < m; ++r) {
    std::vector<float> alone(c.n);
    GemmF32Fp8(x.data() + r * c.k, 1, p.packed, alone.data(), c.n);
    ASSERT_EQ(0, std::memcmp(alone.data(), batch.data() + r * c.n, c.n * sizeof(float)))
        << "row " << r;
  }
}

// ---------------------------------------------------------------------------------------
// GPTQ kernel.

// A GPTQ module as the checkpoint stores it, and its dequantization by the published
// formula (computed here from the raw tensors, independently of the packing).
struct GptqModule {
  int64_t n = 0, k = 0, group_size = 0, groups = 0;
  int32_t zero_offset = 0;
  std::vector<int32_t> qweight, qzeros, g_idx;
  std::vector<uint16_t> scales;  // f16 bits

  int Code(int64_t kk, int64_t nn) const {
    return (static_cast<uint32_t>(qweight[(kk / 8) * n + nn]) >> (4 * (kk % 8))) & 0xf;
  }
  int Zero(int64_t g, int64_t nn) const {
    return static_cast<int>(
               (static_cast<uint32_t>(qzeros[g * (n / 8) + nn / 8]) >> (4 * (nn % 8))) & 0xf) +
           zero_offset;
  }
  double Dequantized(int64_t nn, int64_t kk) const {
    const int64_t g = g_idx.empty() ? kk / group_size : g_idx[kk];
    return static_cast<double>(kernels::F16ToF32(scales[g * n + nn])) *
           (Code(kk, nn) - Zero(g, nn));
  }
};

// f16 bits of a positive normal value in [2^-12, 2^-4), random mantissa.
uint16_t RandomScale(std::mt19937& rng) {
  return static_cast<uint16_t>(((3 + rng() % 8) << 10) | (rng() & 0x3ff));
}

GptqModule MakeGptq(int64_t n, int64_t k, int64_t group_size, bool act_order, int32_t zero_offset,
                    uint32_t seed) {
  GptqModule m;
  m.n = n;
  m.k = k;
  m.group_size = group_size;
  m.groups = (k + group_size - 1) / group_size;
  m.zero_offset = zero_offset;
  std::mt19937 rng(seed);
  m.qweight.resize((k / 8) * n);
  for (int32_t& w : m.qweight) w = static_cast<int32_t>(rng());
  m.qzeros.resize(m.groups * (n / 8));
  for (int32_t& z : m.qzeros) z = static_cast<int32_t>(rng());
  m.scales.resize(m.groups * n);
  for (uint16_t& s : m.scales) s = RandomScale(rng);
  if (act_order) {
    std::vector<int32_t> perm(k);
    for (int64_t i = 0; i < k; ++i) perm[i] = static_cast<int32_t>(i);
    std::shuffle(perm.begin(), perm.end(), rng);
    m.g_idx.resize(k);
    for (int64_t i = 0; i < k; ++i) m.g_idx[perm[i]] = static_cast<int32_t>(i / group_size);
  }
  return m;
}

std::vector<int32_t> GroupOf(const GptqModule& m) {
  std::vector<int32_t> g(m.k);
  for (int64_t i = 0; i < m.k; ++i)
    g[i] = m.g_idx.empty() ? static_cast<int32_t>(i / m.group_size) : m.g_idx[i];
  return g;
}

absl::StatusOr<PackedGptqWeight> Pack(const GptqModule& m) {
  PackedGptqWeight::Source src{m.qweight.data(), m.qzeros.data(), m.scales.data(), m.n, 0,
                               m.zero_offset};
  return PackedGptqWeight::Create({{src, m.n}}, m.k, m.groups, GroupOf(m));
}

struct GptqCase {
  int64_t n, k, group_size;
  bool act_order;
  int32_t zero_offset;
};
const GptqCase kGptqCases[] = {{8, 8, 8, false, 1},        {40, 64, 32, false, 1},
                               {96, 256, 128, false, 0},   {72, 320, 64, true, 0},
                               {64, 200, 20, false, 1},    {136, 192, 64, true, 1},
                               {16, 1024, 1024, false, 1}, {24, 96, 40, true, 0}};

TEST(GptqGemmTest, MatchesThePublishedDequantization) {
  uint32_t seed = 100;
  for (const GptqCase& c : kGptqCases) {
    const GptqModule mod = MakeGptq(c.n, c.k, c.group_size, c.act_order, c.zero_offset, seed++);
    auto packed = Pack(mod);
    ASSERT_TRUE(packed.ok()) << packed.status();
    // The packing is lossless: every weight dequantizes as the checkpoint says.
    for (int64_t nn = 0; nn < c.n; ++nn) {
      for (int64_t kk = 0; kk < c.k; ++kk) {
        ASSERT_EQ(packed->Dequantized(nn, kk), static_cast<float>(mod.Dequantized(nn, kk)))
            << nn << "," << kk;
      }
    }
    // No gather when the slots are the inputs themselves.
    EXPECT_EQ(packed->slot_input().empty(), !c.act_order && c.group_size % 8 == 0)
        << c.n << "x" << c.k;
    for (int64_t m : kRows) {
      const std::vector<float> x = RandomVector(m * c.k, seed++);
      std::vector<double> want(m * c.n), magnitude(m * c.n);
      for (int64_t r = 0; r < m; ++r) {
        for (int64_t nn = 0; nn < c.n; ++nn) {
          double sum = 0, mag = 0;
          for (int64_t kk = 0; kk < c.k; ++kk) {
            const double w = mod.Dequantized(nn, kk);
            sum += static_cast<double>(x[r * c.k + kk]) * w;
            mag += std::fabs(static_cast<double>(x[r * c.k + kk]) * w);
          }
          want[r * c.n + nn] = sum;
          magnitude[r * c.n + nn] = mag;
        }
      }
      std::vector<float> simd(m * c.n, -1.f), portable(m * c.n, -2.f);
      GemmF32Gptq(x.data(), m, *packed, simd.data(), c.n);
      GemmF32Gptq(x.data(), m, *packed, portable.data(), c.n, /*portable=*/true);
      // The correction s·(8 − z)·Σx adds a second term whose rounding counts too: allow
      // the magnitudes of both (|Σ x·(q−8)·s| ≤ Σ|x w| + 8·s·Σ|x|, bounded by 3·Σ|x w| + ...).
      std::vector<double> bound(magnitude);
      for (int64_t r = 0; r < m; ++r) {
        for (int64_t nn = 0; nn < c.n; ++nn) {
          double extra = 0;
          for (int64_t kk = 0; kk < c.k; ++kk) {
            const int64_t g = mod.g_idx.empty() ? kk / c.group_size : mod.g_idx[kk];
            extra += 16 * std::fabs(x[r * c.k + kk]) * kernels::F16ToF32(mod.scales[g * c.n + nn]);
          }
          bound[r * c.n + nn] += extra;
        }
      }
      ExpectCloseToReference(simd, want, bound,
                             absl::StrCat("gptq ", c.n, "x", c.k, " g", c.group_size, " m=", m));
      ASSERT_EQ(0, std::memcmp(simd.data(), portable.data(), simd.size() * sizeof(float)))
          << "AVX-512 and scalar bodies differ: " << c.n << "x" << c.k << " m=" << m;
    }
  }
}

TEST(GptqGemmTest, RowsAreBatchInvariant) {
  const GptqModule mod = MakeGptq(72, 320, 64, true, 0, 5);
  auto packed = Pack(mod);
  ASSERT_TRUE(packed.ok());
  const int64_t m = 23;
  const std::vector<float> x = RandomVector(m * mod.k, 6);
  std::vector<float> batch(m * mod.n);
  GemmF32Gptq(x.data(), m, *packed, batch.data(), mod.n);
  for (int64_t r = 0; r < m; ++r) {
    std::vector<float> alone(mod.n);
    GemmF32Gptq(x.data() + r * mod.k, 1, *packed, alone.data(), mod.n);
    ASSERT_EQ(0, std::memcmp(alone.data(), batch.data() + r * mod.n, mod.n * sizeof(float)))
        << "row " << r;
  }
}

TEST(GptqGemmTest, GroupIndicesOutOfRangeAreRefused) {
  GptqModule mod = MakeGptq(8, 16, 8, true, 0, 9);
  mod.g_idx[3] = 2;  // 2 groups
  EXPECT_EQ(Pack(mod).status().code(), absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------
// Row references through the Linear.

Tensor F8Tensor(const std::vector<uint8_t>& codes, int64_t n, int64_t k) {
  Tensor t = *Tensor::Empty({n, k}, DType::kF8E4M3);
  std::memcpy(t.raw(), codes.data(), codes.size());
  return t;
}

template <typename T>
Tensor HostTensor(const std::vector<T>& v, std::vector<int64_t> shape, DType dtype) {
  Tensor t = *Tensor::Empty(std::move(shape), dtype);
  std::memcpy(t.raw(), v.data(), v.size() * sizeof(T));
  return t;
}

std::shared_ptr<PrequantizedWeight> Fp8Weight(const std::string& name, int64_t n, int64_t k,
                                              uint32_t seed, DType scale_dtype = DType::kF32) {
  auto w = std::make_shared<PrequantizedWeight>();
  w->format = PrequantizedWeight::Format::kFp8Block;
  w->name = name;
  w->rows = n;
  w->cols = k;
  w->block_rows = 128;
  w->block_cols = 128;
  w->codes = F8Tensor(RandomCodes(n * k, seed), n, k);
  const std::vector<float> s = RandomVector(((n + 127) / 128) * ((k + 127) / 128), seed + 1, 1e-3f);
  std::vector<float> scales(s.size());
  for (size_t i = 0; i < s.size(); ++i) scales[i] = std::fabs(s[i]) + 1e-4f;
  if (scale_dtype == DType::kBF16) {
    std::vector<uint16_t> b(scales.size());
    for (size_t i = 0; i < b.size(); ++i) b[i] = kernels::F32ToBf16(scales[i]);
    w->block_scales = HostTensor(b, {(n + 127) / 128, (k + 127) / 128}, DType::kBF16);
  } else {
    w->block_scales = HostTensor(scales, {(n + 127) / 128, (k + 127) / 128}, DType::kF32);
  }
  return w;
}

std::shared_ptr<PrequantizedWeight> GptqWeight(const std::string& name, const GptqModule& m) {
  auto w = std::make_shared<PrequantizedWeight>();
  w->format = PrequantizedWeight::Format::kGptqInt4;
  w->name = name;
  w->rows = m.n;
  w->cols = m.k;
  w->qweight = HostTensor(m.qweight, {m.k / 8, m.n}, DType::kI32);
  w->qzeros = HostTensor(m.qzeros, {m.groups, m.n / 8}, DType::kI32);
  w->scales = HostTensor(m.scales, {m.groups, m.n}, DType::kF16);
  if (!m.g_idx.empty()) w->g_idx = HostTensor(m.g_idx, {m.k}, DType::kI32);
  w->group_size = m.group_size;
  w->zero_offset = m.zero_offset;
  return w;
}

// The reference weight of row `row` of a registered weight, input k.
double ReferenceWeight(const PrequantizedWeight& w, int64_t row, int64_t k,
                       const GptqModule* gptq) {
  switch (w.format) {
    case PrequantizedWeight::Format::kFp8Block: {
      const int64_t gk = (w.cols + w.block_cols - 1) / w.block_cols;
      const int64_t i = (row / w.block_rows) * gk + k / w.block_cols;
      const float s = w.block_scales.dtype() == DType::kBF16
                          ? kernels::Bf16ToF32(w.block_scales.data<uint16_t>()[i])
                          : w.block_scales.data<float>()[i];
      return static_cast<double>(kernels::Fp8E4M3ToF32(w.codes.data<uint8_t>()[row * w.cols + k]) *
                                 s);
    }
    case PrequantizedWeight::Format::kGptqInt4:
      return gptq->Dequantized(row, k);
    case PrequantizedWeight::Format::kDense:
      return kernels::Bf16ToF32(w.dense.data<uint16_t>()[row * w.cols + k]);
  }
  return 0;
}

struct RowSource {
  const PrequantizedWeight* weight;
  int64_t row;
  const GptqModule* gptq;
};

void ExpectLinearMatches(Linear& linear, const std::vector<RowSource>& rows,
                         const std::string& what) {
  const int64_t n = linear.out_features(), k = linear.in_features();
  ASSERT_EQ(n, static_cast<int64_t>(rows.size()));
  for (int64_t m : {1, 4, 13}) {
    const std::vector<float> xv = RandomVector(m * k, static_cast<uint32_t>(m * 31 + n));
    Tensor x = HostTensor(xv, {m, k}, DType::kF32);
    Tensor y = *Tensor::Empty({m, n}, DType::kF32);
    ASSERT_TRUE(linear.Forward(x, &y).ok());
    for (int64_t r = 0; r < m; ++r) {
      for (int64_t c = 0; c < n; ++c) {
        double want = 0, mag = 0, zsum = 0;
        for (int64_t kk = 0; kk < k; ++kk) {
          const double w = ReferenceWeight(*rows[c].weight, rows[c].row, kk, rows[c].gptq);
          want += xv[r * k + kk] * w;
          mag += std::fabs(xv[r * k + kk] * w);
          zsum += std::fabs(xv[r * k + kk]);
        }
        // Dense bf16 rows: the plain kernel's f32 sums; quantized: as above (the GPTQ
        // correction term bounded by 16·max scale·Σ|x|, scales < 2^-4 here).
        const double bound = 4e-6 * mag + (rows[c].gptq != nullptr ? 4e-6 * zsum : 0) + 1e-30;
        ASSERT_LE(std::fabs(y.data<float>()[r * n + c] - want), bound)
            << what << " row " << r << " col " << c;
      }
    }
  }
}

TEST(PrequantizedLinearTest, StackedAndPermutedFp8RowsWithAPlainPart) {
  const int64_t k = 300;
  auto q = Fp8Weight("q", 200, k, 1);  // 2 row blocks of scales: 128 + 72
  auto kw = Fp8Weight("k", 64, k, 2, DType::kBF16);
  auto plain = std::make_shared<PrequantizedWeight>();
  plain->format = PrequantizedWeight::Format::kDense;
  plain->name = std::string(1, 'b');
  plain->rows = 5;
  plain->cols = k;
  std::vector<uint16_t> b(5 * k);
  const std::vector<float> bf = RandomVector(5 * k, 3, 0.05f);
  for (size_t i = 0; i < b.size(); ++i) b[i] = kernels::F32ToBf16(bf[i]);
  plain->dense = HostTensor(b, {5, k}, DType::kBF16);
  auto rq = kernels::MakeWeightRowRefs(q), rk = kernels::MakeWeightRowRefs(kw),
       rb = kernels::MakeWeightRowRefs(plain);
  ASSERT_TRUE(rq.ok() && rk.ok() && rb.ok()) << rq.status() << rk.status() << rb.status();
  // Reverse q's rows (a row permutation, as the attention output gate's de-interleave).
  Tensor reversed = *Tensor::Empty({200, k}, DType::kWeightRowRefs);
  for (int64_t r = 0; r < 200; ++r) {
    std::memcpy(static_cast<char*>(reversed.raw()) + r * k,
                static_cast<char*>(rq->raw()) + (199 - r) * k, k);
  }
  auto fused = kernels::ConcatRows({reversed, *rk, *rb});
  ASSERT_TRUE(fused.ok()) << fused.status();
  EXPECT_EQ(fused->dtype(), DType::kWeightRowRefs);
  auto linear = Linear::Create(*fused, kernels::Device::kCpu);
  ASSERT_TRUE(linear.ok()) << linear.status();
  std::vector<RowSource> rows;
  for (int64_t r = 0; r < 200; ++r) rows.push_back({q.get(), 199 - r, nullptr});
  for (int64_t r = 0; r < 64; ++r) rows.push_back({kw.get(), r, nullptr});
  for (int64_t r = 0; r < 5; ++r) rows.push_back({plain.get(), r, nullptr});
  ExpectLinearMatches(**linear, rows, "fp8 q(reversed)|k|plain");
  // Codes (1 byte), one f32 scale per row and 128 inputs, and the bf16 part (2 bytes).
  const size_t padded_fp8_rows = (264 + 31) / 32 * 32;
  EXPECT_EQ((*linear)->weight_bytes(), padded_fp8_rows * k + padded_fp8_rows * 3 * 4 + 5 * k * 2);
  // A plain tensor does not stack with references.
  Tensor plain_rows = *Tensor::Empty({5, k}, DType::kBF16);
  EXPECT_EQ(kernels::ConcatRows({*rk, plain_rows}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PrequantizedLinearTest, GptqModulesShareAPackingOnlyWithTheSameGroups) {
  // q and k share the act-order permutation (as AutoGPTQ gives modules of one input), v has
  // its own; all three stack into one Linear.
  GptqModule qm = MakeGptq(64, 192, 64, true, 1, 11);
  GptqModule km = MakeGptq(32, 192, 64, true, 1, 12);
  km.g_idx = qm.g_idx;
  const GptqModule vm = MakeGptq(40, 192, 64, true, 0, 13);
  auto q = GptqWeight("q", qm), kw = GptqWeight("k", km), v = GptqWeight("v", vm);
  auto fused = kernels::ConcatRows({*kernels::MakeWeightRowRefs(q), *kernels::MakeWeightRowRefs(kw),
                                    *kernels::MakeWeightRowRefs(v)});
  ASSERT_TRUE(fused.ok()) << fused.status();
  auto linear = Linear::Create(*fused, kernels::Device::kCpu);
  ASSERT_TRUE(linear.ok()) << linear.status();
  std::vector<RowSource> rows;
  for (int64_t r = 0; r < 64; ++r) rows.push_back({q.get(), r, &qm});
  for (int64_t r = 0; r < 32; ++r) rows.push_back({kw.get(), r, &km});
  for (int64_t r = 0; r < 40; ++r) rows.push_back({v.get(), r, &vm});
  ExpectLinearMatches(**linear, rows, "gptq q|k|v");
  EXPECT_EQ((*linear)->quantization(),
            kernels::WeightQuantization::kNone);  // as the checkpoint has it
}

TEST(PrequantizedLinearTest, RefusesRequantizationAndReleasedWeights) {
  auto w = Fp8Weight("w", 32, 64, 5);
  auto refs = kernels::MakeWeightRowRefs(w);
  ASSERT_TRUE(refs.ok());
  kernels::LinearOptions int8;
  int8.quantization = kernels::WeightQuantization::kInt8;
  EXPECT_EQ(Linear::Create(*refs, kernels::Device::kCpu, int8).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // No CUDA body yet: a clear UNIMPLEMENTED.
  EXPECT_EQ(Linear::Create(*refs, kernels::Device::kCuda).status().code(),
            absl::StatusCode::kUnimplemented);
  // Other ops refuse the dtype.
  EXPECT_FALSE(kernels::ToF32(*refs, kernels::Device::kCpu).ok());
  w.reset();  // the registry holds weights weakly
  EXPECT_EQ(Linear::Create(*refs, kernels::Device::kCpu).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // Bytes that are not references.
  Tensor junk = *Tensor::Zeros({2, 64}, DType::kWeightRowRefs);
  EXPECT_EQ(Linear::Create(junk, kernels::Device::kCpu).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------
// Routed experts in a pre-quantized checkpoint's formats (GroupedExperts over row references).

// Row references to a weight (kept alive by `keep`).
Tensor Refs(std::shared_ptr<PrequantizedWeight> w, std::vector<std::shared_ptr<PrequantizedWeight>>* keep) {
  keep->push_back(w);
  auto refs = kernels::MakeWeightRowRefs(w);
  EXPECT_TRUE(refs.ok()) << refs.status();
  return *refs;
}

std::shared_ptr<PrequantizedWeight> DenseWeight(const std::string& name, int64_t n, int64_t k, uint32_t seed) {
  auto w = std::make_shared<PrequantizedWeight>();
  w->format = PrequantizedWeight::Format::kDense;
  w->name = name;
  w->rows = n;
  w->cols = k;
  std::vector<uint16_t> b(n * k);
  const std::vector<float> f = RandomVector(n * k, seed, 0.05f);
  for (size_t i = 0; i < b.size(); ++i) b[i] = kernels::F32ToBf16(f[i]);
  w->dense = HostTensor(b, {n, k}, DType::kBF16);
  return w;
}

// What MoeFeedForward ran per expert before GroupedExperts: gather, the expert's two
// Linears, SiluMul, ScaledScatterAdd, experts ascending.
Tensor PerExpertLoop(int64_t tokens, int64_t hidden, int64_t inter, int64_t k,
                     const std::vector<std::unique_ptr<Linear>>& gate_up,
                     const std::vector<std::unique_ptr<Linear>>& down, const Tensor& x,
                     const Tensor& chosen, const Tensor& weights) {
  Tensor out = *Tensor::Zeros({tokens, hidden}, DType::kF32);
  for (size_t e = 0; e < gate_up.size(); ++e) {
    std::vector<int32_t> rows;
    std::vector<float> scales;
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t i = 0; i < k; ++i) {
        if (chosen.data<int32_t>()[t * k + i] != static_cast<int32_t>(e)) continue;
        rows.push_back(static_cast<int32_t>(t));
        scales.push_back(weights.data<float>()[t * k + i]);
      }
    }
    const int64_t n = static_cast<int64_t>(rows.size());
    if (n == 0) continue;
    Tensor row_ids = HostTensor(rows, {n}, DType::kI32);
    Tensor row_scale = HostTensor(scales, {n}, DType::kF32);
    Tensor xe = *Tensor::Empty({n, hidden}, DType::kF32);
    EXPECT_TRUE(kernels::GatherRows(x, row_ids, &xe).ok());
    Tensor gu = *Tensor::Empty({n, 2 * inter}, DType::kF32);
    EXPECT_TRUE(gate_up[e]->Forward(xe, &gu).ok());
    Tensor act = *Tensor::Empty({n, inter}, DType::kF32);
    EXPECT_TRUE(kernels::SiluMul(gu, &act).ok());
    Tensor ye = *Tensor::Empty({n, hidden}, DType::kF32);
    EXPECT_TRUE(down[e]->Forward(act, &ye).ok());
    EXPECT_TRUE(kernels::ScaledScatterAdd(ye, row_ids, row_scale, &out).ok());
  }
  return out;
}

// Routes `tokens` rows of `logits` (top-k, renormalized) and runs `experts` on them.
Tensor RunGrouped(kernels::GroupedExperts& experts, const Tensor& x, const Tensor& logits, int64_t k,
                  Tensor* chosen_out = nullptr, Tensor* weights_out = nullptr) {
  const int64_t tokens = x.dim(0), e = experts.num_experts();
  Tensor chosen = *Tensor::Empty({tokens, k}, DType::kI32);
  Tensor weights = *Tensor::Empty({tokens, k}, DType::kF32);
  EXPECT_TRUE(kernels::RouteTopK(logits, k, true, &chosen, &weights).ok());
  Tensor offsets = *Tensor::Empty({e + 1}, DType::kI32);
  Tensor rows = *Tensor::Empty({tokens * k}, DType::kI32);
  Tensor sorted = *Tensor::Empty({tokens * k}, DType::kF32);
  EXPECT_TRUE(kernels::AlignRowsByExpert(chosen, weights, &offsets, &rows, &sorted).ok());
  Tensor out = *Tensor::Empty({tokens, experts.hidden()}, DType::kF32);
  const absl::Status status = experts.Forward(x, offsets, rows, sorted, &out);
  EXPECT_TRUE(status.ok()) << status;
  if (chosen_out != nullptr) *chosen_out = chosen;
  if (weights_out != nullptr) *weights_out = weights;
  return out;
}

TEST(PrequantizedGroupedExpertsTest, Fp8ExpertsAreThePerExpertLoopBitForBitAndBatchInvariant) {
  // H = 160 (a partial second K block of scales), I = 48; expert 1 stacks an FP8 gate
  // with a bf16 up (modules_to_not_convert inside an expert), expert 3 is all plain bf16
  // tensors (a whole expert kept out of the conversion).
  const int64_t experts = 5, hidden = 160, inter = 48, k = 2, tokens = 13;
  std::vector<std::shared_ptr<PrequantizedWeight>> keep;
  std::vector<Tensor> gate_up, down;
  for (int64_t e = 0; e < experts; ++e) {
    const uint32_t seed = 40 + 10 * static_cast<uint32_t>(e);
    if (e == 3) {
      auto g = DenseWeight("e3.gate_up", 2 * inter, hidden, seed);
      auto d = DenseWeight("e3.down", hidden, inter, seed + 1);
      gate_up.push_back(g->dense);
      down.push_back(d->dense);
      continue;
    }
    Tensor gate = Refs(Fp8Weight(absl::StrCat("e", e, ".gate"), inter, hidden, seed), &keep);
    Tensor up = e == 1 ? Refs(DenseWeight("e1.up", inter, hidden, seed + 1), &keep)
                       : Refs(Fp8Weight(absl::StrCat("e", e, ".up"), inter, hidden, seed + 1,
                                        e % 2 == 0 ? DType::kBF16 : DType::kF32),
                              &keep);
    auto gu = kernels::ConcatRows({gate, up});
    ASSERT_TRUE(gu.ok()) << gu.status();
    EXPECT_EQ(gu->dtype(), DType::kWeightRowRefs);
    gate_up.push_back(*gu);
    down.push_back(Refs(Fp8Weight(absl::StrCat("e", e, ".down"), hidden, inter, seed + 2), &keep));
  }
  std::vector<std::unique_ptr<Linear>> gu_linear, down_linear;
  size_t total_bytes = 0;
  for (int64_t e = 0; e < experts; ++e) {
    gu_linear.push_back(*Linear::Create(gate_up[e], kernels::Device::kCpu, kernels::LinearOptions{}));
    down_linear.push_back(*Linear::Create(down[e], kernels::Device::kCpu, kernels::LinearOptions{}));
    total_bytes += gu_linear[e]->weight_bytes() + down_linear[e]->weight_bytes();
  }
  auto grouped = kernels::GroupedExperts::Create(gate_up, down, kernels::Device::kCpu, kernels::LinearOptions{});
  ASSERT_TRUE(grouped.ok()) << grouped.status();
  EXPECT_EQ((*grouped)->quantization(), kernels::WeightQuantization::kNone);  // as the checkpoint has it
  // The packed bytes, not 2 bytes a weight: FP8 codes, a 4-byte scale per row and 128
  // inputs (rows padded to 32), the bf16 parts at 2 bytes; mixed experts: the mean.
  EXPECT_EQ((*grouped)->ExpertWeightBytes(), (total_bytes + experts / 2) / experts);
  const size_t fp8_expert = 96 * hidden + 96 * 2 * 4 + 160 * inter + 160 * 4;  // expert 0
  EXPECT_EQ(gu_linear[0]->weight_bytes() + down_linear[0]->weight_bytes(), fp8_expert);

  const Tensor x = HostTensor(RandomVector(tokens * hidden, 5), {tokens, hidden}, DType::kF32);
  const Tensor logits = HostTensor(RandomVector(tokens * experts, 6, 3.f), {tokens, experts}, DType::kF32);
  Tensor chosen, weights;
  const Tensor out = RunGrouped(**grouped, x, logits, k, &chosen, &weights);
  const Tensor again = RunGrouped(**grouped, x, logits, k);  // on the grown workspace
  const Tensor ref = PerExpertLoop(tokens, hidden, inter, k, gu_linear, down_linear, x, chosen, weights);
  std::vector<int> used(experts, 0);
  for (int64_t i = 0; i < tokens * k; ++i) used[chosen.data<int32_t>()[i]] = 1;
  EXPECT_EQ(std::count(used.begin(), used.end(), 1), experts) << "every expert, FP8 and bf16, is exercised";
  EXPECT_EQ(0, std::memcmp(out.raw(), ref.raw(), out.bytes())) << "grouped FP8 experts vs the per-expert loop";
  EXPECT_EQ(0, std::memcmp(out.raw(), again.raw(), out.bytes()));
  double norm = 0;
  for (int64_t i = 0; i < out.numel(); ++i) norm += std::fabs(out.data<float>()[i]);
  EXPECT_GT(norm, 0);
  // Batch invariance: each row alone gives the bits it has in the batch of 13.
  for (int64_t t = 0; t < tokens; ++t) {
    const Tensor alone = RunGrouped(**grouped, x.Rows(t, 1), logits.Rows(t, 1), k);
    EXPECT_EQ(0, std::memcmp(alone.raw(), out.data<float>() + t * hidden, hidden * sizeof(float)))
        << "row " << t;
  }

  // Re-quantizing pre-quantized experts is refused, naming the dtype.
  for (auto q : {kernels::WeightQuantization::kInt8, kernels::WeightQuantization::kInt4}) {
    kernels::LinearOptions options;
    options.quantization = q;
    auto requantized = kernels::GroupedExperts::Create(gate_up, down, kernels::Device::kCpu, options);
    EXPECT_EQ(requantized.status().code(), absl::StatusCode::kFailedPrecondition) << requantized.status();
  }
  // An expert whose weight cannot be packed fails Create with its number.
  auto released = Fp8Weight("released.down", hidden, inter, 99);
  std::vector<Tensor> bad_down = down;
  bad_down[4] = *kernels::MakeWeightRowRefs(released);
  released.reset();
  auto bad = kernels::GroupedExperts::Create(gate_up, bad_down, kernels::Device::kCpu, kernels::LinearOptions{});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(bad.status().message().find("expert 4 down"), std::string::npos) << bad.status();
}

// ---------------------------------------------------------------------------------------
// Configs.

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

nlohmann::json FixtureConfig(const std::string& name) {
  return nlohmann::json::parse(ReadFile(testing::ModelFixtureDir(name) + "/config.json"));
}

TEST(PrequantizedConfigTest, PublishedFormatsParse) {
  auto fp8 = engine::ModelConfig::FromJson(FixtureConfig("qwen3_fp8").dump());
  ASSERT_TRUE(fp8.ok()) << fp8.status();
  EXPECT_EQ(fp8->quantization.method, engine::QuantizationConfig::Method::kFp8Block);
  EXPECT_EQ(fp8->quantization.FormatName(), "fp8_block128");
  auto gptq = engine::ModelConfig::FromJson(FixtureConfig("qwen3_gptq").dump());
  ASSERT_TRUE(gptq.ok()) << gptq.status();
  EXPECT_EQ(gptq->quantization.FormatName(), "gptq_int4_g64");
  EXPECT_EQ(gptq->quantization.zero_offset, 1);  // v1: zeros stored minus one
  auto act = engine::ModelConfig::FromJson(FixtureConfig("qwen3_gptq_act_order").dump());
  ASSERT_TRUE(act.ok()) << act.status();
  EXPECT_EQ(act->quantization.FormatName(), "gptq_int4_g64_act_order");
  EXPECT_EQ(act->quantization.zero_offset, 0);  // gptq_v2
  // GPTQModel's "format" name, and group_size -1 (one group per row).
  nlohmann::json j = FixtureConfig("qwen3_gptq");
  j["quantization_config"].erase("checkpoint_format");
  j["quantization_config"]["format"] = "gptq_v2";
  j["quantization_config"]["group_size"] = -1;
  auto other = engine::ModelConfig::FromJson(j.dump());
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ(other->quantization.zero_offset, 0);
  EXPECT_EQ(other->quantization.group_size, 0);
}

TEST(PrequantizedConfigTest, UnsupportedMethodsAndParametersAreRefusedByName) {
  const nlohmann::json base = FixtureConfig("qwen3_bf16");
  struct Refusal {
    nlohmann::json quantization;
    std::string named;
    absl::StatusCode code;
  };
  const Refusal cases[] = {
      {{{"quant_method", "awq"}, {"bits", 4}}, "\"awq\"", absl::StatusCode::kUnimplemented},
      {{{"quant_method", "bitsandbytes"}}, "\"bitsandbytes\"", absl::StatusCode::kUnimplemented},
      {{{"quant_method", "compressed-tensors"}},
       "\"compressed-tensors\"",
       absl::StatusCode::kUnimplemented},
      {{{"quant_method", "fbgemm_fp8"}}, "\"fbgemm_fp8\"", absl::StatusCode::kUnimplemented},
      {{{"quant_method", "gptq"}, {"bits", 8}, {"group_size", 128}},
       "bits 8",
       absl::StatusCode::kUnimplemented},
      {{{"quant_method", "gptq"}, {"bits", 3}}, "bits 3", absl::StatusCode::kUnimplemented},
      {{{"quant_method", "gptq"}, {"bits", 4}, {"checkpoint_format", "marlin"}},
       "\"marlin\"",
       absl::StatusCode::kUnimplemented},
      {{{"quant_method", "gptq"}, {"bits", 4}, {"dynamic", {{"-:.*mlp.*", {}}}}},
       "dynamic",
       absl::StatusCode::kUnimplemented},
      {{{"quant_method", "gptq"}}, "bits", absl::StatusCode::kInvalidArgument},
      {{{"quant_method", "fp8"}, {"fmt", "e4m3"}},
       "weight_block_size",
       absl::StatusCode::kUnimplemented},
      {{{"quant_method", "fp8"}, {"weight_block_size", nullptr}},
       "block scales",
       absl::StatusCode::kUnimplemented},
      {{{"quant_method", "fp8"}, {"fmt", "e5m2"}, {"weight_block_size", {128, 128}}},
       "e5m2",
       absl::StatusCode::kUnimplemented},
      {{{"quant_method", "fp8"},
        {"activation_scheme", "static"},
        {"weight_block_size", {128, 128}}},
       "static",
       absl::StatusCode::kUnimplemented},
      {{{"quant_method", "fp8"}, {"scale_fmt", "ue8m0"}, {"weight_block_size", {128, 128}}},
       "ue8m0",
       absl::StatusCode::kUnimplemented},
      {{{"quant_method", "fp8"},
        {"modules_to_convert", {"embed_tokens"}},
        {"weight_block_size", {128, 128}}},
       "modules_to_convert",
       absl::StatusCode::kUnimplemented},
      {{{"quant_method", "fp8"}, {"weight_block_size", {128}}},
       "weight_block_size",
       absl::StatusCode::kInvalidArgument},
      {{{"bits", 4}}, "quant_method", absl::StatusCode::kInvalidArgument},
  };
  for (const Refusal& r : cases) {
    nlohmann::json j = base;
    j["quantization_config"] = r.quantization;
    auto config = engine::ModelConfig::FromJson(j.dump());
    ASSERT_FALSE(config.ok()) << r.quantization.dump();
    EXPECT_EQ(config.status().code(), r.code) << config.status();
    EXPECT_NE(config.status().message().find(r.named), std::string::npos) << config.status();
  }
  nlohmann::json j = base;
  j["compression_config"] = {{"format", "float-quantized"}};
  auto config = engine::ModelConfig::FromJson(j.dump());
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(config.status().message().find("compressed-tensors"), std::string::npos)
      << config.status();
}

// ---------------------------------------------------------------------------------------
// Checkpoints.

// A scratch copy of a fixture whose config.json `edit` changes (and whose extra tensors
// `extra` replaces model.safetensors, when given).
class ScratchCheckpoint {
 public:
  ScratchCheckpoint(const std::string& fixture, const std::function<void(nlohmann::json&)>& edit) {
    dir_ =
        (fs::temp_directory_path() / absl::StrCat("sluice_prequant_", ::getpid(), "_", counter_++))
            .string();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    const std::string src = testing::ModelFixtureDir(fixture);
    fs::copy_file(src + "/model.safetensors", dir_ + "/model.safetensors");
    nlohmann::json config = FixtureConfig(fixture);
    edit(config);
    std::ofstream(dir_ + "/config.json") << config.dump();
  }
  ~ScratchCheckpoint() { fs::remove_all(dir_); }
  const std::string& dir() const { return dir_; }

 private:
  static inline int counter_ = 0;
  std::string dir_;
};

// Writes a safetensors file of the given (name, dtype, shape, bytes) tensors.
void WriteSafetensors(
    const std::string& path,
    const std::vector<std::tuple<std::string, std::string, std::vector<int64_t>, std::string>>&
        tensors) {
  nlohmann::json header = nlohmann::json::object();
  std::string data;
  for (const auto& [name, dtype, shape, bytes] : tensors) {
    header[name] = {{"dtype", dtype},
                    {"shape", shape},
                    {"data_offsets", {data.size(), data.size() + bytes.size()}}};
    data += bytes;
  }
  std::string h = header.dump();
  while (h.size() % 8 != 0) h += ' ';
  const uint64_t n = h.size();
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << h << data;
}

TEST(PrequantizedCheckpointTest, MislabelledCheckpointsAreNeverReadAsAnotherFormat) {
  // GPTQ tensors under a config without quantization_config.
  {
    ScratchCheckpoint c("qwen3_gptq", [](nlohmann::json& j) { j.erase("quantization_config"); });
    auto model = engine::CausalLm::Load(c.dir(), kernels::Device::kCpu);
    ASSERT_FALSE(model.ok());
    EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(model.status().message().find("qweight"), std::string::npos) << model.status();
  }
  // FP8 tensors declared as GPTQ.
  {
    ScratchCheckpoint c("qwen3_fp8", [](nlohmann::json& j) {
      j["quantization_config"] = {{"quant_method", "gptq"}, {"bits", 4}, {"group_size", 128}};
    });
    auto model = engine::CausalLm::Load(c.dir(), kernels::Device::kCpu);
    ASSERT_FALSE(model.ok());
    EXPECT_NE(model.status().message().find("weight_scale_inv"), std::string::npos)
        << model.status();
  }
  // A bf16 checkpoint declared FP8.
  {
    ScratchCheckpoint c("qwen3_bf16", [](nlohmann::json& j) {
      j["quantization_config"] = {{"quant_method", "fp8"}, {"weight_block_size", {128, 128}}};
    });
    auto model = engine::CausalLm::Load(c.dir(), kernels::Device::kCpu);
    ASSERT_FALSE(model.ok());
    EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(model.status().message().find("not an fp8 checkpoint"), std::string::npos)
        << model.status();
  }
  // The config's block size disagrees with the stored scale grid.
  {
    ScratchCheckpoint c("qwen3_fp8", [](nlohmann::json& j) {
      j["quantization_config"]["weight_block_size"] = {64, 64};
    });
    auto model = engine::CausalLm::Load(c.dir(), kernels::Device::kCpu);
    ASSERT_FALSE(model.ok());
    EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(model.status().message().find("weight_scale_inv must be"), std::string::npos)
        << model.status();
  }
  // The config's group size disagrees with the stored scales.
  {
    ScratchCheckpoint c("qwen3_gptq",
                        [](nlohmann::json& j) { j["quantization_config"]["group_size"] = 128; });
    auto model = engine::CausalLm::Load(c.dir(), kernels::Device::kCpu);
    ASSERT_FALSE(model.ok());
    EXPECT_NE(model.status().message().find("group size 128"), std::string::npos) << model.status();
  }
}

TEST(PrequantizedCheckpointTest, FP8WeightsNeedTheirScalesAndFusedQuantizedExpertsAreRefused) {
  const std::string dir =
      (fs::temp_directory_path() / absl::StrCat("sluice_prequant_experts_", ::getpid())).string();
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir + "/config.json")
      << R"({"model_type": "qwen3", "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}})";
  const std::string codes(32 * 64, '\x38');
  const std::string scale(4, '\0');
  WriteSafetensors(
      dir + "/model.safetensors",
      {{"model.layers.0.mlp.experts.0.gate_proj.weight", "F8_E4M3", {32, 64}, codes},
       {"model.layers.0.mlp.experts.0.gate_proj.weight_scale_inv", "F32", {1, 1}, scale},
       {"model.layers.0.self_attn.q_proj.weight", "F8_E4M3", {32, 64}, codes},
       {"model.layers.0.self_attn.q_proj.weight_scale_inv", "F32", {1, 1}, scale},
       {"model.layers.0.self_attn.k_proj.weight", "F8_E4M3", {32, 64}, codes},
       // transformers >= 5's fused 3-D experts, FP8 with their scales.
       {"model.layers.1.mlp.experts.gate_up_proj", "F8_E4M3", {1, 32, 64}, codes},
       {"model.layers.1.mlp.experts.gate_up_proj_scale_inv", "F32", {1, 1, 1}, scale}});
  auto ckpt = engine::Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  // A per-expert projection is handed out like any other (GroupedExperts packs it).
  auto expert = (*ckpt)->Get("model.layers.0.mlp.experts.0.gate_proj.weight", {32, 64});
  ASSERT_TRUE(expert.ok()) << expert.status();
  EXPECT_EQ(expert->dtype(), DType::kWeightRowRefs);
  // The fused 3-D layout stays UNIMPLEMENTED, and says what does load.
  auto fused = (*ckpt)->Get("model.layers.1.mlp.experts.gate_up_proj");
  EXPECT_EQ(fused.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(fused.status().message().find("pre-quantized fused 3-D experts"), std::string::npos)
      << fused.status();
  EXPECT_NE(fused.status().message().find("experts.N.gate_proj/up_proj/down_proj.weight"), std::string::npos)
      << fused.status();
  auto q = (*ckpt)->Get("model.layers.0.self_attn.q_proj.weight", {32, 64});
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->dtype(), DType::kWeightRowRefs);
  auto k = (*ckpt)->Get("model.layers.0.self_attn.k_proj.weight");
  EXPECT_EQ(k.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(k.status().message().find("weight_scale_inv' is missing"), std::string::npos)
      << k.status();
  fs::remove_all(dir);
}

TEST(PrequantizedCheckpointTest, GptqScalesMustBeExactlyFloat16) {
  // bf16 scales that are f16 values load; one that is not is refused.
  const std::string dir =
      (fs::temp_directory_path() / absl::StrCat("sluice_prequant_scales_", ::getpid())).string();
  for (const bool exact : {true, false}) {
    fs::remove_all(dir);
    fs::create_directories(dir);
    std::ofstream(dir + "/config.json")
        << R"({"model_type": "qwen3", "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 16}})";
    std::vector<uint16_t> scales(8, kernels::F32ToBf16(0.01171875f));  // 3 · 2^-8: an f16 value
    if (!exact) scales[3] = kernels::F32ToBf16(1e-30f);                // below f16's range
    const std::string qweight(2 * 8 * 4, '\x11'), qzeros(4, '\x77');
    WriteSafetensors(dir + "/model.safetensors",
                     {{"m.layers.0.mlp.up_proj.qweight", "I32", {2, 8}, qweight},
                      {"m.layers.0.mlp.up_proj.qzeros", "I32", {1, 1}, qzeros},
                      {"m.layers.0.mlp.up_proj.scales",
                       "BF16",
                       {1, 8},
                       std::string(reinterpret_cast<const char*>(scales.data()), 16)}});
    auto ckpt = engine::Checkpoint::Open(dir);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    EXPECT_TRUE((*ckpt)->Contains("m.layers.0.mlp.up_proj.weight"));  // the logical name
    auto w = (*ckpt)->Get("m.layers.0.mlp.up_proj.weight", {8, 16});
    EXPECT_EQ(w.ok(), exact) << w.status();
  }
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------
// The fixture models against transformers on their dequantized weights.
//
// Tolerance. The reference and sluice multiply the same f32 weights (the dequantized
// values are exact in f32) in f32; only the summation order differs (per block or group,
// then the scale; ragged batches). That is the case of the f32 golden fixtures, and the
// same 1e-4 bound on logits of magnitude ~1-10 holds (measured worst: see the report).

struct FixtureCase {
  const char* name;
  const char* format_prefix;
  double bytes_per_weight_low, bytes_per_weight_high;  // of the quantized projections
};

void PrintTo(const FixtureCase& c, std::ostream* os) { *os << c.name; }

class PrequantizedModelTest : public ::testing::TestWithParam<FixtureCase> {};

TEST_P(PrequantizedModelTest, LogitsMatchTransformersOnTheDequantizedWeights) {
  const FixtureCase& c = GetParam();
  auto fixture = testing::LoadGoldenFixture(c.name);
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  auto model = engine::CausalLm::Load(fixture->dir, kernels::Device::kCpu);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->weight_format().rfind(c.format_prefix, 0), 0u) << (*model)->weight_format();
  EXPECT_EQ((*model)->quantization(), kernels::WeightQuantization::kNone);
  std::vector<const std::vector<int32_t>*> prompts;
  for (const auto& p : fixture->prompts) prompts.push_back(&p.ids);
  testing::PrefillResult batch = testing::PrefillBatch(**model, prompts);
  ASSERT_TRUE(batch.status.ok()) << batch.status;
  size_t offset = 0;
  float worst = 0;
  for (size_t i = 0; i < fixture->prompts.size(); ++i) {
    const auto& want = fixture->prompts[i].logits;
    testing::PrefillResult alone = testing::PrefillBatch(**model, {prompts[i]});
    ASSERT_TRUE(alone.status.ok()) << alone.status;
    ASSERT_EQ(alone.logits.size(), want.size());
    // Batch invariance: a prompt's logits are the same bits alone and in the ragged batch.
    ASSERT_EQ(0, std::memcmp(alone.logits.data(), batch.logits.data() + offset,
                             want.size() * sizeof(float)))
        << c.name << " prompt " << i;
    for (size_t j = 0; j < want.size(); ++j)
      worst = std::max(worst, std::fabs(alone.logits[j] - want[j]));
    offset += want.size();
  }
  EXPECT_LE(worst, 1e-4f) << c.name;
  std::printf("%s: worst |logit - transformers| = %.3g (%s)\n", c.name, worst,
              (*model)->weight_format().c_str());
  // The bytes a token reads: the quantized projections at their stored width.
  const engine::ModelConfig& config = (*model)->config();
  const double head = 2.0 * config.vocab_size * config.hidden_size;  // bf16 LM head
  const double projections = static_cast<double>(config.ActiveParameters()) -
                             static_cast<double>(config.vocab_size) * config.hidden_size * 2;
  const double per_weight = ((*model)->WeightBytesPerToken() - head) / projections;
  EXPECT_GE(per_weight, c.bytes_per_weight_low) << c.name;
  EXPECT_LE(per_weight, c.bytes_per_weight_high) << c.name;
  std::printf("%s: %.3f bytes read per projection weight\n", c.name, per_weight);
}

TEST_P(PrequantizedModelTest, RequantizingIsRefused) {
  for (auto q : {kernels::WeightQuantization::kInt8, kernels::WeightQuantization::kInt4}) {
    engine::ModelLoadOptions options;
    options.quantization = q;
    auto model = engine::CausalLm::Load(testing::ModelFixtureDir(GetParam().name),
                                        kernels::Device::kCpu, options);
    ASSERT_FALSE(model.ok());
    EXPECT_EQ(model.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(model.status().message().find("already quantized"), std::string::npos)
        << model.status();
  }
}

// bytes per weight: FP8 1 byte + a 4-byte scale per 128 (+ bf16 parts, norms counted as
// parameters); GPTQ 0.5 byte + headers (4 bytes per 64) + the bf16 parts.
INSTANTIATE_TEST_SUITE_P(Fixtures, PrequantizedModelTest,
                         ::testing::Values(FixtureCase{"qwen3_fp8", "fp8_block128", 1.0, 1.2},
                                           FixtureCase{"qwen3_5_fp8", "fp8_block128", 1.0, 1.2},
                                           FixtureCase{"qwen3_gptq", "gptq_int4_g64", 0.5, 0.65},
                                           FixtureCase{"qwen3_gptq_act_order",
                                                       "gptq_int4_g64_act_order", 0.5, 0.7},
                                           // Routed experts pre-quantized (two of them partly or
                                           // wholly bf16 in the FP8 one; routers bf16). Down's
                                           // K = 32 costs FP8 a 4-byte scale per 32 weights.
                                           FixtureCase{"qwen3_moe_fp8", "fp8_block128", 1.0, 1.3},
                                           FixtureCase{"qwen3_moe_gptq", "gptq_int4_g32", 0.5, 0.8}),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace sluice
