// The 4-bit group-wise Linear (kernels/cpu/gemm_int4_cpu.h): quantization error bound,
// the GEMM against a double-precision reference over the same dequantized weights,
// odd shapes, every accepted weight dtype and group size, the AVX-512 body against the
// portable one (same bits), batch invariance, and the refusals.
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cpu/gemm_int4_cpu.h"
#include "kernels/ops.h"
#include "kernels/tensor.h"
#include "tests/unit/tensor_test_util.h"

namespace sluice::kernels::cpu {
namespace {

using testing::Make;
using testing::Randn;

constexpr double kUnit = 1.0 / (1 << 24);  // f32 unit roundoff

uint16_t ToF16(float f) {
  const _Float16 h = static_cast<_Float16>(f);
  uint16_t bits;
  std::memcpy(&bits, &h, 2);
  return bits;
}

// A [n, k] weight tensor of `dtype` holding w (rounded to the dtype).
Tensor MakeWeight(const std::vector<float>& w, int64_t n, int64_t k, DType dtype) {
  if (dtype == DType::kF32) return Make(w, {n, k});
  Tensor t = *Tensor::Empty({n, k}, dtype);
  for (size_t i = 0; i < w.size(); ++i) {
    t.data<uint16_t>()[i] = dtype == DType::kBF16 ? F32ToBf16(w[i]) : ToF16(w[i]);
  }
  return t;
}

// The weight values as the packer reads them (after the dtype's rounding).
std::vector<float> AsF32(const Tensor& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  for (size_t i = 0; i < v.size(); ++i) {
    if (t.dtype() == DType::kF32) v[i] = t.data<float>()[i];
    if (t.dtype() == DType::kBF16) v[i] = Bf16ToF32(t.data<uint16_t>()[i]);
    if (t.dtype() == DType::kF16) v[i] = F16ToF32(t.data<uint16_t>()[i]);
  }
  return v;
}

// Weights with a spread of group ranges: N(0, 0.02²) plus a per-column offset and some
// outliers, so that minimums are not all ≈ −maximum.
std::vector<float> TestWeights(int64_t n, int64_t k, uint32_t seed) {
  std::vector<float> w = Randn(n * k, seed, 0.02f);
  std::mt19937 rng(seed + 1);
  std::uniform_real_distribution<float> offset(-0.03f, 0.03f);
  for (int64_t c = 0; c < n; ++c) {
    const float o = offset(rng);
    for (int64_t kk = 0; kk < k; ++kk) w[c * k + kk] += o;
  }
  for (int64_t i = 0; i < n * k; i += 97) w[i] *= 8.0f;
  return w;
}

TEST(Int4QuantizationTest, ErrorAtMostHalfAStepPerElement) {
  for (int64_t group : {32, 64, 128}) {
    for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
      const int64_t n = 45, k = 333;
      const Tensor weight = MakeWeight(TestWeights(n, k, 7 + group), n, k, dtype);
      const std::vector<float> w = AsF32(weight);
      PackedInt4Weight packed(weight.raw(), dtype, n, k, group);
      ASSERT_TRUE(packed.all_finite());
      double worst = 0;
      for (int64_t c = 0; c < n; ++c) {
        for (int64_t kk = 0; kk < k; ++kk) {
          const int64_t g = kk / group;
          const float s = packed.scale(c, g), m = packed.minimum(c, g);
          const float v = w[c * k + kk];
          ASSERT_GE(s, 0.0f);
          ASSERT_LE(m, v) << "the minimum is rounded down: no code below 0 is needed";
          ASSERT_GE(packed.code(c, kk), 0);
          ASSERT_LE(packed.code(c, kk), 15);
          const double err = std::abs(static_cast<double>(v) - packed.Dequantized(c, kk));
          // s/2 from rounding to the nearest code, plus the f32 roundings of (w − m)/s
          // and of s·q + m (a few ulps of the group's magnitude).
          const double slack = 4 * kUnit * (std::abs(m) + 15.0 * s);
          ASSERT_LE(err, s / 2 + slack) << "c=" << c << " k=" << kk << " group=" << group;
          worst = std::max(worst, err / std::max(1e-30, static_cast<double>(s)));
        }
      }
      EXPECT_GT(worst, 0.3)
          << "the error should come near s/2 somewhere (else the test is vacuous)";
    }
  }
}

TEST(Int4QuantizationTest, ConstantGroupIsExactAndPackedBytesAreAsDocumented) {
  const int64_t n = 64, k = 128, group = 32;
  std::vector<float> w(n * k, 0.25f);
  PackedInt4Weight packed(w.data(), DType::kF32, n, k, group);
  for (int64_t c = 0; c < n; ++c) {
    for (int64_t kk = 0; kk < k; ++kk) ASSERT_EQ(packed.Dequantized(c, kk), 0.25f);
  }
  // 4 bits per weight plus one 4-byte (scale, minimum) pair per group and column.
  EXPECT_EQ(packed.bytes(), static_cast<size_t>(n * k / 2 + n * (k / group) * 4));
}

// Σ_k x[r, k] · dequant(w)[c, k] in double, and a bound on the kernel's f32 error: the
// group accumulator is a chain of ≤ group fmas over x·q, the group sums of x a chain of
// ≤ group adds, and the output a chain of 2 fmas per group, each rounding at most u times
// the magnitude B = Σ_k |x_k|·(s·q_k + |m|) it has summed so far. So
//   |y − ref| ≤ (2·group + 2·groups + 4) · u · B,
// a worst case far below the quantization error and far above the observed error.
struct Reference {
  std::vector<double> y, bound;
};
Reference ReferenceGemm(const std::vector<float>& x, int64_t m, const PackedInt4Weight& w) {
  const int64_t n = w.n(), k = w.k();
  Reference ref{std::vector<double>(m * n), std::vector<double>(m * n)};
  const double factor = (2.0 * w.group_size() + 2.0 * w.num_groups() + 4) * kUnit;
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t c = 0; c < n; ++c) {
      double acc = 0, magnitude = 0;
      for (int64_t kk = 0; kk < k; ++kk) {
        const int64_t g = kk / w.group_size();
        const double xv = x[r * k + kk];
        acc += xv * w.Dequantized(c, kk);
        magnitude += std::abs(xv) * (w.scale(c, g) * w.code(c, kk) + std::abs(w.minimum(c, g)));
      }
      ref.y[r * n + c] = acc;
      ref.bound[r * n + c] = factor * magnitude;
    }
  }
  return ref;
}

