// Raw allocation per device. The CPU path uses 64-byte aligned host memory; the CUDA
// path lives in cuda/ and is only linked when the CUDA backend is built.
#ifndef SLUICE_KERNELS_DEVICE_MEMORY_H_
#define SLUICE_KERNELS_DEVICE_MEMORY_H_

#include <cstddef>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/tensor.h"

namespace sluice::kernels {

absl::StatusOr<void*> AllocateDeviceMemory(size_t bytes, Device device);
// `bytes` must be the size passed to AllocateDeviceMemory.
void FreeDeviceMemory(void* data, size_t bytes, Device device);
absl::Status FillZero(void* data, size_t bytes, Device device);
// Copies between any two devices (host<->device or same device).
absl::Status CopyBytes(void* dst, Device dst_device, const void* src, Device src_device,
                       size_t bytes);

// Number of CUDA devices present (0 when the backend is not built or no GPU is there).
int CudaDeviceCount();
bool CudaBackendBuilt();

}  // namespace sluice::kernels

#endif  // SLUICE_KERNELS_DEVICE_MEMORY_H_
