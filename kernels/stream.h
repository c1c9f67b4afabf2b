// Ordering of device work. Every op of a device is queued on that device's current
// stream, in call order; the host waits only where it must read a result (CopyToHost in
// tensor.h) or calls Synchronize. On the CPU ops run synchronously on the calling
// thread, so a stream is a no-op there; on CUDA it wraps a cudaStream_t (cuda/), so a
// GPU step can be queued whole and synchronised once, or captured as a graph.
#ifndef SLUICE_KERNELS_STREAM_H_
#define SLUICE_KERNELS_STREAM_H_

#include "absl/status/status.h"
#include "kernels/tensor.h"

namespace sluice::kernels {

class Stream {
 public:
  Stream(Device device, void* native_handle) : device_(device), native_(native_handle) {}
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  Device device() const { return device_; }
  // The device's own handle: a cudaStream_t for CUDA (nullptr is the legacy default
  // stream), nullptr on the CPU.
  void* native_handle() const { return native_; }
  // Returns once every op queued on the stream has finished (OK at once on the CPU).
  absl::Status Synchronize() const;

 private:
  Device device_;
  void* native_;
};

// The stream every op on `device` is queued on: one per device for the process, made on
// first use (for CUDA, a stream of the current GPU when one is present; it is ordered
// with the legacy default stream that the raw CopyBytes and FillZero use).
// Kernels and counted transfers all use it, which is what makes the caching allocator's
// reuse of freed blocks safe (device_memory.h).
const Stream& CurrentStream(Device device);

// CurrentStream(device).Synchronize().
absl::Status Synchronize(Device device);

}  // namespace sluice::kernels

#endif  // SLUICE_KERNELS_STREAM_H_
