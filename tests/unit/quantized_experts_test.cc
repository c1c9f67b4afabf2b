// Quantized routed experts (kernels/moe.h GroupedExperts with LinearOptions int8/int4):
// the grouped op against a double-precision reference computed from the dequantized
// expert weights (int4: and the int8-quantized activations), bit for bit against the
// per-expert loop over quantized Linears, the int4 VNNI, AVX-512BW and scalar bodies bit
// for bit against each other, each row's bits independent of the batch it shares (in
// every int4 body), the byte accounting and errors, the
// load-time wiring (MoeFeedForward under --quantization), and the MoE golden fixtures
// loaded with int8 and int4 against transformers' logits.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "engine/config/model_config.h"
#include "engine/model/causal_lm.h"
#include "engine/model/feed_forward.h"
#include "engine/weights/checkpoint.h"
#include "gtest/gtest.h"
#include "kernels/cpu/gemm_int4_cpu.h"
#include "kernels/cpu/gemm_int8_cpu.h"
#include "kernels/moe.h"
#include "kernels/ops.h"
#include "tests/golden/fixture.h"
#include "tests/unit/tensor_test_util.h"

namespace sluice {
namespace {

using kernels::Device;
using kernels::DType;
using kernels::GroupedExperts;
using kernels::Linear;
using kernels::LinearOptions;
using kernels::Tensor;
using kernels::WeightQuantization;
using testing::Make;
using testing::MakeI32;
using testing::Randn;

struct Shape {
  int64_t tokens, hidden, inter, experts, k;
};

LinearOptions Options(WeightQuantization q, int64_t group_size = 128) {
  LinearOptions o;
  o.quantization = q;
  o.group_size = group_size;
  return o;
}

std::string Name(const LinearOptions& o) {
  return o.quantization == WeightQuantization::kInt8 ? "int8" : "int4/" + std::to_string(o.group_size);
}

// The formats under test: int8, and int4 at each supported group size.
const LinearOptions kFormats[] = {Options(WeightQuantization::kInt8), Options(WeightQuantization::kInt4, 32),
                                  Options(WeightQuantization::kInt4, 64), Options(WeightQuantization::kInt4, 128)};

// A [rows, cols] weight of N(0, 0.2²) values in `dtype` (f32, bf16 or f16).
Tensor RandomWeight(int64_t rows, int64_t cols, DType dtype, uint32_t seed) {
  const std::vector<float> v = Randn(rows * cols, seed, 0.2f);
  Tensor t = *Tensor::Empty({rows, cols}, dtype);
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (dtype == DType::kF32) {
      t.data<float>()[i] = v[i];
    } else if (dtype == DType::kBF16) {
      t.data<uint16_t>()[i] = kernels::F32ToBf16(v[i]);
    } else {
      const _Float16 half = static_cast<_Float16>(v[i]);
      std::memcpy(t.data<uint16_t>() + i, &half, 2);
    }
  }
  return t;
}

struct Experts {
  std::vector<Tensor> gate_up, down;  // [2I, H] and [H, I] per expert
};

Experts MakeExperts(const Shape& s, DType dtype, uint32_t seed) {
  Experts e;
  for (int64_t i = 0; i < s.experts; ++i) {
    e.gate_up.push_back(RandomWeight(2 * s.inter, s.hidden, dtype, seed + 2 * static_cast<uint32_t>(i)));
    e.down.push_back(RandomWeight(s.hidden, s.inter, dtype, seed + 2 * static_cast<uint32_t>(i) + 1));
  }
  return e;
}

// A routed batch: chosen experts and weights [T, k] and their grouping by expert.
struct Routing {
  std::vector<int32_t> chosen;
  std::vector<float> weights;
  Tensor offsets, rows, sorted;
};

Routing Group(const Shape& s, std::vector<int32_t> chosen, std::vector<float> weights) {
  Routing r;
  r.chosen = std::move(chosen);
  r.weights = std::move(weights);
  r.offsets = *Tensor::Empty({s.experts + 1}, DType::kI32);
  r.rows = *Tensor::Empty({s.tokens * s.k}, DType::kI32);
  r.sorted = *Tensor::Empty({s.tokens * s.k}, DType::kF32);
  EXPECT_TRUE(kernels::AlignRowsByExpert(MakeI32(r.chosen, {s.tokens, s.k}), Make(r.weights, {s.tokens, s.k}),
                                         &r.offsets, &r.rows, &r.sorted)
                  .ok());
  return r;
}

// Routing from random logits, the odd rows keeping one expert (−1 slots), as a budget's
// experts_per_token makes them; some experts stay unused.
Routing RandomRouting(const Shape& s, uint32_t seed) {
  Tensor logits = Make(Randn(s.tokens * s.experts, seed, 3.f), {s.tokens, s.experts});
  std::vector<int32_t> row_k(s.tokens);
  for (int64_t t = 0; t < s.tokens; ++t) row_k[t] = t % 2 == 1 ? 1 : static_cast<int32_t>(s.k);
  Tensor chosen = *Tensor::Empty({s.tokens, s.k}, DType::kI32);
  Tensor weights = *Tensor::Empty({s.tokens, s.k}, DType::kF32);
  EXPECT_TRUE(kernels::RouteTopK(logits, s.k, true, &chosen, &weights, MakeI32(row_k, {s.tokens})).ok());
  return Group(s, {chosen.data<int32_t>(), chosen.data<int32_t>() + chosen.numel()},
               {weights.data<float>(), weights.data<float>() + weights.numel()});
}

Tensor RunGrouped(GroupedExperts& op, const Tensor& x, const Routing& r) {
  Tensor out = Make(std::vector<float>(x.numel(), 123.f), x.shape());  // overwritten
  const absl::Status status = op.Forward(x, r.offsets, r.rows, r.sorted, &out);
  EXPECT_TRUE(status.ok()) << status;
  return out;
}

// The dequantized weights of one [n, k] weight in a format, with the magnitudes the
// kernel's rounding error is bounded by: w'[c, j] and |w'|-like terms (int4: |s·q| + |m|,
// since the kernel sums s·Σx̂·q and m·Σx apart), and for int4 the scale part s·q alone
// (the part the quantized activations x̂ meet).
struct Dequantized {
  bool int4 = false;
  int64_t n = 0, k = 0, groups = 1;
  std::vector<double> w, mag, sq;
};

Dequantized Dequantize(const Tensor& weight, const LinearOptions& o) {
  const Tensor wf = *kernels::ToF32(weight, Device::kCpu);
  Dequantized d;
  d.n = weight.dim(0);
  d.k = weight.dim(1);
  d.w.resize(d.n * d.k);
  d.mag.resize(d.n * d.k);
  d.sq.assign(d.n * d.k, 0);
  d.int4 = o.quantization == WeightQuantization::kInt4;
  if (o.quantization == WeightQuantization::kInt8) {
    const kernels::cpu::PackedInt8Weight p(wf.data<float>(), d.n, d.k);
    for (int64_t c = 0; c < d.n; ++c) {
      for (int64_t j = 0; j < d.k; ++j) {
        d.w[c * d.k + j] = static_cast<double>(p.q(c, j)) * p.scales()[c];
        d.mag[c * d.k + j] = std::fabs(d.w[c * d.k + j]);
      }
    }
  } else {
    const kernels::cpu::PackedInt4Weight p(wf.data<float>(), DType::kF32, d.n, d.k, o.group_size);
    d.groups = p.num_groups();
    for (int64_t c = 0; c < d.n; ++c) {
      for (int64_t j = 0; j < d.k; ++j) {
        const double s = p.scale(c, j / o.group_size), m = p.minimum(c, j / o.group_size);
        const double q = p.code(c, j);
        d.w[c * d.k + j] = s * q + m;  // exact in double: bf16 s and m, q ≤ 15
        d.mag[c * d.k + j] = std::fabs(s * q) + std::fabs(m);
        d.sq[c * d.k + j] = s * q;
      }
    }
  }
  return d;
}

// The int4 kernel's activation quantization (kernels/cpu/gemm_int4_cpu.h) of an f32 row,
// written out plainly: per 32 K, d = max|x|/127, q = clamp(round(x/d), −127, 127) (0 when
// d = 0); x̂ = d·q.
std::vector<double> QuantizedActivations(const float* x, int64_t k) {
  std::vector<double> xh(k);
  for (int64_t b = 0; b < k; b += 32) {
    float amax = 0;
    for (int64_t j = b; j < std::min(k, b + 32); ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    for (int64_t j = b; j < std::min(k, b + 32); ++j) {
      xh[j] = d == 0 ? 0.0 : static_cast<double>(d) * std::clamp(std::round(x[j] / d), -127.0f, 127.0f);
    }
  }
  return xh;
}

// y = W'·x in double, and a bound on the f32 kernel's error given errors ex on x: the
// propagated part Σ mag·ex plus the kernel's own rounding, one f32 chain over K with
// 2 roundings per group (Higham, Accuracy and Stability of Numerical Algorithms, §3.1:
// |error| ≤ γ_n Σ|terms|, with γ_n ≈ n·2⁻²⁴), first order. int4 quantizes x per 32 K
// and meets x̂ in the scale term, the f32 x in the minimum term: with xh (x̂ of an f32 x
// the test knows exactly, ex = 0) the reference does the same and the bound stays the
// rounding one; without it (x itself only known to ±ex) the bound adds Σ |s·q|·e_j with
// e_j = d̄_b·(1/2 + 2⁻¹⁷), d̄_b ≥ the kernel's d_b = max_b |x_f32|/127 (rounded), bounded
// from max_b (|x| + ex).
void Apply(const Dequantized& d, const std::vector<double>& x, const std::vector<double>& ex,
           std::vector<double>* y, std::vector<double>* ey, const std::vector<double>* xh = nullptr) {
  const double eps = std::ldexp(1.0, -24);
  std::vector<double> eq(d.k, 0);  // int4 without xh: the activation quantization error
  if (d.int4 && xh == nullptr) {
    for (int64_t b = 0; b < d.k; b += 32) {
      double amax = 0;
      for (int64_t j = b; j < std::min(d.k, b + 32); ++j) amax = std::max(amax, std::fabs(x[j]) + ex[j]);
      const double step = amax * (1 + 4 * eps) / 127;
      for (int64_t j = b; j < std::min(d.k, b + 32); ++j) eq[j] = step * (0.5 + std::ldexp(1.0, -17));
    }
  }
  y->assign(d.n, 0);
  ey->assign(d.n, 0);
  for (int64_t c = 0; c < d.n; ++c) {
    double acc = 0, mag = 0, prop = 0;
    for (int64_t j = 0; j < d.k; ++j) {
      const int64_t i = c * d.k + j;
      if (xh != nullptr) {
        acc += d.sq[i] * (*xh)[j] + (d.w[i] - d.sq[i]) * x[j];  // w' − s·q = m, exact
        mag += d.mag[i] * std::max(std::fabs(x[j]), std::fabs((*xh)[j]));
      } else {
        acc += d.w[i] * x[j];
        mag += d.mag[i] * std::fabs(x[j]);
      }
      prop += d.mag[i] * ex[j] + std::fabs(d.sq[i]) * eq[j];
    }
    (*y)[c] = acc;
    (*ey)[c] = prop + static_cast<double>(d.k + 2 * d.groups + 8) * eps * mag;
  }
}

// The grouped op against the double reference of the same dequantized weights, every
// output within its worst-case rounding bound (doubled: the bound is first order). The
// bound is ~1e-6 relative (int8; int4 adds the down projection's activation quantization,
// the gate-up one is followed exactly); a wrong scale, minimum, code, column, block
// interleave or expert moves outputs by ~1e-2 relative or more.
void ExpectMatchesDequantizedReference(const Shape& s, const LinearOptions& o, DType dtype) {
  SCOPED_TRACE(Name(o) + " " + std::string(kernels::DTypeName(dtype)) + " T=" + std::to_string(s.tokens) +
               " H=" + std::to_string(s.hidden) + " I=" + std::to_string(s.inter) + " E=" +
               std::to_string(s.experts) + " k=" + std::to_string(s.k));
  const Experts ex = MakeExperts(s, dtype, 300 + static_cast<uint32_t>(s.hidden));
  auto op = GroupedExperts::Create(ex.gate_up, ex.down, Device::kCpu, o);
  ASSERT_TRUE(op.ok()) << op.status();
  EXPECT_EQ((*op)->quantization(), o.quantization);
  const Tensor x = Make(Randn(s.tokens * s.hidden, 17 + static_cast<uint32_t>(s.tokens)), {s.tokens, s.hidden});
  const Routing r = RandomRouting(s, 23 + static_cast<uint32_t>(s.experts));
  const Tensor out = RunGrouped(**op, x, r);

  std::vector<Dequantized> gu, dn;
  for (int64_t e = 0; e < s.experts; ++e) {
    gu.push_back(Dequantize(ex.gate_up[e], o));
    dn.push_back(Dequantize(ex.down[e], o));
  }
  const double eps = std::ldexp(1.0, -24);
  int64_t checked = 0;
  double worst_ratio = 0;
  for (int64_t t = 0; t < s.tokens; ++t) {
    std::vector<double> ref(s.hidden, 0), bound(s.hidden, 0), mag(s.hidden, 0);
    const std::vector<double> xt(x.data<float>() + t * s.hidden, x.data<float>() + (t + 1) * s.hidden);
    const std::vector<double> xh = QuantizedActivations(x.data<float>() + t * s.hidden, s.hidden);
    const std::vector<double> zero(s.hidden, 0);
    for (int64_t i = 0; i < s.k; ++i) {
      const int32_t e = r.chosen[t * s.k + i];
      if (e < 0) continue;
      const double w = r.weights[t * s.k + i];
      std::vector<double> g, eg;
      Apply(gu[e], xt, zero, &g, &eg, gu[e].int4 ? &xh : nullptr);
      std::vector<double> act(s.inter), eact(s.inter);
      for (int64_t j = 0; j < s.inter; ++j) {
        const double gate = g[j], up = g[s.inter + j];
        const double silu = gate / (1 + std::exp(-gate));
        act[j] = silu * up;
        // silu' ≤ 1.1; the f32 expression itself (exp, add, divide, multiply) ~5 roundings.
        eact[j] = 1.1 * (std::fabs(up) + eg[s.inter + j]) * eg[j] + (std::fabs(silu) + 1.1 * eg[j]) * eg[s.inter + j] +
                  6 * eps * std::fabs(act[j]);
      }
      std::vector<double> y, ey;
      Apply(dn[e], act, eact, &y, &ey);
      for (int64_t c = 0; c < s.hidden; ++c) {
        ref[c] += w * y[c];
        bound[c] += w * ey[c];
        mag[c] += std::fabs(w * y[c]);
      }
    }
    for (int64_t c = 0; c < s.hidden; ++c) {
      const double limit = 2 * (bound[c] + (s.k + 1) * eps * mag[c]) + 1e-30;
      const double err = std::fabs(out.data<float>()[t * s.hidden + c] - ref[c]);
      worst_ratio = std::max(worst_ratio, err / limit);
      ASSERT_LE(err, limit) << "token " << t << " column " << c << " got " << out.data<float>()[t * s.hidden + c]
                            << " want " << ref[c];
      ++checked;
    }
  }
  EXPECT_EQ(checked, s.tokens * s.hidden);
  double norm = 0;
  for (int64_t i = 0; i < out.numel(); ++i) norm += std::fabs(out.data<float>()[i]);
  EXPECT_GT(norm, 0);  // a real result, not all zeros
}

// Sizes that hit every tail: K not a multiple of 8 (the int4 padding), I not a multiple
// of 32 (a short last block) or of the group size (a short last group), more rows on one
// expert than one kernel call takes, batch 1.
const Shape kShapes[] = {
    {1, 67, 45, 6, 2},     // batch 1, K odd, I not a multiple of 32, most experts unused
    {3, 64, 40, 8, 3},     // K a multiple of 32, I not
    {17, 95, 96, 5, 4},    // 17 rows over 5 experts, I = 64 + 32 (a short group at 64)
    {25, 200, 160, 3, 2},  // I = 128 + 32; up to 25 rows on an expert
};

TEST(QuantizedExpertsTest, MatchDoubleReferenceOfDequantizedWeights) {
  for (const LinearOptions& o : kFormats) {
    for (const Shape& s : kShapes) ExpectMatchesDequantizedReference(s, o, DType::kBF16);
  }
  // Other source dtypes are widened exactly, then quantized the same way.
  ExpectMatchesDequantizedReference(kShapes[2], Options(WeightQuantization::kInt8), DType::kF32);
  ExpectMatchesDequantizedReference(kShapes[2], Options(WeightQuantization::kInt4, 64), DType::kF16);
}

// The loop MoeFeedForward ran before GroupedExperts existed, over Linears quantized with
// the same options: the grouped op must give its bits exactly.
Tensor PerExpertLoop(const Shape& s, const Experts& ex, const LinearOptions& o, const Tensor& x, const Routing& r) {
  Tensor out = *Tensor::Zeros({s.tokens, s.hidden}, DType::kF32);
  for (int64_t e = 0; e < s.experts; ++e) {
    std::vector<int32_t> rows;
    std::vector<float> scales;
    for (int64_t t = 0; t < s.tokens; ++t) {
      for (int64_t i = 0; i < s.k; ++i) {
        if (r.chosen[t * s.k + i] != e) continue;
        rows.push_back(static_cast<int32_t>(t));
        scales.push_back(r.weights[t * s.k + i]);
      }
    }
    const int64_t n = static_cast<int64_t>(rows.size());
    if (n == 0) continue;
    auto gate_up = Linear::Create(ex.gate_up[e], Device::kCpu, o);
    auto down = Linear::Create(ex.down[e], Device::kCpu, o);
    EXPECT_TRUE(gate_up.ok() && down.ok());
    Tensor row_ids = MakeI32(rows, {n});
    Tensor xe = *Tensor::Empty({n, s.hidden}, DType::kF32);
    EXPECT_TRUE(kernels::GatherRows(x, row_ids, &xe).ok());
    Tensor gu = *Tensor::Empty({n, 2 * s.inter}, DType::kF32);
    EXPECT_TRUE((*gate_up)->Forward(xe, &gu).ok());
    Tensor act = *Tensor::Empty({n, s.inter}, DType::kF32);
    EXPECT_TRUE(kernels::SiluMul(gu, &act).ok());
    Tensor ye = *Tensor::Empty({n, s.hidden}, DType::kF32);
    EXPECT_TRUE((*down)->Forward(act, &ye).ok());
    EXPECT_TRUE(kernels::ScaledScatterAdd(ye, row_ids, Make(scales, {n}), &out).ok());
  }
  return out;
}

TEST(QuantizedExpertsTest, BitIdenticalToThePerExpertLoopOverQuantizedLinears) {
  const Shape shapes[] = {kShapes[0], kShapes[1], kShapes[2], kShapes[3], {60, 2048, 64, 2, 2}};
  for (const LinearOptions& o : kFormats) {
    for (const Shape& s : shapes) {
      for (DType dtype : {DType::kBF16, DType::kF32}) {
        SCOPED_TRACE(Name(o) + " " + std::string(kernels::DTypeName(dtype)) + " T=" + std::to_string(s.tokens) +
                     " H=" + std::to_string(s.hidden) + " I=" + std::to_string(s.inter));
        const Experts ex = MakeExperts(s, dtype, 100 + static_cast<uint32_t>(s.tokens));
        auto op = GroupedExperts::Create(ex.gate_up, ex.down, Device::kCpu, o);
        ASSERT_TRUE(op.ok()) << op.status();
        const Tensor x = Make(Randn(s.tokens * s.hidden, 7 + static_cast<uint32_t>(s.hidden)), {s.tokens, s.hidden});
        const Routing r = RandomRouting(s, 9);
        RunGrouped(**op, x, r);  // twice: the second call runs on the grown workspace
        const Tensor out = RunGrouped(**op, x, r);
        const Tensor ref = PerExpertLoop(s, ex, o, x, r);
        int64_t differing = 0;
        for (int64_t i = 0; i < out.numel(); ++i) {
          differing += std::memcmp(out.data<float>() + i, ref.data<float>() + i, 4) != 0;
        }
        EXPECT_EQ(differing, 0);
      }
    }
  }
}

// Forces the int4 GEMM body within a scope (kernels/cpu/gemm_int4_cpu.h's test hook),
// for the grouped op and the Linears alike.
struct ScopedInt4Body {
  explicit ScopedInt4Body(kernels::cpu::Int4Kernel body) { kernels::cpu::SetInt4KernelForTesting(body); }
  ~ScopedInt4Body() { kernels::cpu::SetInt4KernelForTesting(kernels::cpu::Int4Kernel::kAuto); }
};

// The int4 bodies this build and CPU run (scalar always); kAuto alone for int8.
std::vector<kernels::cpu::Int4Kernel> Int4Bodies(const LinearOptions& o) {
  using kernels::cpu::Int4Kernel;
  if (o.quantization != WeightQuantization::kInt4) return {Int4Kernel::kAuto};
  std::vector<Int4Kernel> b = {Int4Kernel::kScalar};
  for (Int4Kernel k : {Int4Kernel::kAvx512Bw, Int4Kernel::kVnni}) {
    if (kernels::cpu::Int4KernelAvailable(k)) b.push_back(k);
  }
  return b;
}

// The int4 grouped op in each body (VNNI, AVX-512BW, scalar): the same bits, on the
// shapes with every tail (K odd, I not a multiple of 32 or of the group, batch 1, many
// rows on one expert).
TEST(QuantizedExpertsTest, Int4BodiesGiveTheSameBits) {
  const Shape shapes[] = {kShapes[0], kShapes[1], kShapes[2], kShapes[3], {60, 2048, 64, 2, 2}};
  for (const LinearOptions& o : kFormats) {
    if (o.quantization != WeightQuantization::kInt4) continue;
    for (const Shape& s : shapes) {
      SCOPED_TRACE(Name(o) + " T=" + std::to_string(s.tokens) + " H=" + std::to_string(s.hidden) +
                   " I=" + std::to_string(s.inter));
      const Experts ex = MakeExperts(s, DType::kBF16, 200 + static_cast<uint32_t>(s.tokens));
      auto op = GroupedExperts::Create(ex.gate_up, ex.down, Device::kCpu, o);
      ASSERT_TRUE(op.ok()) << op.status();
      const Tensor x = Make(Randn(s.tokens * s.hidden, 3 + static_cast<uint32_t>(s.hidden)), {s.tokens, s.hidden});
      const Routing r = RandomRouting(s, 5);
      Tensor scalar;
      {
        ScopedInt4Body body(kernels::cpu::Int4Kernel::kScalar);
        scalar = RunGrouped(**op, x, r);
      }
      for (const kernels::cpu::Int4Kernel b : Int4Bodies(o)) {
        ScopedInt4Body body(b);
        const Tensor out = RunGrouped(**op, x, r);
        EXPECT_EQ(std::memcmp(out.data<float>(), scalar.data<float>(), out.bytes()), 0)
            << kernels::cpu::Int4KernelName(b);
      }
    }
  }
  std::printf("int4 bodies compared: %zu\n", Int4Bodies(Options(WeightQuantization::kInt4, 32)).size());
}

// Batch invariance: many rows on few experts (so an expert's rows fill several kernel
// calls and, at H = 2048, several L2 row tiles), then each row alone and a few rows
// together: a row's output is the same bits whatever shares its experts (int4: in each
// body).
TEST(QuantizedExpertsTest, RowsIgnoreTheBatchTheyShare) {
  const Shape shapes[] = {{26, 72, 96, 3, 2}, {40, 2048, 64, 2, 2}};
  for (const LinearOptions& o : kFormats) {
    for (const Shape& s : shapes) {
      for (const kernels::cpu::Int4Kernel b : Int4Bodies(o)) {
        ScopedInt4Body body(b);
        SCOPED_TRACE(Name(o) + " H=" + std::to_string(s.hidden) + " " + kernels::cpu::Int4KernelName(b));
        const Experts ex = MakeExperts(s, DType::kBF16, 41);
        auto op = GroupedExperts::Create(ex.gate_up, ex.down, Device::kCpu, o);
        ASSERT_TRUE(op.ok()) << op.status();
        const Tensor x = Make(Randn(s.tokens * s.hidden, 43), {s.tokens, s.hidden});
        const Routing r = RandomRouting(s, 47);
        const Tensor all = RunGrouped(**op, x, r);
        auto run_rows = [&](int64_t t0, int64_t n) {
          const Shape sub{n, s.hidden, s.inter, s.experts, s.k};
          const Routing rs = Group(sub, {r.chosen.begin() + t0 * s.k, r.chosen.begin() + (t0 + n) * s.k},
                                   {r.weights.begin() + t0 * s.k, r.weights.begin() + (t0 + n) * s.k});
          const Tensor xs = Make({x.data<float>() + t0 * s.hidden, x.data<float>() + (t0 + n) * s.hidden}, {n, s.hidden});
          return RunGrouped(**op, xs, rs);
        };
        for (int64_t t = 0; t < s.tokens; ++t) {
          const Tensor one = run_rows(t, 1);
          ASSERT_EQ(std::memcmp(one.data<float>(), all.data<float>() + t * s.hidden, s.hidden * 4), 0) << "row " << t;
        }
        const Tensor five = run_rows(3, 5);
        EXPECT_EQ(std::memcmp(five.data<float>(), all.data<float>() + 3 * s.hidden, 5 * s.hidden * 4), 0);
      }
    }
  }
}

TEST(QuantizedExpertsTest, BytesFormatsScopesAndErrors) {
  const Shape s{2, 64, 64, 3, 2};
  const Experts ex = MakeExperts(s, DType::kBF16, 5);
  for (const LinearOptions& o : kFormats) {
    auto op = GroupedExperts::Create(ex.gate_up, ex.down, Device::kCpu, o);
    ASSERT_TRUE(op.ok()) << op.status();
    EXPECT_EQ((*op)->quantization(), o.quantization);
    // What a token routed to one expert reads: the same packed bytes as the two Linears
    // (I a multiple of 32, so the block interleave adds no padding).
    auto gu = *Linear::Create(ex.gate_up[0], Device::kCpu, o);
    auto dn = *Linear::Create(ex.down[0], Device::kCpu, o);
    EXPECT_EQ((*op)->ExpertWeightBytes(), gu->weight_bytes() + dn->weight_bytes()) << Name(o);
    EXPECT_LT((*op)->ExpertWeightBytes(), 3u * 64 * 64 * 2) << Name(o);  // fewer than bf16's
  }
  auto bf16 = *GroupedExperts::Create(ex.gate_up, ex.down, Device::kCpu);
  EXPECT_EQ(bf16->quantization(), WeightQuantization::kNone);
  EXPECT_EQ(bf16->ExpertWeightBytes(), 3u * 64 * 64 * 2);
  {
    // The plain Create follows the load scope, as Linear::Create does.
    kernels::ScopedLinearOptions scope(Options(WeightQuantization::kInt4, 32));
    auto scoped = GroupedExperts::Create(ex.gate_up, ex.down, Device::kCpu);
    ASSERT_TRUE(scoped.ok()) << scoped.status();
    EXPECT_EQ((*scoped)->quantization(), WeightQuantization::kInt4);
    EXPECT_EQ((*GroupedExperts::Create(ex.gate_up, ex.down, Device::kCpu, LinearOptions{}))->quantization(),
              WeightQuantization::kNone);
  }
  const auto invalid = absl::StatusCode::kInvalidArgument;
  for (int64_t bad : {0, -32, 16, 48, 256}) {
    EXPECT_EQ(GroupedExperts::Create(ex.gate_up, ex.down, Device::kCpu, Options(WeightQuantization::kInt4, bad))
                  .status()
                  .code(),
              invalid)
        << bad;
  }
  // A weight no 4-bit scale represents is refused, as the int4 Linear refuses it.
  std::vector<Tensor> nan_down = ex.down;
  nan_down[2] = RandomWeight(s.hidden, s.inter, DType::kF32, 9);
  nan_down[2].data<float>()[5] = NAN;
  std::vector<Tensor> f32_gate_up;
  for (const Tensor& t : ex.gate_up) f32_gate_up.push_back(*kernels::ToF32(t, Device::kCpu));
  std::vector<Tensor> f32_down;
  for (const Tensor& t : nan_down) f32_down.push_back(t.dtype() == DType::kF32 ? t : *kernels::ToF32(t, Device::kCpu));
  EXPECT_EQ(GroupedExperts::Create(f32_gate_up, f32_down, Device::kCpu, Options(WeightQuantization::kInt4, 32))
                .status()
                .code(),
            invalid);
  // No CUDA body for quantized experts yet: a clear UNIMPLEMENTED, never another format.
  EXPECT_EQ(GroupedExperts::Create(ex.gate_up, ex.down, Device::kCuda, Options(WeightQuantization::kInt8))
                .status()
                .code(),
            absl::StatusCode::kUnimplemented);
}

// MoeFeedForward::Load (engine/model/feed_forward.cc) packs its routed experts with the
// quantization in force, which CausalLm::Load sets for --quantization.
TEST(QuantizedExpertsTest, MoeLayersQuantizeTheirRoutedExpertsAtLoad) {
  const std::string dir = testing::ModelFixtureDir("qwen3_moe_bf16");
  auto config = engine::ModelConfig::FromFile(dir + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  auto ckpt = engine::Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const int64_t h = config->hidden_size, inter = config->moe.expert_intermediate_size;
  const std::string prefix = config->weight_prefix + "layers.0.";
  auto plain = engine::MoeFeedForward::Load(*config, **ckpt, prefix, Device::kCpu);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ((*plain)->ExpertWeightBytes(), static_cast<size_t>(3 * h * inter * 2));  // bf16
  for (const LinearOptions& o : {Options(WeightQuantization::kInt8), Options(WeightQuantization::kInt4, 32)}) {
    kernels::ScopedLinearOptions scope(o);
    auto moe = engine::MoeFeedForward::Load(*config, **ckpt, prefix, Device::kCpu);
    ASSERT_TRUE(moe.ok()) << moe.status();
    const Tensor gate_up = *Tensor::Zeros({2 * inter, h}, DType::kBF16);
    const Tensor down = *Tensor::Zeros({h, inter}, DType::kBF16);
    const size_t expected = (*Linear::Create(gate_up, Device::kCpu))->weight_bytes() +
                            (*Linear::Create(down, Device::kCpu))->weight_bytes();
    EXPECT_EQ((*moe)->ExpertWeightBytes(), expected) << Name(o);
    EXPECT_LT((*moe)->ActiveWeightBytes(), (*plain)->ActiveWeightBytes()) << Name(o);
  }
}

// The MoE golden fixtures loaded with --quantization int8 and int4 (routed experts
// quantized, bf16 and f32 checkpoints alike), against transformers' logits of the
// unquantized weights, teacher forced at every prompt position. The limits are the
// quantized golden tests' own (tests/unit/quantized_linear_test.cc, which explains them):
// int8 per fixture, max |Δlogit| and mean KL, with the top-1 kept wherever
// transformers' top-1 leads by more than twice the max limit; int4 (group 32: the
// fixtures' hidden size is 64) mean KL ≤ 0.3, where a wrong width, scale or layout
// gives near-flat unrelated distributions, KL of order 1; and int4 group 128 (the
// default) under the same limit.
struct GoldenCase {
  const char* name;
  double int8_max_abs;
  double int8_mean_kl;
};

struct Agreement {
  double max_abs = 0, mean_kl = 0;
  int64_t positions = 0, flips = 0, guarded = 0, guarded_flips = 0;
};

Agreement Compare(const testing::GoldenFixture& fixture, const std::vector<float>& logits, double guard) {
  Agreement a;
  const int64_t v = fixture.vocab_size;
  double kl_sum = 0;
  size_t offset = 0;
  for (const auto& p : fixture.prompts) {
    for (size_t t = 0; t < p.ids.size(); ++t, ++a.positions) {
      const float* want = p.logits.data() + t * v;
      const float* got = logits.data() + offset + t * v;
      const int64_t top_want = std::max_element(want, want + v) - want;
      const int64_t top_got = std::max_element(got, got + v) - got;
      float second = -INFINITY;
      for (int64_t i = 0; i < v; ++i) {
        a.max_abs = std::max(a.max_abs, static_cast<double>(std::fabs(got[i] - want[i])));
        if (i != top_want) second = std::max(second, want[i]);
      }
      double zw = 0, zg = 0;
      for (int64_t i = 0; i < v; ++i) {
        zw += std::exp(static_cast<double>(want[i] - want[top_want]));
        zg += std::exp(static_cast<double>(got[i] - got[top_got]));
      }
      for (int64_t i = 0; i < v; ++i) {
        const double lw = want[i] - want[top_want] - std::log(zw), lg = got[i] - got[top_got] - std::log(zg);
        kl_sum += std::exp(lw) * (lw - lg);
      }
      a.flips += top_want != top_got;
      if (want[top_want] - second > guard) {
        ++a.guarded;
        a.guarded_flips += top_want != top_got;
      }
    }
    offset += p.ids.size() * v;
  }
  a.mean_kl = kl_sum / a.positions;
  return a;
}

class QuantizedExpertsGoldenTest : public ::testing::TestWithParam<GoldenCase> {};

TEST_P(QuantizedExpertsGoldenTest, Int8AndInt4LogitsStayCloseToTransformers) {
  auto fixture = testing::LoadGoldenFixture(GetParam().name);
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  std::vector<const std::vector<int32_t>*> prompts;
  for (const auto& p : fixture->prompts) prompts.push_back(&p.ids);
  for (const LinearOptions& o : {Options(WeightQuantization::kInt8), Options(WeightQuantization::kInt4, 32),
                                 Options(WeightQuantization::kInt4, 128)}) {
    engine::ModelLoadOptions options;
    options.quantization = o.quantization;
    options.int4_group_size = o.group_size;
    auto model = engine::CausalLm::Load(fixture->dir, Device::kCpu, options);
    ASSERT_TRUE(model.ok()) << model.status();
    const testing::PrefillResult result = testing::PrefillBatch(**model, prompts);
    ASSERT_TRUE(result.status.ok()) << result.status;
    const bool int8 = o.quantization == WeightQuantization::kInt8;
    const Agreement a = Compare(*fixture, result.logits, int8 ? 2 * GetParam().int8_max_abs : INFINITY);
    std::printf("[%-8s] %-26s max|dlogit| %.4f  mean KL %.2e  top-1 flips %lld/%lld (%lld guarded)\n",
                Name(o).c_str(), GetParam().name, a.max_abs, a.mean_kl, static_cast<long long>(a.flips),
                static_cast<long long>(a.positions), static_cast<long long>(a.guarded));
    if (int8) {
      EXPECT_LE(a.max_abs, GetParam().int8_max_abs) << GetParam().name;
      EXPECT_LE(a.mean_kl, GetParam().int8_mean_kl) << GetParam().name;
      EXPECT_EQ(a.guarded_flips, 0) << GetParam().name;
    } else {
      EXPECT_LE(a.mean_kl, 0.3) << GetParam().name;
    }
  }
}

// The int8 limits of QuantizedGoldenTest for the same fixtures; qwen3_moe_f32 and
// mixtral_fused_experts_f32 take those of their bf16 / per-expert twins. Not in that
// test, measured here and limited by its rule (the measured worst rounded up ~1.5x):
// qwen3_next_f32, the most perturbation-amplifying hybrid (max 4.17, mean KL 1.8e-2;
// its experts are f32, quantized through Linear before this op took them, same bits),
// and sluice_demo_bf16, the trained Qwen3.5-MoE demo model (max 0.22, KL 9.7e-5).
INSTANTIATE_TEST_SUITE_P(MoeFixtures, QuantizedExpertsGoldenTest,
                         ::testing::Values(GoldenCase{"qwen3_moe_bf16", 1.0, 2e-3},
                                           GoldenCase{"qwen3_moe_f32", 1.0, 2e-3},
                                           GoldenCase{"qwen3_5_moe_f32", 6.0, 5e-2},
                                           GoldenCase{"mixtral_f32", 3.0, 5e-3},
                                           GoldenCase{"mixtral_fused_experts_f32", 3.0, 5e-3},
                                           GoldenCase{"olmoe_f32", 0.75, 1e-3},
                                           GoldenCase{"qwen3_next_bf16", 3.5, 2e-2},
                                           GoldenCase{"qwen3_next_f32", 6.0, 3e-2},
                                           GoldenCase{"qwen3_next_gateskip_f32", 4.5, 4e-2},
                                           GoldenCase{"sluice_demo_bf16", 0.35, 2e-4}),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace sluice
