// Small tensor helpers shared by the kernel tests.
#ifndef SLUICE_TESTS_UNIT_TENSOR_TEST_UTIL_H_
#define SLUICE_TESTS_UNIT_TENSOR_TEST_UTIL_H_

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/tensor.h"

namespace sluice::testing {

// n values drawn from N(0, scale²) by a generator seeded with `seed`.
inline std::vector<float> Randn(int64_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, scale);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = normal(rng);
  return v;
}

// An f32 CPU tensor of `shape` holding v.
inline kernels::Tensor Make(const std::vector<float>& v, std::vector<int64_t> shape) {
  kernels::Tensor t = *kernels::Tensor::Empty(std::move(shape), kernels::DType::kF32);
  EXPECT_EQ(static_cast<size_t>(t.numel()), v.size());
  std::copy(v.begin(), v.end(), t.data<float>());
  return t;
}

}  // namespace sluice::testing

#endif  // SLUICE_TESTS_UNIT_TENSOR_TEST_UTIL_H_
