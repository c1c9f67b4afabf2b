#include "kernels/device_memory.h"

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/stream.h"

namespace sluice::kernels {

#ifdef SLUICE_WITH_CUDA
namespace cuda {
// Implemented in cuda/device_memory_cuda.cu; each returns nullptr or the CUDA error text.
const char* Allocate(size_t bytes, void** out);
void Free(void* data);
const char* Fill0(void* data, size_t bytes);
const char* Copy(void* dst, bool dst_on_device, const void* src, bool src_on_device,
                 size_t bytes);
const char* CopyAsync(void* dst, bool dst_on_device, const void* src, bool src_on_device,
                      size_t bytes, void* stream, bool wait);
int DeviceCount();
}  // namespace cuda
#endif

namespace {

void* CpuAllocate(size_t bytes) { return std::aligned_alloc(64, bytes); }
void CpuFree(void* p) { std::free(p); }

#ifdef SLUICE_WITH_CUDA
void* CudaAllocate(size_t bytes) {
  void* p = nullptr;
  return cuda::Allocate(bytes, &p) == nullptr ? p : nullptr;
}
void CudaFree(void* p) { cuda::Free(p); }
#endif

constexpr size_t kLargeBytes = 64 << 10;

// Caches freed blocks of one device by size class (DeviceMemorySizeClass).
class BlockCache {
 public:
  // Blocks of a class under min_cached_class go straight to the device allocator (on the
  // CPU, malloc's own bins serve small blocks well).
  BlockCache(void* (*allocate)(size_t), void (*free)(void*), size_t min_cached_class,
             size_t max_cached_bytes)
      : allocate_(allocate), free_fn_(free), min_cached_class_(min_cached_class),
        max_cached_bytes_(max_cached_bytes) {}

  void* Allocate(size_t size_class) {
    if (size_class >= min_cached_class_) {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(size_class);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        cached_bytes_ -= size_class;
        --cached_blocks_;
        ++hits_;
        return p;
      }
      ++misses_;
    }
    return allocate_(size_class);
  }

  void Free(void* p, size_t size_class) {
    if (size_class >= min_cached_class_) {
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_bytes_ + size_class <= max_cached_bytes_) {
        free_[size_class].push_back(p);
        cached_bytes_ += size_class;
        ++cached_blocks_;
        return;
      }
    }
    free_fn_(p);
  }

  DeviceMemoryStats Stats() {
    std::lock_guard<std::mutex> lock(mu_);
    DeviceMemoryStats s;
    s.hits = hits_;
    s.misses = misses_;
    s.cached_bytes = cached_bytes_;
    s.cached_blocks = cached_blocks_;
    return s;
  }

  void Release() {
    std::unordered_map<size_t, std::vector<void*>> blocks;
    {
      std::lock_guard<std::mutex> lock(mu_);
      blocks.swap(free_);
      cached_bytes_ = 0;
      cached_blocks_ = 0;
    }
    for (auto& [size_class, list] : blocks) {
      for (void* p : list) free_fn_(p);
    }
  }

 private:
  void* (*allocate_)(size_t);
  void (*free_fn_)(void*);
  const size_t min_cached_class_;
  const size_t max_cached_bytes_;
  std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t cached_bytes_ = 0;
  size_t cached_blocks_ = 0;
  uint64_t hits_ = 0;
  uint64_t misses_ = 0;
};

BlockCache& CpuCache() {
  static BlockCache* cache =  // never destroyed: freed at exit
      new BlockCache(&CpuAllocate, &CpuFree, kLargeBytes, size_t{1} << 30);
  return *cache;
}

#ifdef SLUICE_WITH_CUDA
// Every CUDA block is cached, small ones too: cudaMalloc of any size costs a sync.
BlockCache& CudaCache() {
  static BlockCache* cache = new BlockCache(&CudaAllocate, &CudaFree, 0, size_t{4} << 30);
  return *cache;
}
#endif

}  // namespace

size_t DeviceMemorySizeClass(size_t bytes) {
  size_t rounded = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
  if (rounded < kLargeBytes) return rounded;
  size_t power = size_t{1} << (63 - __builtin_clzll(rounded));
  const size_t step = power / 4;
  return (rounded + step - 1) / step * step;
}

absl::StatusOr<void*> AllocateDeviceMemory(size_t bytes, Device device) {
  if (device == Device::kCpu) {
    void* p = CpuCache().Allocate(DeviceMemorySizeClass(bytes));
    if (p == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", bytes, " bytes"));
    }
    return p;
  }
#ifdef SLUICE_WITH_CUDA
  void* p = CudaCache().Allocate(DeviceMemorySizeClass(bytes));
  if (p == nullptr) {
    // Out of device memory, perhaps because the cache holds it: give it back and retry.
    CudaCache().Release();
    p = CudaCache().Allocate(DeviceMemorySizeClass(bytes));
  }
  if (p == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat("cudaMalloc(", bytes, ") failed"));
  }
  return p;
#else
  return absl::UnimplementedError("this build has no CUDA backend (configure with nvcc present)");
#endif
}

void FreeDeviceMemory(void* data, size_t bytes, Device device) {
  if (device == Device::kCpu) {
    CpuCache().Free(data, DeviceMemorySizeClass(bytes));
    return;
  }
#ifdef SLUICE_WITH_CUDA
  CudaCache().Free(data, DeviceMemorySizeClass(bytes));
#endif
}

DeviceMemoryStats GetDeviceMemoryStats(Device device) {
  if (device == Device::kCpu) return CpuCache().Stats();
#ifdef SLUICE_WITH_CUDA
  return CudaCache().Stats();
#else
  return DeviceMemoryStats{};
#endif
}

void ReleaseCachedDeviceMemory(Device device) {
  if (device == Device::kCpu) {
    CpuCache().Release();
    return;
  }
#ifdef SLUICE_WITH_CUDA
  CudaCache().Release();
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

absl::Status CopyBytesOnStream(void* dst, Device dst_device, const void* src,
                               Device src_device, size_t bytes, const Stream& stream,
                               bool wait) {
  if (bytes == 0) return absl::OkStatus();
  if (dst_device == Device::kCpu && src_device == Device::kCpu) {
    std::memcpy(dst, src, bytes);
    return absl::OkStatus();
  }
#ifdef SLUICE_WITH_CUDA
  if (const char* err = cuda::CopyAsync(dst, dst_device == Device::kCuda, src,
                                        src_device == Device::kCuda, bytes,
                                        stream.native_handle(), wait)) {
    return absl::InternalError(absl::StrCat("cudaMemcpyAsync: ", err));
  }
  return absl::OkStatus();
#else
  (void)stream;
  (void)wait;
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
