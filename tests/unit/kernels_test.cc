// Each CPU op against a plain reference. The other devices are checked against these
// CPU bodies, op by op, in kernels_dispatch_test (BackendOpsTest, parameterised over
// every device built and present).
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/device_memory.h"
#include "kernels/ops.h"
#include "tests/unit/tensor_test_util.h"

namespace sluice::kernels {
namespace {

bool cpu_bf16_available() { return SetMatmulPrecision(MatmulPrecision::kBf16).ok() && SetMatmulPrecision(MatmulPrecision::kF32).ok(); }

using testing::Make;
using testing::Randn;

TEST(KernelsTest, LinearMatchesReferenceForF32AndBf16) {
  const int64_t k = 67, n = 45;  // odd sizes exercise the tails
  auto w = Randn(n * k, 1);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    Tensor weight = *Tensor::Empty({n, k}, dtype);
    std::vector<float> wq(n * k);  // the weight values as stored
    for (int64_t i = 0; i < n * k; ++i) {
      if (dtype == DType::kF32) {
        weight.data<float>()[i] = wq[i] = w[i];
      } else {
        weight.data<uint16_t>()[i] = F32ToBf16(w[i]);
        wq[i] = Bf16ToF32(weight.data<uint16_t>()[i]);
      }
    }
    auto linear = Linear::Create(weight, Device::kCpu);
    ASSERT_TRUE(linear.ok()) << linear.status();
    for (int64_t m : {1, 3, 37}) {
      auto x = Randn(m * k, 2 + m);
      Tensor xt = Make(x, {m, k});
      Tensor y = *Tensor::Empty({m, n}, DType::kF32);
      ASSERT_TRUE((*linear)->Forward(xt, &y).ok());
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          double ref = 0;
          for (int64_t c = 0; c < k; ++c) ref += double(x[i * k + c]) * wq[j * k + c];
          EXPECT_NEAR(y.data<float>()[i * n + j], ref, 1e-4) << DTypeName(dtype) << " m=" << m;
        }
      }
    }
  }
}

TEST(KernelsTest, Bf16LinearRowsDoNotDependOnTheBatch) {
  const int64_t k = 128, n = 64;
  Tensor weight = *Tensor::Empty({n, k}, DType::kBF16);
  auto w = Randn(n * k, 3);
  for (int64_t i = 0; i < n * k; ++i) weight.data<uint16_t>()[i] = F32ToBf16(w[i]);
  auto linear = *Linear::Create(weight, Device::kCpu);
  auto x = Randn(70 * k, 4);
  Tensor all = Make(x, {70, k});
  Tensor y_all = *Tensor::Empty({70, n}, DType::kF32);
  ASSERT_TRUE(linear->Forward(all, &y_all).ok());
  for (int64_t row : {0, 5, 69}) {
    Tensor one = Make(std::vector<float>(x.begin() + row * k, x.begin() + (row + 1) * k), {1, k});
    Tensor y_one = *Tensor::Empty({1, n}, DType::kF32);
    ASSERT_TRUE(linear->Forward(one, &y_one).ok());
    for (int64_t j = 0; j < n; ++j) {
      EXPECT_EQ(y_one.data<float>()[j], y_all.data<float>()[row * n + j]) << "row " << row;
    }
  }
}

TEST(KernelsTest, Bf16ComputeRoundsActivationsAndStaysBatchInvariant) {
  if (!cpu_bf16_available()) GTEST_SKIP() << "this CPU or build has no AVX512-BF16";
  const int64_t k = 97, n = 40;
  Tensor weight = *Tensor::Empty({n, k}, DType::kBF16);
  auto w = Randn(n * k, 11);
  for (int64_t i = 0; i < n * k; ++i) weight.data<uint16_t>()[i] = F32ToBf16(w[i]);
  ASSERT_TRUE(SetMatmulPrecision(MatmulPrecision::kBf16).ok());
  auto linear = Linear::Create(weight, Device::kCpu);
  ASSERT_TRUE(SetMatmulPrecision(MatmulPrecision::kF32).ok());
  ASSERT_TRUE(linear.ok());
  // 1 row, one group of rows, and three groups of unequal size (the kernel takes at
  // most 12 rows at a time).
  for (const int64_t m : {int64_t{1}, int64_t{11}, int64_t{31}}) {
    auto x = Randn(m * k, 12);
    Tensor xt = Make(x, {m, k});
    Tensor y = *Tensor::Empty({m, n}, DType::kF32);
    ASSERT_TRUE((*linear)->Forward(xt, &y).ok());
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double ref = 0;  // the activations rounded to bf16, as the kernel does
        for (int64_t c = 0; c < k; ++c) {
          ref += double(Bf16ToF32(F32ToBf16(x[i * k + c]))) * Bf16ToF32(weight.data<uint16_t>()[j * k + c]);
        }
        EXPECT_NEAR(y.data<float>()[i * n + j], ref, 1e-4) << "m " << m << " row " << i << " col " << j;
      }
      Tensor one = Make(std::vector<float>(x.begin() + i * k, x.begin() + (i + 1) * k), {1, k});
      Tensor y1 = *Tensor::Empty({1, n}, DType::kF32);
      ASSERT_TRUE((*linear)->Forward(one, &y1).ok());
      for (int64_t j = 0; j < n; ++j) EXPECT_EQ(y1.data<float>()[j], y.data<float>()[i * n + j]);
    }
  }
}

