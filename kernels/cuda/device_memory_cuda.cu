// CUDA memory for the device-neutral Buffer (kernels/device_memory.cc caches the blocks).
// Compute bodies for CUDA land one op at a time (kernels/dispatch.h); an op without one
// answers UNIMPLEMENTED for a CUDA tensor. This file keeps to plain types so nvcc never has
// to parse Abseil; kernels/device_memory.cc turns the results into absl::Status.
#include <cuda_runtime.h>

#include <cstddef>

namespace sluice::kernels::cuda {

const char* Allocate(size_t bytes, void** out) {
  cudaError_t err = cudaMalloc(out, bytes == 0 ? 1 : bytes);
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

void Free(void* data) { cudaFree(data); }

const char* Fill0(void* data, size_t bytes) {
  cudaError_t err = cudaMemset(data, 0, bytes);
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

const char* Copy(void* dst, bool dst_on_device, const void* src, bool src_on_device,
                 size_t bytes) {
  cudaMemcpyKind kind = dst_on_device ? (src_on_device ? cudaMemcpyDeviceToDevice
                                                       : cudaMemcpyHostToDevice)
                                      : (src_on_device ? cudaMemcpyDeviceToHost
                                                       : cudaMemcpyHostToHost);
  cudaError_t err = cudaMemcpy(dst, src, bytes, kind);
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

const char* CopyAsync(void* dst, bool dst_on_device, const void* src, bool src_on_device,
                      size_t bytes, void* stream, bool wait) {
  cudaMemcpyKind kind = dst_on_device ? (src_on_device ? cudaMemcpyDeviceToDevice
                                                       : cudaMemcpyHostToDevice)
                                      : (src_on_device ? cudaMemcpyDeviceToHost
                                                       : cudaMemcpyHostToHost);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  cudaError_t err = cudaMemcpyAsync(dst, src, bytes, kind, s);
  if (err == cudaSuccess && wait) err = cudaStreamSynchronize(s);
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

int DeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

}  // namespace sluice::kernels::cuda
