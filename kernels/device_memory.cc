#include "kernels/device_memory.h"

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace sluice::kernels {

#ifdef SLUICE_WITH_CUDA
namespace cuda {
// Implemented in cuda/device_memory_cuda.cu; each returns nullptr or the CUDA error text.
const char* Allocate(size_t bytes, void** out);
void Free(void* data);
const char* Fill0(void* data, size_t bytes);
const char* Copy(void* dst, bool dst_on_device, const void* src, bool src_on_device,
                 size_t bytes);
int DeviceCount();
}  // namespace cuda
#endif

absl::StatusOr<void*> AllocateDeviceMemory(size_t bytes, Device device) {
  if (device == Device::kCpu) {
    size_t rounded = (bytes + 63) / 64 * 64;
    if (rounded == 0) rounded = 64;
    void* p = std::aligned_alloc(64, rounded);
    if (p == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", bytes, " bytes"));
    }
    return p;
  }
#ifdef SLUICE_WITH_CUDA
  void* p = nullptr;
  if (const char* err = cuda::Allocate(bytes, &p)) {
    return absl::ResourceExhaustedError(absl::StrCat("cudaMalloc(", bytes, "): ", err));
  }
  return p;
#else
  return absl::UnimplementedError("this build has no CUDA backend (configure with nvcc present)");
#endif
}

void FreeDeviceMemory(void* data, Device device) {
  if (device == Device::kCpu) {
    std::free(data);
    return;
  }
#ifdef SLUICE_WITH_CUDA
  cuda::Free(data);
#endif
}

absl::Status FillZero(void* data, size_t bytes, Device device) {
  if (device == Device::kCpu) {
    std::memset(data, 0, bytes);
    return absl::OkStatus();
  }
#ifdef SLUICE_WITH_CUDA
  if (const char* err = cuda::Fill0(data, bytes)) return absl::InternalError(err);
  return absl::OkStatus();
#else
  return absl::UnimplementedError("this build has no CUDA backend");
#endif
}

absl::Status CopyBytes(void* dst, Device dst_device, const void* src, Device src_device,
                       size_t bytes) {
  if (dst_device == Device::kCpu && src_device == Device::kCpu) {
    std::memcpy(dst, src, bytes);
    return absl::OkStatus();
  }
#ifdef SLUICE_WITH_CUDA
  if (const char* err = cuda::Copy(dst, dst_device == Device::kCuda, src,
                                   src_device == Device::kCuda, bytes)) {
    return absl::InternalError(absl::StrCat("cudaMemcpy: ", err));
  }
  return absl::OkStatus();
#else
  return absl::UnimplementedError("this build has no CUDA backend");
#endif
}

int CudaDeviceCount() {
#ifdef SLUICE_WITH_CUDA
  return cuda::DeviceCount();
#else
  return 0;
#endif
}

bool CudaBackendBuilt() {
#ifdef SLUICE_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace sluice::kernels