std::vector<float> RunGemm(const std::vector<float>& x, int64_t m, const PackedInt4Weight& w,
                           bool portable) {
  std::vector<float> y(m * w.n(), std::numeric_limits<float>::quiet_NaN());
  GemmF32Int4(x.data(), m, w, y.data(), w.n(), portable);
  return y;
}

using ShapeCase = std::tuple<int64_t /*m*/, int64_t /*n*/, int64_t /*k*/, int64_t /*group*/, DType>;

class Int4GemmShapeTest : public ::testing::TestWithParam<ShapeCase> {};

TEST_P(Int4GemmShapeTest, MatchesReferenceOnTheDequantizedWeights) {
  const auto [m, n, k, group, dtype] = GetParam();
  const Tensor weight =
      MakeWeight(TestWeights(n, k, static_cast<uint32_t>(n * 31 + k)), n, k, dtype);
  auto linear = CreateInt4Linear(weight, group);
  ASSERT_TRUE(linear.ok()) << linear.status();
  ASSERT_EQ((*linear)->in_features(), k);
  ASSERT_EQ((*linear)->out_features(), n);
  const PackedInt4Weight& packed = static_cast<const Int4Linear&>(**linear).packed();

  const std::vector<float> x = Randn(m * k, static_cast<uint32_t>(m + 3));
  Tensor xt = Make(x, {m, k});
  Tensor yt = *Tensor::Empty({m, n}, DType::kF32);
  ASSERT_TRUE((*linear)->Forward(xt, &yt).ok());
  const Reference ref = ReferenceGemm(x, m, packed);
  for (int64_t i = 0; i < m * n; ++i) {
    ASSERT_NEAR(yt.data<float>()[i], ref.y[i], ref.bound[i]) << "row " << i / n << " col " << i % n;
  }
  // The portable body computes the same chain: the same bits.
  const std::vector<float> portable = RunGemm(x, m, packed, /*portable=*/true);
  ASSERT_EQ(std::memcmp(portable.data(), yt.data<float>(), portable.size() * sizeof(float)), 0)
      << "AVX-512 (" << Int4Avx512Available() << ") and portable bodies differ";
}

std::string ShapeName(const ::testing::TestParamInfo<ShapeCase>& info) {
  const auto [m, n, k, group, dtype] = info.param;
  return absl::StrCat("M", m, "_N", n, "_K", k, "_G", group, "_", DTypeName(dtype));
}

// K not a multiple of 8, of the group or of 64; N not a multiple of 32; M around the
// 12-row kernel.
INSTANTIATE_TEST_SUITE_P(OddShapes, Int4GemmShapeTest,
                         ::testing::Combine(::testing::Values(1, 3, 12, 13, 17),
                                            ::testing::Values(1, 33, 70),
                                            ::testing::Values(5, 100, 136, 200),
                                            ::testing::Values(32, 64, 128),
                                            ::testing::Values(DType::kF32)),
                         ShapeName);
INSTANTIATE_TEST_SUITE_P(Dtypes, Int4GemmShapeTest,
                         ::testing::Combine(::testing::Values(1, 13), ::testing::Values(47),
                                            ::testing::Values(299), ::testing::Values(32, 128),
                                            ::testing::Values(DType::kBF16, DType::kF16)),
                         ShapeName);
INSTANTIATE_TEST_SUITE_P(Larger, Int4GemmShapeTest,
                         ::testing::Combine(::testing::Values(1, 24), ::testing::Values(256),
                                            ::testing::Values(1024), ::testing::Values(32, 64, 128),
                                            ::testing::Values(DType::kBF16)),
                         ShapeName);

