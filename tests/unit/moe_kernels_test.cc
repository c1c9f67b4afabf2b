// The mixture-of-experts ops (kernels/moe.h): AlignRowsByExpert against a grouping
// worked out by hand, and GroupedExperts against the per-expert loop it replaced
// (gather, Linear, SiluMul, Linear, ScaledScatterAdd), bit for bit, for bf16 and f32
// weights, both matmul precisions, and sizes that hit every tail.
#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/moe.h"
#include "kernels/ops.h"
#include "tests/unit/tensor_test_util.h"

namespace sluice::kernels {
namespace {

using testing::Make;
using testing::Randn;

Tensor MakeI32(const std::vector<int32_t>& v, std::vector<int64_t> shape) {
  Tensor t = *Tensor::Empty(std::move(shape), DType::kI32);
  EXPECT_EQ(static_cast<size_t>(t.numel()), v.size());
  std::copy(v.begin(), v.end(), t.data<int32_t>());
  return t;
}

std::vector<int32_t> I32s(const Tensor& t) { return {t.data<int32_t>(), t.data<int32_t>() + t.numel()}; }
std::vector<float> F32s(const Tensor& t) { return {t.data<float>(), t.data<float>() + t.numel()}; }

TEST(AlignRowsByExpertTest, GroupsByExpertThenTokenAndSkipsUnusedSlots) {
  // T = 4 tokens, k = 2, E = 5; experts 1 and 3 get nothing, −1 marks unused slots.
  Tensor experts = MakeI32({2, 0, 0, -1, 4, 2, 2, -1}, {4, 2});
  Tensor weights = Make({0.6f, 0.4f, 1.0f, 0.0f, 0.7f, 0.3f, 1.0f, 0.0f}, {4, 2});
  Tensor offsets = *Tensor::Empty({6}, DType::kI32);
  Tensor rows = *Tensor::Empty({8}, DType::kI32);
  Tensor sorted = *Tensor::Empty({8}, DType::kF32);
  Tensor counter = *Tensor::Zeros({5}, DType::kI64);
  ASSERT_TRUE(AlignRowsByExpert(experts, weights, &offsets, &rows, &sorted, &counter).ok());
  EXPECT_EQ(I32s(offsets), (std::vector<int32_t>{0, 2, 2, 5, 5, 6}));
  // Expert 0: tokens 0, 1; expert 2: tokens 0, 2, 3; expert 4: token 2; then padding.
  EXPECT_EQ(I32s(rows), (std::vector<int32_t>{0, 1, 0, 2, 3, 2, 0, 0}));
  EXPECT_EQ(F32s(sorted), (std::vector<float>{0.4f, 1.0f, 0.6f, 0.3f, 1.0f, 0.7f, 0.f, 0.f}));
  EXPECT_EQ(*ReadExpertTokenCounter(counter), (std::vector<uint64_t>{2, 0, 3, 0, 1}));
  // The counter accumulates over calls; without one the grouping is the same.
  ASSERT_TRUE(AlignRowsByExpert(experts, weights, &offsets, &rows, &sorted, &counter).ok());
  EXPECT_EQ(*ReadExpertTokenCounter(counter), (std::vector<uint64_t>{4, 0, 6, 0, 2}));
  ASSERT_TRUE(AlignRowsByExpert(experts, weights, &offsets, &rows, &sorted).ok());
  EXPECT_EQ(I32s(offsets), (std::vector<int32_t>{0, 2, 2, 5, 5, 6}));
}

TEST(AlignRowsByExpertTest, NoTokensAndBadArgumentsAreHandled) {
  Tensor experts = *Tensor::Empty({0, 2}, DType::kI32);
  Tensor weights = *Tensor::Empty({0, 2}, DType::kF32);
  Tensor offsets = *Tensor::Empty({4}, DType::kI32);
  Tensor rows = *Tensor::Empty({0}, DType::kI32);
  Tensor sorted = *Tensor::Empty({0}, DType::kF32);
  ASSERT_TRUE(AlignRowsByExpert(experts, weights, &offsets, &rows, &sorted).ok());
  EXPECT_EQ(I32s(offsets), (std::vector<int32_t>{0, 0, 0, 0}));

  Tensor e2 = MakeI32({0, 3}, {1, 2});  // expert 3 of E = 3
  Tensor w2 = Make({0.5f, 0.5f}, {1, 2});
  Tensor r2 = *Tensor::Empty({2}, DType::kI32);
  Tensor s2 = *Tensor::Empty({2}, DType::kF32);
  EXPECT_EQ(AlignRowsByExpert(e2, w2, &offsets, &r2, &s2).code(), absl::StatusCode::kOutOfRange);
  Tensor e3 = MakeI32({0, -2}, {1, 2});
  EXPECT_EQ(AlignRowsByExpert(e3, w2, &offsets, &r2, &s2).code(), absl::StatusCode::kOutOfRange);
  // Shapes and dtypes: INVALID_ARGUMENT, never a crash.
  Tensor short_rows = *Tensor::Empty({1}, DType::kI32);
  EXPECT_EQ(AlignRowsByExpert(e2, w2, &offsets, &short_rows, &s2).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AlignRowsByExpert(e2, e2, &offsets, &r2, &s2).code(), absl::StatusCode::kInvalidArgument);
  Tensor f32_offsets = *Tensor::Empty({4}, DType::kF32);
  EXPECT_EQ(AlignRowsByExpert(e2, w2, &f32_offsets, &r2, &s2).code(), absl::StatusCode::kInvalidArgument);
  Tensor bad_counter = *Tensor::Zeros({2}, DType::kI64);
  EXPECT_EQ(AlignRowsByExpert(e2, w2, &offsets, &r2, &s2, &bad_counter).code(), absl::StatusCode::kInvalidArgument);
  Tensor undefined;
  EXPECT_EQ(AlignRowsByExpert(undefined, w2, &offsets, &r2, &s2).code(), absl::StatusCode::kInvalidArgument);
}

struct Shape {
  int64_t tokens, hidden, inter, experts, k;
};

// Weights of E experts in `dtype`: stacked [gate | up] [2I, H] and down [H, I].
void MakeExperts(const Shape& s, DType dtype, uint32_t seed, std::vector<Tensor>* gate_up, std::vector<Tensor>* down) {
  auto fill = [&](Tensor& t, uint32_t sd) {
    auto v = Randn(t.numel(), sd, 0.2f);
    for (int64_t i = 0; i < t.numel(); ++i) {
      if (dtype == DType::kF32) {
        t.data<float>()[i] = v[i];
      } else {
        t.data<uint16_t>()[i] = F32ToBf16(v[i]);
      }
    }
  };
  for (int64_t e = 0; e < s.experts; ++e) {
    Tensor gu = *Tensor::Empty({2 * s.inter, s.hidden}, dtype);
    Tensor d = *Tensor::Empty({s.hidden, s.inter}, dtype);
    fill(gu, seed + 2 * e);
    fill(d, seed + 2 * e + 1);
    gate_up->push_back(gu);
    down->push_back(d);
  }
}

// The loop MoeFeedForward ran before GroupedExperts existed.
Tensor PerExpertLoop(const Shape& s, const std::vector<std::unique_ptr<Linear>>& gate_up,
                     const std::vector<std::unique_ptr<Linear>>& down, const Tensor& x,
                     const std::vector<int32_t>& chosen, const std::vector<float>& weights) {
  Tensor out = *Tensor::Zeros({s.tokens, s.hidden}, DType::kF32);
  for (int64_t e = 0; e < s.experts; ++e) {
    std::vector<int32_t> rows;
    std::vector<float> scales;
    for (int64_t t = 0; t < s.tokens; ++t) {
      for (int64_t i = 0; i < s.k; ++i) {
        if (chosen[t * s.k + i] != e) continue;
        rows.push_back(static_cast<int32_t>(t));
        scales.push_back(weights[t * s.k + i]);
      }
    }
    const int64_t n = static_cast<int64_t>(rows.size());
    if (n == 0) continue;
    Tensor row_ids = MakeI32(rows, {n});
    Tensor row_scale = Make(scales, {n});
    Tensor xe = *Tensor::Empty({n, s.hidden}, DType::kF32);
    EXPECT_TRUE(GatherRows(x, row_ids, &xe).ok());
    Tensor gu = *Tensor::Empty({n, 2 * s.inter}, DType::kF32);
    EXPECT_TRUE(gate_up[e]->Forward(xe, &gu).ok());
    Tensor act = *Tensor::Empty({n, s.inter}, DType::kF32);
    EXPECT_TRUE(SiluMul(gu, &act).ok());
    Tensor ye = *Tensor::Empty({n, s.hidden}, DType::kF32);
    EXPECT_TRUE(down[e]->Forward(act, &ye).ok());
    EXPECT_TRUE(ScaledScatterAdd(ye, row_ids, row_scale, &out).ok());
  }
  return out;
}

void ExpectBitIdentical(const Shape& s, DType dtype, MatmulPrecision precision) {
  ASSERT_TRUE(SetMatmulPrecision(precision).ok());
  std::vector<Tensor> gate_up, down;
  MakeExperts(s, dtype, 100 + static_cast<uint32_t>(s.tokens), &gate_up, &down);
  std::vector<std::unique_ptr<Linear>> gu_linear, down_linear;
  for (int64_t e = 0; e < s.experts; ++e) {
    gu_linear.push_back(*Linear::Create(gate_up[e], Device::kCpu));
    down_linear.push_back(*Linear::Create(down[e], Device::kCpu));
  }
  auto grouped = GroupedExperts::Create(gate_up, down, Device::kCpu);
  ASSERT_TRUE(grouped.ok()) << grouped.status();
  EXPECT_EQ((*grouped)->ExpertWeightBytes(), gu_linear[0]->weight_bytes() + down_linear[0]->weight_bytes());

  // Routing from random logits, so that some experts are unused; the odd rows keep fewer
  // experts (−1 slots), as a budget's experts_per_token makes them.
  Tensor x = Make(Randn(s.tokens * s.hidden, 7 + static_cast<uint32_t>(s.hidden)), {s.tokens, s.hidden});
  Tensor logits = Make(Randn(s.tokens * s.experts, 9, 3.f), {s.tokens, s.experts});
  std::vector<int32_t> row_k(s.tokens);
  for (int64_t t = 0; t < s.tokens; ++t) row_k[t] = t % 2 == 1 ? 1 : static_cast<int32_t>(s.k);
  Tensor chosen = *Tensor::Empty({s.tokens, s.k}, DType::kI32);
  Tensor weights = *Tensor::Empty({s.tokens, s.k}, DType::kF32);
  ASSERT_TRUE(RouteTopK(logits, s.k, true, &chosen, &weights, MakeI32(row_k, {s.tokens})).ok());

  Tensor offsets = *Tensor::Empty({s.experts + 1}, DType::kI32);
  Tensor rows = *Tensor::Empty({s.tokens * s.k}, DType::kI32);
  Tensor sorted = *Tensor::Empty({s.tokens * s.k}, DType::kF32);
  ASSERT_TRUE(AlignRowsByExpert(chosen, weights, &offsets, &rows, &sorted).ok());
  Tensor out = Make(std::vector<float>(s.tokens * s.hidden, 123.f), {s.tokens, s.hidden});  // overwritten
  ASSERT_TRUE((*grouped)->Forward(x, offsets, rows, sorted, &out).ok());
  // Twice, so the second call runs on the grown workspace.
  ASSERT_TRUE((*grouped)->Forward(x, offsets, rows, sorted, &out).ok());

  Tensor ref = PerExpertLoop(s, gu_linear, down_linear, x, I32s(chosen), F32s(weights));
  int64_t differing = 0;
  for (int64_t i = 0; i < out.numel(); ++i) {
    differing += std::memcmp(out.data<float>() + i, ref.data<float>() + i, 4) != 0;
  }
  EXPECT_EQ(differing, 0) << DTypeName(dtype) << " T=" << s.tokens << " H=" << s.hidden << " I=" << s.inter
                          << " E=" << s.experts << " k=" << s.k << " precision "
                          << (precision == MatmulPrecision::kBf16 ? "bf16" : "f32");
  double norm = 0;
  for (float v : F32s(out)) norm += std::abs(v);
  EXPECT_GT(norm, 0);  // a real result, not all zeros
  ASSERT_TRUE(SetMatmulPrecision(MatmulPrecision::kF32).ok());
}

const Shape kShapes[] = {
    {1, 67, 45, 6, 2},      // batch 1, K odd, I not a multiple of 32, most experts unused
    {3, 64, 40, 8, 3},      // K a multiple of 32, I not
    {17, 95, 33, 9, 4},     // 17 rows, more than a 12-row kernel call
    {60, 2048, 64, 2, 2},   // an expert's rows span several L2 row tiles
};

TEST(GroupedExpertsTest, Bf16WeightsMatchThePerExpertLoopBitForBit) {
  for (const Shape& s : kShapes) ExpectBitIdentical(s, DType::kBF16, MatmulPrecision::kF32);
}

TEST(GroupedExpertsTest, Bf16ComputeMatchesThePerExpertLoopBitForBit) {
  if (!SetMatmulPrecision(MatmulPrecision::kBf16).ok()) GTEST_SKIP() << "no AVX512-BF16 on this CPU or build";
  ASSERT_TRUE(SetMatmulPrecision(MatmulPrecision::kF32).ok());
  for (const Shape& s : kShapes) ExpectBitIdentical(s, DType::kBF16, MatmulPrecision::kBf16);
}

TEST(GroupedExpertsTest, F32WeightsMatchThePerExpertLoopBitForBit) {
  for (const Shape& s : kShapes) ExpectBitIdentical(s, DType::kF32, MatmulPrecision::kF32);
}

TEST(GroupedExpertsTest, NoRoutedRowsGiveZeros) {
  const Shape s{3, 40, 36, 4, 2};
  std::vector<Tensor> gate_up, down;
  MakeExperts(s, DType::kBF16, 5, &gate_up, &down);
  auto grouped = *GroupedExperts::Create(gate_up, down, Device::kCpu);
  Tensor x = Make(Randn(s.tokens * s.hidden, 1), {s.tokens, s.hidden});
  Tensor offsets = MakeI32({0, 0, 0, 0, 0}, {5});
  Tensor rows = MakeI32(std::vector<int32_t>(6, 0), {6});
  Tensor sorted = Make(std::vector<float>(6, 0.f), {6});
  Tensor out = Make(std::vector<float>(s.tokens * s.hidden, 1.f), {s.tokens, s.hidden});
  ASSERT_TRUE(grouped->Forward(x, offsets, rows, sorted, &out).ok());
  for (float v : F32s(out)) EXPECT_EQ(v, 0.f);
}

TEST(GroupedExpertsTest, BadArgumentsAreErrorsNotCrashes) {
  const Shape s{3, 40, 36, 4, 2};
  std::vector<Tensor> gate_up, down;
  MakeExperts(s, DType::kBF16, 5, &gate_up, &down);
  auto grouped = *GroupedExperts::Create(gate_up, down, Device::kCpu);
  Tensor x = Make(Randn(s.tokens * s.hidden, 1), {s.tokens, s.hidden});
  Tensor offsets = MakeI32({0, 2, 2, 4, 6}, {5});
  Tensor rows = MakeI32({0, 1, 0, 2, 1, 2}, {6});
  Tensor sorted = Make({0.5f, 1.f, 0.5f, 0.5f, 0.f, 0.5f}, {6});
  Tensor out = *Tensor::Empty({s.tokens, s.hidden}, DType::kF32);
  ASSERT_TRUE(grouped->Forward(x, offsets, rows, sorted, &out).ok());

  const auto invalid = absl::StatusCode::kInvalidArgument;
  Tensor wrong_h = *Tensor::Empty({s.tokens, s.hidden + 1}, DType::kF32);
  EXPECT_EQ(grouped->Forward(wrong_h, offsets, rows, sorted, &wrong_h).code(), invalid);
  Tensor wrong_out = *Tensor::Empty({s.tokens + 1, s.hidden}, DType::kF32);
  EXPECT_EQ(grouped->Forward(x, offsets, rows, sorted, &wrong_out).code(), invalid);
  EXPECT_EQ(grouped->Forward(x, MakeI32({0, 2, 4, 6}, {4}), rows, sorted, &out).code(), invalid);
  EXPECT_EQ(grouped->Forward(x, offsets, rows, Make({1.f}, {1}), &out).code(), invalid);
  EXPECT_EQ(grouped->Forward(x, offsets, sorted, sorted, &out).code(), invalid);
  Tensor undefined;
  EXPECT_EQ(grouped->Forward(undefined, offsets, rows, sorted, &out).code(), invalid);
  // Contents the device body checks: offsets that decrease or run past the entries, a
  // row outside x.
  EXPECT_EQ(grouped->Forward(x, MakeI32({0, 3, 2, 4, 6}, {5}), rows, sorted, &out).code(), invalid);
  EXPECT_EQ(grouped->Forward(x, MakeI32({1, 2, 2, 4, 6}, {5}), rows, sorted, &out).code(), invalid);
  EXPECT_EQ(grouped->Forward(x, MakeI32({0, 2, 2, 4, 7}, {5}), rows, sorted, &out).code(), invalid);
  EXPECT_EQ(grouped->Forward(x, offsets, MakeI32({0, 1, 0, 3, 1, 2}, {6}), sorted, &out).code(),
            absl::StatusCode::kOutOfRange);

  // Creation: mismatched or missing weights.
  EXPECT_EQ(GroupedExperts::Create({}, {}, Device::kCpu).status().code(), invalid);
  std::vector<Tensor> short_down(down.begin(), down.end() - 1);
  EXPECT_EQ(GroupedExperts::Create(gate_up, short_down, Device::kCpu).status().code(), invalid);
  std::vector<Tensor> swapped = down;
  swapped[1] = gate_up[1];
  EXPECT_EQ(GroupedExperts::Create(gate_up, swapped, Device::kCpu).status().code(), invalid);
  std::vector<Tensor> odd = {*Tensor::Empty({5, s.hidden}, DType::kBF16)};
  std::vector<Tensor> odd_down = {*Tensor::Empty({s.hidden, 2}, DType::kBF16)};
  EXPECT_EQ(GroupedExperts::Create(odd, odd_down, Device::kCpu).status().code(), invalid);
  std::vector<Tensor> ints = {*Tensor::Empty({2 * s.inter, s.hidden}, DType::kI32)};
  std::vector<Tensor> ints_down = {*Tensor::Empty({s.hidden, s.inter}, DType::kI32)};
  EXPECT_EQ(GroupedExperts::Create(ints, ints_down, Device::kCpu).status().code(), invalid);
}

}  // namespace
}  // namespace sluice::kernels
