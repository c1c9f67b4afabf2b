#include "kernels/device_memory.h"

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>
#include <algorithm>

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

namespace {

// Caches freed CPU blocks by size class. Every engine step allocates the same
// activation buffers again; without reuse each large one is a fresh mmap whose pages the
// kernel must fault in and zero, which cost more than the math in a decode step.
class CpuBlockCache {
 public:
  static CpuBlockCache& Get() {
    static CpuBlockCache* cache = new CpuBlockCache();  // never destroyed: freed at exit
    return *cache;
  }

  // Small blocks go straight to malloc's own bins; large ones are rounded to one of
  // four classes per power of two (at most 25 % slack) so similar sizes share blocks.
  static size_t SizeClass(size_t bytes) {
    size_t rounded = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
    if (rounded < kLargeBytes) return rounded;
    size_t power = size_t{1} << (63 - __builtin_clzll(rounded));
    const size_t step = power / 4;
    return (rounded + step - 1) / step * step;
  }

  void* Allocate(size_t size_class) {
    if (size_class >= kLargeBytes) {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(size_class);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        cached_bytes_ -= size_class;
        return p;
      }
    }
    return std::aligned_alloc(64, size_class);
  }

  void Free(void* p, size_t size_class) {
    if (size_class >= kLargeBytes) {
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_bytes_ + size_class <= kMaxCachedBytes) {
        free_[size_class].push_back(p);
        cached_bytes_ += size_class;
        return;
      }
    }
    std::free(p);
  }

 private:
  static constexpr size_t kLargeBytes = 64 << 10;
  static constexpr size_t kMaxCachedBytes = size_t{1} << 30;
  std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t cached_bytes_ = 0;
};

}  // namespace

absl::StatusOr<void*> AllocateDeviceMemory(size_t bytes, Device device) {
  if (device == Device::kCpu) {
    void* p = CpuBlockCache::Get().Allocate(CpuBlockCache::SizeClass(bytes));
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

void FreeDeviceMemory(void* data, size_t bytes, Device device) {
  if (device == Device::kCpu) {
    CpuBlockCache::Get().Free(data, CpuBlockCache::SizeClass(bytes));
    return;
  }
#ifdef SLUICE_WITH_CUDA
  cuda::Free(data);
#endif
}

absl::Status FillZero(void* data, size_t bytes, Device device) {
  if (bytes == 0) return absl::OkStatus();  // empty tensors may have null data
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
  if (bytes == 0) return absl::OkStatus();  // empty tensors may have null data
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
