// CUDA streams for kernels/stream.cc. Plain types only, so nvcc never parses Abseil.
#include <cuda_runtime.h>

namespace sluice::kernels::cuda {

const char* StreamCreate(void** out) {
  cudaStream_t stream = nullptr;
  // A blocking stream: it stays ordered with the legacy default stream, which the raw
  // synchronous CopyBytes / FillZero (cudaMemcpy, cudaMemset) use.
  cudaError_t err = cudaStreamCreateWithFlags(&stream, cudaStreamDefault);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  *out = stream;
  return nullptr;
}

const char* StreamSynchronize(void* stream) {
  cudaError_t err = cudaStreamSynchronize(static_cast<cudaStream_t>(stream));
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace sluice::kernels::cuda