TEST(Int4GemmTest, ARowsResultDoesNotDependOnItsBatch) {
  const int64_t n = 70, k = 300, group = 64;
  const std::vector<float> wv = TestWeights(n, k, 11);
  PackedInt4Weight w(wv.data(), DType::kF32, n, k, group);
  const std::vector<float> row = Randn(k, 5);
  const std::vector<float> alone = RunGemm(row, 1, w, false);
  // Batches of many sizes (including past the L2 row tile), the row at several places,
  // with different neighbours each time.
  for (int64_t m : {2, 3, 7, 12, 13, 17, 24, 25, 40, 250}) {
    for (int64_t at : {int64_t{0}, m / 2, m - 1}) {
      std::vector<float> x = Randn(m * k, static_cast<uint32_t>(100 + m * 7 + at));
      std::copy(row.begin(), row.end(), x.begin() + at * k);
      const std::vector<float> y = RunGemm(x, m, w, false);
      ASSERT_EQ(std::memcmp(y.data() + at * n, alone.data(), n * sizeof(float)), 0)
          << "M=" << m << " row " << at;
    }
  }
}

TEST(Int4GemmTest, QuantizationErrorOfTheProductIsBounded) {
  // Against the unquantized weights the product errs by at most Σ_k |x_k|·s/2 (the
  // per-element bound), and, for random inputs, by much less.
  const int64_t n = 40, k = 512, m = 3;
  const std::vector<float> wv = TestWeights(n, k, 21);
  PackedInt4Weight w(wv.data(), DType::kF32, n, k, 32);
  const std::vector<float> x = Randn(m * k, 22);
  const std::vector<float> y = RunGemm(x, m, w, false);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t c = 0; c < n; ++c) {
      double exact = 0, bound = 0;
      for (int64_t kk = 0; kk < k; ++kk) {
        exact += static_cast<double>(x[r * k + kk]) * wv[c * k + kk];
        bound += std::abs(x[r * k + kk]) * (w.scale(c, kk / 32) / 2 + 1e-6);
      }
      ASSERT_LE(std::abs(y[r * n + c] - exact), bound);
    }
  }
}

TEST(Int4LinearTest, ReportsItsFormatAndRealBytes) {
  const int64_t n = 100, k = 300;  // 4 panels (the last partial), K padded to 304
  auto linear = CreateInt4Linear(MakeWeight(Randn(n * k, 3), n, k, DType::kBF16), 64);
  ASSERT_TRUE(linear.ok()) << linear.status();
  EXPECT_EQ((*linear)->quantization(), WeightQuantization::kInt4);
  EXPECT_EQ((*linear)->weight_dtype(), DType::kBF16);
  // Per panel: 4 full groups (2 header lines + 8 blocks of 2 lines) and a last group of
  // 44 K (2 header lines + 6 blocks of 2 lines), 64-byte lines.
  const size_t panel_bytes = (4 * (2 + 2 * 8) + (2 + 2 * 6)) * 64;
  EXPECT_EQ((*linear)->weight_bytes(), 4 * panel_bytes);
}

TEST(Int4LinearTest, RefusesBadGroupSizesDtypesAndValues) {
  const Tensor weight = Make(Randn(64 * 64, 1), {64, 64});
  for (int64_t group : {0, -32, 8, 16, 48, 96, 256}) {
    auto linear = CreateInt4Linear(weight, group);
    EXPECT_EQ(linear.status().code(), absl::StatusCode::kInvalidArgument) << group;
  }
  Tensor ints = *Tensor::Zeros({4, 64}, DType::kI32);
  EXPECT_EQ(CreateInt4Linear(ints, 32).status().code(), absl::StatusCode::kInvalidArgument);
  Tensor vector = Make(Randn(64, 1), {64});
  EXPECT_EQ(CreateInt4Linear(vector, 32).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<float> bad = Randn(64 * 64, 2);
  bad[100] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(CreateInt4Linear(Make(bad, {64, 64}), 32).status().code(),
            absl::StatusCode::kInvalidArgument);
  bad[100] = std::numeric_limits<float>::infinity();
  EXPECT_EQ(CreateInt4Linear(Make(bad, {64, 64}), 64).status().code(),
            absl::StatusCode::kInvalidArgument);
  // The Linear checks shapes before running.
  auto linear = CreateInt4Linear(weight, 32);
  ASSERT_TRUE(linear.ok());
  Tensor x = *Tensor::Zeros({2, 63}, DType::kF32);
  Tensor y = *Tensor::Zeros({2, 64}, DType::kF32);
  EXPECT_FALSE((*linear)->Forward(x, &y).ok());
  Tensor x0 = *Tensor::Zeros({0, 64}, DType::kF32);
  Tensor y0 = *Tensor::Zeros({0, 64}, DType::kF32);
  EXPECT_TRUE((*linear)->Forward(x0, &y0).ok());
}

}  // namespace
}  // namespace sluice::kernels::cpu
