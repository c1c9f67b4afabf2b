// Small tensor helpers shared by the kernel tests.
#ifndef SLUICE_TESTS_UNIT_TENSOR_TEST_UTIL_H_
#define SLUICE_TESTS_UNIT_TENSOR_TEST_UTIL_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/device_memory.h"
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

// An i32 CPU tensor of `shape` holding v.
inline kernels::Tensor MakeI32(const std::vector<int32_t>& v, std::vector<int64_t> shape) {
  kernels::Tensor t = *kernels::Tensor::Empty(std::move(shape), kernels::DType::kI32);
  EXPECT_EQ(static_cast<size_t>(t.numel()), v.size());
  std::copy(v.begin(), v.end(), t.data<int32_t>());
  return t;
}

// A copy of t (any device) on `device`, through the raw (uncounted) copy.
inline kernels::Tensor CopyTo(const kernels::Tensor& t, kernels::Device device) {
  kernels::Tensor out = *kernels::Tensor::Empty(t.shape(), t.dtype(), device);
  EXPECT_TRUE(kernels::CopyBytes(out.raw(), device, t.raw(), t.device(), t.bytes()).ok());
  return out;
}

// True when a and b (CPU tensors) hold the same bytes.
inline bool BitEqual(const kernels::Tensor& a, const kernels::Tensor& b) {
  return a.bytes() == b.bytes() && a.dtype() == b.dtype() &&
         (a.bytes() == 0 || std::memcmp(a.raw(), b.raw(), a.bytes()) == 0);
}

// Why the cases of `device` cannot run here, or "" when they can.
inline std::string DeviceUnavailableReason(kernels::Device device) {
  if (device == kernels::Device::kCpu) return "";
  if (!kernels::CudaBackendBuilt()) return "the CUDA backend is not built (SLUICE_CUDA off, or no nvcc at configure time)";
  if (kernels::CudaDeviceCount() == 0) return "the CUDA backend is built but no GPU is present";
  return "";
}

}  // namespace sluice::testing

#endif  // SLUICE_TESTS_UNIT_TENSOR_TEST_UTIL_H_
