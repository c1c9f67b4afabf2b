// Elementwise CUDA kernels behind kernels/cuda/op_bodies_cuda.cc. Plain types only, so
// nvcc never parses Abseil; each launcher returns nullptr or the CUDA error text.
#include <cuda_runtime.h>

#include <cstdint>

namespace sluice::kernels::cuda {
namespace {

constexpr int kThreads = 256;

int Blocks(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 65535 ? blocks : 65535);  // grid-stride loops do the rest
}

__global__ void FillKernel(float* x, int64_t n, float value) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{blockDim.x} * gridDim.x) {
    x[i] = value;
  }
}

__global__ void AddKernel(float* x, const float* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{blockDim.x} * gridDim.x) {
    x[i] += y[i];
  }
}

const char* LastError() {
  cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace

const char* LaunchFill(float* x, int64_t n, float value, void* stream) {
  if (n == 0) return nullptr;
  FillKernel<<<Blocks(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(x, n, value);
  return LastError();
}

const char* LaunchAdd(float* x, const float* y, int64_t n, void* stream) {
  if (n == 0) return nullptr;
  AddKernel<<<Blocks(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(x, y, n);
  return LastError();
}

}  // namespace sluice::kernels::cuda
