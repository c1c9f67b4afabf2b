// A tensor is a typed, shaped view into a device buffer. Every tensor carries its
// device, so engine code can stay device-neutral and ops can dispatch on it.
#ifndef SLUICE_KERNELS_TENSOR_H_
#define SLUICE_KERNELS_TENSOR_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace sluice::kernels {

enum class Device { kCpu, kCuda };
// kI64 holds counters that must not wrap (expert token counts). kF8E4M3 is OCP fp8
// E4M3 ("e4m3fn": no infinities, max 448), one byte; kernels/fp8.h converts it.
// kI8 holds int8 weights quantized at load (an embedding table; see ops.h).
// kWeightRowRefs: a [N, K] weight whose rows are references into a pre-quantized
// checkpoint weight (kernels/prequantized_weight.h), one byte per element so row copies
// and ConcatRows move them as they move weights; only Linear::Create reads them.
enum class DType { kF32, kBF16, kF16, kI32, kI64, kF8E4M3, kI8, kWeightRowRefs };

size_t DTypeSize(DType dtype);
absl::string_view DTypeName(DType dtype);
absl::string_view DeviceName(Device device);

// Storage owned by (or borrowed from) one device. Borrowed storage keeps its owner
// alive through `keepalive`, e.g. a memory-mapped safetensors file.
class Buffer {
 public:
  static absl::StatusOr<std::shared_ptr<Buffer>> Allocate(size_t bytes, Device device);
  static std::shared_ptr<Buffer> Borrow(void* data, size_t bytes, Device device,
                                        std::shared_ptr<const void> keepalive);
  ~Buffer();
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  Buffer(void* data, size_t bytes, Device device, bool owned,
         std::shared_ptr<const void> keepalive);
  void* data_;
  size_t bytes_;
  Device device_;
  bool owned_;
  std::shared_ptr<const void> keepalive_;
};

class Tensor {
 public:
  Tensor() = default;
  // Allocates uninitialised storage.
  static absl::StatusOr<Tensor> Empty(std::vector<int64_t> shape, DType dtype,
                                      Device device = Device::kCpu);
  // Allocates zero-filled storage.
  static absl::StatusOr<Tensor> Zeros(std::vector<int64_t> shape, DType dtype,
                                      Device device = Device::kCpu);
  static Tensor FromBuffer(std::shared_ptr<Buffer> buffer, size_t offset_bytes,
                           std::vector<int64_t> shape, DType dtype);

  bool defined() const { return buffer_ != nullptr; }
  Device device() const { return buffer_ ? buffer_->device() : Device::kCpu; }
  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const { return shape_[i < 0 ? shape_.size() + i : i]; }
  int64_t numel() const;
  size_t bytes() const { return static_cast<size_t>(numel()) * DTypeSize(dtype_); }

  void* raw() const { return static_cast<char*>(buffer_->data()) + offset_; }
  template <typename T>
  T* data() const {
    return static_cast<T*>(raw());
  }

  // Rows [start, start + count) along dimension 0; shares storage.
  Tensor Rows(int64_t start, int64_t count) const;
  // Same storage, new shape with the same element count.
  absl::StatusOr<Tensor> Reshape(std::vector<int64_t> shape) const;

  std::string DebugString() const;

 private:
  std::shared_ptr<Buffer> buffer_;
  size_t offset_ = 0;
  std::vector<int64_t> shape_;
  DType dtype_ = DType::kF32;
};

std::string ShapeString(const std::vector<int64_t>& shape);

// Counted transfers between the host and a tensor's device. Engine code moves data in
// and out of a step through these, never through raw CopyBytes (device_memory.h), so a
// test can count the synchronisation points of a forward pass: every call counts one
// transfer, even when the device is the CPU and the copy is a memcpy, because on a GPU
// that call site is where the host would wait (device to host) or upload (host to device).
// CopyToHost orders the copy after the work queued on the device's current stream
// (stream.h) and returns when the bytes are on the host.
struct TransferCounts {
  uint64_t device_to_host = 0;  // calls of CopyToHost
  uint64_t host_to_device = 0;  // calls of CopyFromHost
  uint64_t device_to_host_bytes = 0;
  uint64_t host_to_device_bytes = 0;
};
// Process-wide, relaxed atomics: read them around a region with no other step running.
TransferCounts GetTransferCounts();
void ResetTransferCounts();

// dst: src.bytes() bytes of host memory.
absl::Status CopyToHost(const Tensor& src, void* dst);
// src: dst->bytes() bytes of host memory.
absl::Status CopyFromHost(const void* src, Tensor* dst);

// Typed conveniences: the element size must match the tensor's dtype.
template <typename T>
absl::Status CopyToHost(const Tensor& src, std::vector<T>* dst) {
  if (!src.defined() || sizeof(T) != DTypeSize(src.dtype())) {
    return absl::InvalidArgumentError("CopyToHost: element size does not match the tensor's dtype");
  }
  dst->resize(static_cast<size_t>(src.numel()));
  return CopyToHost(src, static_cast<void*>(dst->data()));
}
template <typename T>
absl::Status CopyFromHost(absl::Span<const T> src, Tensor* dst) {
  if (dst == nullptr || !dst->defined() || sizeof(T) != DTypeSize(dst->dtype()) ||
      static_cast<int64_t>(src.size()) != dst->numel()) {
    return absl::InvalidArgumentError("CopyFromHost: size or element size does not match the tensor");
  }
  return CopyFromHost(static_cast<const void*>(src.data()), dst);
}
// A new tensor of `shape` on `device` holding `values` (one counted upload).
template <typename T>
absl::StatusOr<Tensor> TensorFromHost(absl::Span<const T> values, std::vector<int64_t> shape,
                                      DType dtype, Device device) {
  auto t = Tensor::Empty(std::move(shape), dtype, device);
  if (!t.ok()) return t.status();
  if (auto s = CopyFromHost(values, &*t); !s.ok()) return s;
  return t;
}

// bf16 <-> f32 helpers (round to nearest even, NaN kept quiet).
inline float Bf16ToF32(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}
inline uint16_t F32ToBf16(float f) {
  uint32_t bits;
  __builtin_memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}
float F16ToF32(uint16_t v);

}  // namespace sluice::kernels

#endif  // SLUICE_KERNELS_TENSOR_H_
