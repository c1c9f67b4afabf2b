// The 4-bit group-wise Linear (kernels/cpu/gemm_int4_cpu.h): quantization error bound,
// the activation prologue (int8 per 32 K) against its definition, the GEMM against a
// double-precision reference over the same dequantized weights and quantized activations
// (tight) and over the unquantized activations (the derived looser bound), odd shapes,
// every accepted weight dtype and group size, the VNNI, AVX-512BW and scalar bodies
// against each other (same bits), batch invariance per body, and the refusals.
#include <algorithm>
#include <cmath>
#include <cstdio>
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

// The fitted (s, m) (kernels/cpu/int4_fit.h) may clamp a group's extremes to code 0 or
// 15; every weight inside the representable range [m − s/2, m + 15.5·s] is within half
// a step, and a clamped one is at most its distance past the range's end.
TEST(Int4QuantizationTest, ErrorAtMostHalfAStepInsideTheRange) {
  for (int64_t group : {32, 64, 128}) {
    for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
      const int64_t n = 45, k = 333;
      const Tensor weight = MakeWeight(TestWeights(n, k, 7 + group), n, k, dtype);
      const std::vector<float> w = AsF32(weight);
      PackedInt4Weight packed(weight.raw(), dtype, n, k, group);
      ASSERT_TRUE(packed.all_finite());
      double worst = 0;
      int64_t clamped = 0;
      for (int64_t c = 0; c < n; ++c) {
        for (int64_t kk = 0; kk < k; ++kk) {
          const int64_t g = kk / group;
          const float s = packed.scale(c, g), m = packed.minimum(c, g);
          const float v = w[c * k + kk];
          ASSERT_GT(s, 0.0f);
          ASSERT_GE(packed.code(c, kk), 0);
          ASSERT_LE(packed.code(c, kk), 15);
          const double err = std::abs(static_cast<double>(v) - packed.Dequantized(c, kk));
          // s/2 from rounding to the nearest code, plus the f32 roundings of (w − m)/s
          // and of s·q + m (a few ulps of the group's magnitude).
          const double slack = 4 * kUnit * (std::abs(m) + 15.0 * s);
          const double below = (static_cast<double>(m) - s / 2.0) - v;          // > 0: under code 0
          const double above = v - (static_cast<double>(m) + 15.5 * s);         // > 0: over code 15
          const double past = std::max({0.0, below, above});
          clamped += past > 0;
          ASSERT_LE(err, s / 2 + past + slack) << "c=" << c << " k=" << kk << " group=" << group;
          if (past == 0) worst = std::max(worst, err / std::max(1e-30, static_cast<double>(s)));
        }
      }
      EXPECT_GT(worst, 0.3)
          << "the error should come near s/2 somewhere (else the test is vacuous)";
      // The fit trades the extremes for the bulk: TestWeights' spikes get clamped somewhere.
      EXPECT_GT(clamped, 0) << "group " << group;
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

// The activation quantization as the header defines it, written out plainly: per block
// of 32 K, d = max|x| / 127 and q = clamp(round(x / d), −127, 127) (0 when d = 0).
struct QuantizedRow {
  std::vector<int8_t> q;  // in K order
  std::vector<float> d;   // per block of 32
};
QuantizedRow QuantizeReference(const float* x, int64_t k) {
  QuantizedRow out{std::vector<int8_t>(k), std::vector<float>((k + 31) / 32)};
  for (int64_t b = 0; b * 32 < k; ++b) {
    float amax = 0;
    for (int64_t kk = b * 32; kk < std::min(k, b * 32 + 32); ++kk) amax = std::max(amax, std::abs(x[kk]));
    const float d = amax / 127.0f;
    out.d[b] = d;
    for (int64_t kk = b * 32; kk < std::min(k, b * 32 + 32); ++kk) {
      out.q[kk] = d == 0 ? 0 : static_cast<int8_t>(std::clamp(std::round(x[kk] / d), -127.0f, 127.0f));
    }
  }
  return out;
}

// The bodies this build and CPU run (scalar always).
std::vector<Int4Kernel> Bodies() {
  std::vector<Int4Kernel> b = {Int4Kernel::kScalar};
  if (Int4KernelAvailable(Int4Kernel::kAvx512Bw)) b.push_back(Int4Kernel::kAvx512Bw);
  if (Int4KernelAvailable(Int4Kernel::kVnni)) b.push_back(Int4Kernel::kVnni);
  return b;
}

// Σ_k dequant(w)[c, k]·x̂[r, k] in double, with x̂ = d_b·q_k in the scale term and the f32
// x in the minimum term (what the kernel computes before rounding), and a bound on the
// kernel's f32 error: the block sums are exact, the group accumulator is a chain of
// ≤ group/32 fmas, the group sums of x a chain of ≤ group adds, and the output a chain of
// 2 fmas per group, each rounding at most u times the magnitude B = Σ_k (s·q_k·|x̂_k| +
// |m|·|x_k|) it has summed so far. So
//   |y − ref| ≤ (2·group + 2·groups + 4) · u · B,
// a worst case far below the activation quantization error and far above the observed
// error. y_f32 is Σ_k dequant(w)·x over the unquantized x, and bound_f32 bound plus
// the activation term Σ_k s·q_k·d_b·(1/2 + 2⁻¹⁷) (|x − x̂| ≤ d_b·(1/2 + 2⁻¹⁷): rounding to
// the nearest step, plus the f32 division's rounding).
struct Reference {
  std::vector<double> y, bound, y_f32, bound_f32;
};
Reference ReferenceGemm(const std::vector<float>& x, int64_t m, const PackedInt4Weight& w) {
  const int64_t n = w.n(), k = w.k();
  Reference ref{std::vector<double>(m * n), std::vector<double>(m * n), std::vector<double>(m * n),
                std::vector<double>(m * n)};
  const double factor = (2.0 * w.group_size() + 2.0 * w.num_groups() + 4) * kUnit;
  for (int64_t r = 0; r < m; ++r) {
    const QuantizedRow xq = QuantizeReference(x.data() + r * k, k);
    for (int64_t c = 0; c < n; ++c) {
      double acc = 0, acc_f32 = 0, magnitude = 0, activation = 0;
      for (int64_t kk = 0; kk < k; ++kk) {
        const int64_t g = kk / w.group_size();
        const double xv = x[r * k + kk], xh = static_cast<double>(xq.d[kk / 32]) * xq.q[kk];
        const double sq = static_cast<double>(w.scale(c, g)) * w.code(c, kk), mg = w.minimum(c, g);
        acc += sq * xh + mg * xv;
        acc_f32 += xv * w.Dequantized(c, kk);
        magnitude += sq * std::abs(xh) + std::abs(mg) * std::abs(xv);
        activation += sq * xq.d[kk / 32] * (0.5 + std::ldexp(1.0, -17));
      }
      ref.y[r * n + c] = acc;
      ref.bound[r * n + c] = factor * magnitude;
      ref.y_f32[r * n + c] = acc_f32;
      ref.bound_f32[r * n + c] = factor * magnitude + activation;
    }
  }
  return ref;
}

std::vector<float> RunGemm(const std::vector<float>& x, int64_t m, const PackedInt4Weight& w,
                           Int4Kernel body = Int4Kernel::kAuto) {
  std::vector<float> y(m * w.n(), std::numeric_limits<float>::quiet_NaN());
  GemmF32Int4(x.data(), m, w, y.data(), w.n(), body);
  return y;
}

// The prologue: each body's bytes are the definition's, at the documented slots, with
// zeros past K; the scales and sums too. Inputs with ties (x/d = j + 1/2), exact zeros,
// −0, subnormals, an all-zero block, a block whose scale underflows, NaN and infinity.
TEST(Int4ActivationsTest, QuantizeRowMatchesItsDefinitionInEveryBody) {
  for (int64_t k : {1, 7, 8, 31, 32, 45, 100, 333}) {
    std::vector<float> x = Randn(k, static_cast<uint32_t>(k));
    if (k >= 32) {
      x[0] = 127.0f;  // block 0: d = 1 exactly, so the next ones are ties
      x[1] = 2.5f;
      x[2] = -2.5f;
      x[3] = 0.49999997f;
      x[4] = -0.5f;
      x[5] = -0.0f;
      x[6] = 1e-40f;
    }
    if (k >= 64) {
      for (int64_t kk = 32; kk < 64; ++kk) x[kk] = (kk % 3 == 0) ? -0.0f : 0.0f;  // all zero
    }
    if (k >= 100) {
      for (int64_t kk = 64; kk < 96; ++kk) x[kk] = (kk % 2 ? 1 : -1) * 1e-44f;  // d underflows
    }
    const QuantizedRow want = QuantizeReference(x.data(), k);
    for (const int64_t group : {32, 64, 128}) {
      for (const Int4Kernel body : Bodies()) {
        SCOPED_TRACE(absl::StrCat("k=", k, " group=", group, " ", Int4KernelName(body)));
        const int64_t kp = (k + 7) / 8 * 8, blocks = Int4ActivationBlocks(k), groups = (k + group - 1) / group;
        std::vector<int8_t> q(kp, 99);
        std::vector<float> d(blocks, -1), sums(groups, -1);
        Int4QuantizeRow(x.data(), k, group, q.data(), d.data(), sums.data(), body);
        for (int64_t kk = 0; kk < kp; ++kk) {
          ASSERT_EQ(q[Int4ActivationSlot(kk)], kk < k ? want.q[kk] : 0) << "k " << kk;
        }
        for (int64_t b = 0; b < blocks; ++b) ASSERT_EQ(d[b], want.d[b]) << "block " << b;
        for (int64_t g = 0; g < groups; ++g) {
          float s = 0;
          for (int64_t kk = g * group; kk < std::min(k, (g + 1) * group); ++kk) s += x[kk];
          ASSERT_EQ(std::memcmp(&sums[g], &s, 4), 0) << "group " << g;
        }
      }
    }
    if (k >= 32) {  // the ties went away from zero
      EXPECT_EQ(want.q[1], 3);
      EXPECT_EQ(want.q[2], -3);
      EXPECT_EQ(want.q[3], 0);
      EXPECT_EQ(want.q[4], -1);
    }
  }
  // Non-finite activations: the byte for NaN (and for every x of a block holding an
  // infinity) is 0, and in every body the same.
  std::vector<float> x = Randn(64, 3);
  x[3] = std::numeric_limits<float>::quiet_NaN();
  x[40] = std::numeric_limits<float>::infinity();
  std::vector<std::vector<int8_t>> qs;
  for (const Int4Kernel body : Bodies()) {
    std::vector<int8_t> q(64);
    std::vector<float> d(2), sums(2);
    Int4QuantizeRow(x.data(), 64, 32, q.data(), d.data(), sums.data(), body);
    EXPECT_EQ(q[Int4ActivationSlot(3)], 0);
    for (int64_t kk = 32; kk < 64; ++kk) EXPECT_EQ(q[Int4ActivationSlot(kk)], 0);
    EXPECT_TRUE(std::isinf(d[1]));
    EXPECT_TRUE(std::isnan(sums[0]));
    qs.push_back(q);
  }
  for (const auto& q : qs) EXPECT_EQ(q, qs[0]);
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
    ASSERT_NEAR(yt.data<float>()[i], ref.y_f32[i], ref.bound_f32[i]) << "row " << i / n << " col " << i % n;
  }
  // Every body computes the same integer sums and f32 chain: the same bits.
  for (const Int4Kernel body : Bodies()) {
    const std::vector<float> y = RunGemm(x, m, packed, body);
    ASSERT_EQ(std::memcmp(y.data(), yt.data<float>(), y.size() * sizeof(float)), 0)
        << Int4KernelName(body) << " and " << Int4KernelName(Int4SelectedKernel()) << " differ";
  }
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
  for (const Int4Kernel body : Bodies()) {
    SCOPED_TRACE(Int4KernelName(body));
    const std::vector<float> alone = RunGemm(row, 1, w, body);
    // Batches of many sizes (including past the L2 row tile), the row at several places,
    // with different neighbours each time.
    for (int64_t m : {2, 3, 5, 6, 7, 12, 13, 17, 24, 25, 40, 250, 1000}) {
      for (int64_t at : {int64_t{0}, m / 2, m - 1}) {
        std::vector<float> x = Randn(m * k, static_cast<uint32_t>(100 + m * 7 + at));
        std::copy(row.begin(), row.end(), x.begin() + at * k);
        const std::vector<float> y = RunGemm(x, m, w, body);
        ASSERT_EQ(std::memcmp(y.data() + at * n, alone.data(), n * sizeof(float)), 0)
            << "M=" << m << " row " << at;
      }
    }
  }
}

// Every row count 1..17 (each row-group split and panel interleave), K a multiple of
// neither 32 nor the group, N not a multiple of 32 (and a single panel, and a 4-panel
// chunk plus a tail): the three bodies give the same bits, and within the bounds.
TEST(Int4GemmTest, BodiesGiveTheSameBitsAtEveryRowCount) {
  struct Case {
    int64_t n, k, group;
  };
  for (const Case& cs : {Case{70, 333, 64}, Case{17, 45, 32}, Case{161, 200, 128}, Case{33, 1000, 32}}) {
    const std::vector<float> wv = TestWeights(cs.n, cs.k, static_cast<uint32_t>(cs.k));
    PackedInt4Weight w(wv.data(), DType::kF32, cs.n, cs.k, cs.group);
    for (int64_t m = 1; m <= 17; ++m) {
      SCOPED_TRACE(absl::StrCat("N=", cs.n, " K=", cs.k, " G=", cs.group, " M=", m));
      const std::vector<float> x = Randn(m * cs.k, static_cast<uint32_t>(m * 13 + cs.n));
      const std::vector<float> scalar = RunGemm(x, m, w, Int4Kernel::kScalar);
      const Reference ref = ReferenceGemm(x, m, w);
      double beyond = 0;  // how far the unquantized-x product is, in units of the tight bound
      for (int64_t i = 0; i < m * cs.n; ++i) {
        ASSERT_NEAR(scalar[i], ref.y[i], ref.bound[i]) << i;
        ASSERT_NEAR(scalar[i], ref.y_f32[i], ref.bound_f32[i]) << i;
        beyond = std::max(beyond, std::abs(ref.y_f32[i] - ref.y[i]) / ref.bound[i]);
      }
      // The tight reference tells quantized activations from f32 ones (else it is vacuous).
      EXPECT_GT(beyond, 10.0);
      for (const Int4Kernel body : Bodies()) {
        const std::vector<float> y = RunGemm(x, m, w, body);
        ASSERT_EQ(std::memcmp(y.data(), scalar.data(), y.size() * sizeof(float)), 0) << Int4KernelName(body);
      }
    }
  }
  // This machine should run the SIMD bodies (else only the scalar one was compared).
  std::printf("int4 bodies compared: %zu (selected: %s)\n", Bodies().size(), Int4KernelName(Int4SelectedKernel()));
}

// The pieces API (what the grouped-experts op calls): rows quantized at group offsets,
// panel ranges, an output stride wider than N: GemmF32Int4's bits.
TEST(Int4GemmTest, PiecesGiveGemmF32Int4sBits) {
  const int64_t n = 200, k = 300, group = 64, m = 9, ldy = 230;
  const std::vector<float> wv = TestWeights(n, k, 31);
  PackedInt4Weight w(wv.data(), DType::kF32, n, k, group);
  const std::vector<float> x = Randn(m * k, 32);
  const std::vector<float> want = RunGemm(x, m, w);
  const int64_t kp = w.padded_k(), blocks = Int4ActivationBlocks(k), groups = w.num_groups();
  std::vector<int8_t> q(m * kp);
  std::vector<float> d(m * blocks), sums(m * groups);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t c0 = 0; c0 < k; c0 += group) {  // one group at a time, as the SwiGLU items do
      Int4QuantizeRow(x.data() + r * k + c0, std::min(group, k - c0), group, q.data() + r * kp + c0,
                      d.data() + r * blocks + c0 / 32, sums.data() + r * groups + c0 / group);
    }
  }
  std::vector<float> y(m * ldy, -7.0f);
  GemmInt4Panels(q.data(), d.data(), sums.data(), m, w, 0, 3, y.data(), ldy);
  GemmInt4Panels(q.data(), d.data(), sums.data(), m, w, 3, w.num_panels(), y.data(), ldy);
  for (int64_t r = 0; r < m; ++r) {
    ASSERT_EQ(std::memcmp(y.data() + r * ldy, want.data() + r * n, n * sizeof(float)), 0) << "row " << r;
    for (int64_t c = n; c < ldy; ++c) ASSERT_EQ(y[r * ldy + c], -7.0f) << "wrote past N";
  }
}

