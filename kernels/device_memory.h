// Raw allocation per device, through one caching allocator per device with the same
// size classes: the CPU's blocks are 64-byte aligned host memory, the CUDA ones come
// from cuda/ (only linked when the CUDA backend is built).
//
// Why cache: every engine step allocates the same activation buffers again. On the CPU
// each large fresh block is an mmap whose pages the kernel must fault in and zero (more
// than the math of a decode step); on a GPU cudaMalloc/cudaFree synchronise the device.
// A freed CUDA block may be handed out again while a kernel that used it is still
// queued: that is safe because every op of a device runs on its one current stream
// (stream.h), in order, so the new owner's work runs after the old owner's.
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
// Copies between any two devices (host<->device or same device), synchronously.
// Raw and uncounted: for loading weights and for kernels/ internals. Engine code that
// moves step data between the host and a device must use the counted CopyToHost /
// CopyFromHost of tensor.h instead, so that the transfer tests see it.
absl::Status CopyBytes(void* dst, Device dst_device, const void* src, Device src_device,
                       size_t bytes);

class Stream;
// CopyBytes queued on `stream` (its device is the non-host side). With wait, returns
// once the bytes have arrived (what a device-to-host copy needs); without, may return
// while the copy is still queued (the host source may be reused at once). Uncounted.
absl::Status CopyBytesOnStream(void* dst, Device dst_device, const void* src,
                               Device src_device, size_t bytes, const Stream& stream, bool wait);

// The caching allocator's rounding: sizes under 64 KiB round up to 64 bytes; larger ones
// to one of four classes per power of two (at most 25 % slack), so similar sizes share
// blocks. The same classes on every device.
size_t DeviceMemorySizeClass(size_t bytes);

struct DeviceMemoryStats {
  uint64_t hits = 0;          // allocations served from the cache
  uint64_t misses = 0;        // cacheable allocations that went to the device allocator
  size_t cached_bytes = 0;    // bytes held in the cache now (freed, not yet reused)
  size_t cached_blocks = 0;
};
DeviceMemoryStats GetDeviceMemoryStats(Device device);
// Returns every cached block of `device` to its allocator (hits and misses stay).
void ReleaseCachedDeviceMemory(Device device);

// Number of CUDA devices present (0 when the backend is not built or no GPU is there).
int CudaDeviceCount();
bool CudaBackendBuilt();

}  // namespace sluice::kernels

#endif  // SLUICE_KERNELS_DEVICE_MEMORY_H_