TEST(KernelsTest, RmsNormPlainAndZeroCentred) {
  auto x = Randn(3 * 10, 5);
  auto w = Randn(10, 6, 0.1f);
  for (float offset : {0.f, 1.f}) {
    Tensor out = *Tensor::Empty({3, 10}, DType::kF32);
    ASSERT_TRUE(RmsNorm(Make(x, {3, 10}), Make(w, {10}), 1e-6f, offset, &out).ok());
    for (int r = 0; r < 3; ++r) {
      double ss = 0;
      for (int j = 0; j < 10; ++j) ss += x[r * 10 + j] * x[r * 10 + j];
      const double inv = 1 / std::sqrt(ss / 10 + 1e-6);
      for (int j = 0; j < 10; ++j) {
        EXPECT_NEAR(out.data<float>()[r * 10 + j], x[r * 10 + j] * inv * (offset + w[j]), 1e-5);
      }
    }
  }
}

TEST(KernelsTest, PagedAttentionMatchesDenseCausalAttention) {
  const int64_t hq = 4, hkv = 2, d = 8, block = 3, len = 7, past = 4;  // 4 cached + 3 new
  auto k = Randn(len * hkv * d, 7), v = Randn(len * hkv * d, 8), q = Randn(3 * hq * d, 9);
  Tensor kc = *Tensor::Zeros({5, block, hkv, d}, DType::kF32);
  Tensor vc = *Tensor::Zeros({5, block, hkv, d}, DType::kF32);
  std::vector<int32_t> table = {4, 0, 2};  // scattered blocks
  std::vector<int32_t> slots;
  for (int j = 0; j < len; ++j) slots.push_back(table[j / block] * block + j % block);
  Tensor slot_t = *Tensor::Empty({len}, DType::kI32);
  std::copy(slots.begin(), slots.end(), slot_t.data<int32_t>());
  ASSERT_TRUE(WriteKvCache(Make(k, {len, hkv, d}), Make(v, {len, hkv, d}), slot_t, &kc, &vc).ok());
  AttentionSequence seq{0, 3, len, table.data()};
  Tensor out = *Tensor::Empty({3, hq, d}, DType::kF32);
  const float scale = 1 / std::sqrt(float(d));
  ASSERT_TRUE(PagedAttention(Make(q, {3, hq, d}), kc, vc, {seq}, scale, &out).ok());
  for (int i = 0; i < 3; ++i) {
    for (int h = 0; h < hq; ++h) {
      const int g = h / (hq / hkv);
      const int visible = past + i + 1;
      std::vector<double> s(visible);
      double mx = -1e30, z = 0;
      for (int j = 0; j < visible; ++j) {
        double dot = 0;
        for (int c = 0; c < d; ++c) dot += q[(i * hq + h) * d + c] * k[(j * hkv + g) * d + c];
        s[j] = dot * scale;
        mx = std::max(mx, s[j]);
      }
      for (double& e : s) z += e = std::exp(e - mx);
      for (int c = 0; c < d; ++c) {
        double ref = 0;
        for (int j = 0; j < visible; ++j) ref += s[j] / z * v[(j * hkv + g) * d + c];
        EXPECT_NEAR(out.data<float>()[(i * hq + h) * d + c], ref, 1e-5);
      }
    }
  }
}

TEST(KernelsTest, BadArgumentsAreErrorsNotCrashes) {
  Tensor a = *Tensor::Empty({2, 3}, DType::kF32);
  Tensor b = *Tensor::Empty({2, 5}, DType::kF32);
  EXPECT_FALSE(AddInPlace(a, &b).ok());
  Tensor ids = *Tensor::Empty({1}, DType::kI32);
  ids.data<int32_t>()[0] = 99;
  Tensor out = *Tensor::Empty({1, 3}, DType::kF32);
  EXPECT_EQ(EmbeddingLookup(a, ids, &out).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(Linear::Create(a, Device::kCuda).status().code(), absl::StatusCode::kUnimplemented);
}

TEST(KernelsTest, CudaDevicePresence) {
  if (CudaDeviceCount() == 0) {
    GTEST_SKIP() << "no CUDA device present (backend built: " << CudaBackendBuilt()
                 << "); GPU kernels are checked against the CPU on a GPU machine";
  }
  auto t = Tensor::Zeros({4}, DType::kF32, Device::kCuda);
  EXPECT_TRUE(t.ok()) << t.status();
}

}  // namespace
}  // namespace sluice::kernels