TEST(Int4GemmTest, QuantizationErrorOfTheProductIsBounded) {
  // Against the unquantized weights and activations the product errs by at most
  // Σ_k |x_k|·s/2 (the per-element weight bound) plus Σ_k s·q_k·d_b·(1/2 + 2⁻¹⁷) (the
  // activations' rounding to their int8 steps), and, for random inputs, by much less.
  const int64_t n = 40, k = 512, m = 3;
  const std::vector<float> wv = TestWeights(n, k, 21);
  PackedInt4Weight w(wv.data(), DType::kF32, n, k, 32);
  const std::vector<float> x = Randn(m * k, 22);
  const std::vector<float> y = RunGemm(x, m, w);
  for (int64_t r = 0; r < m; ++r) {
    const QuantizedRow xq = QuantizeReference(x.data() + r * k, k);
    for (int64_t c = 0; c < n; ++c) {
      double exact = 0, bound = 0;
      for (int64_t kk = 0; kk < k; ++kk) {
        exact += static_cast<double>(x[r * k + kk]) * wv[c * k + kk];
        bound += std::abs(x[r * k + kk]) * (w.scale(c, kk / 32) / 2 + 1e-6) +
                 w.scale(c, kk / 32) * w.code(c, kk) * xq.d[kk / 32] * (0.5 + 1e-5);
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
