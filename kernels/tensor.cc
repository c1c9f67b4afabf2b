#include "kernels/tensor.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/device_memory.h"
#include "kernels/stream.h"

namespace sluice::kernels {

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32:
    case DType::kI32:
      return 4;
    case DType::kBF16:
    case DType::kF16:
      return 2;
    case DType::kI64:
      return 8;
    case DType::kF8E4M3:
    case DType::kI8:
    case DType::kWeightRowRefs:
      return 1;
  }
  return 0;
}

absl::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "float32";
    case DType::kBF16:
      return "bfloat16";
    case DType::kF16:
      return "float16";
    case DType::kI32:
      return "int32";
    case DType::kI64:
      return "int64";
    case DType::kF8E4M3:
      return "float8_e4m3";
    case DType::kI8:
      return "int8";
    case DType::kWeightRowRefs:
      return "weight_row_refs";
  }
  return "?";
}

absl::string_view DeviceName(Device device) {
  return device == Device::kCpu ? "cpu" : "cuda";
}

Buffer::Buffer(void* data, size_t bytes, Device device, bool owned,
               std::shared_ptr<const void> keepalive)
    : data_(data), bytes_(bytes), device_(device), owned_(owned),
      keepalive_(std::move(keepalive)) {}

Buffer::~Buffer() {
  if (owned_) FreeDeviceMemory(data_, bytes_, device_);
}

absl::StatusOr<std::shared_ptr<Buffer>> Buffer::Allocate(size_t bytes, Device device) {
  auto data = AllocateDeviceMemory(bytes, device);
  if (!data.ok()) return data.status();
  return std::shared_ptr<Buffer>(new Buffer(*data, bytes, device, true, nullptr));
}

std::shared_ptr<Buffer> Buffer::Borrow(void* data, size_t bytes, Device device,
                                       std::shared_ptr<const void> keepalive) {
  return std::shared_ptr<Buffer>(new Buffer(data, bytes, device, false, std::move(keepalive)));
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape_) n *= d;
  return n;
}

absl::StatusOr<Tensor> Tensor::Empty(std::vector<int64_t> shape, DType dtype, Device device) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return absl::InvalidArgumentError("negative tensor dimension");
    n *= d;
  }
  auto buffer = Buffer::Allocate(static_cast<size_t>(n) * DTypeSize(dtype), device);
  if (!buffer.ok()) return buffer.status();
  return FromBuffer(*std::move(buffer), 0, std::move(shape), dtype);
}

absl::StatusOr<Tensor> Tensor::Zeros(std::vector<int64_t> shape, DType dtype, Device device) {
  auto t = Empty(std::move(shape), dtype, device);
  if (!t.ok()) return t.status();
  if (auto s = FillZero(t->raw(), t->bytes(), device); !s.ok()) return s;
  return t;
}

Tensor Tensor::FromBuffer(std::shared_ptr<Buffer> buffer, size_t offset_bytes,
                          std::vector<int64_t> shape, DType dtype) {
  Tensor t;
  t.buffer_ = std::move(buffer);
  t.offset_ = offset_bytes;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::Rows(int64_t start, int64_t count) const {
  Tensor t = *this;
  int64_t row = numel() / (shape_.empty() || shape_[0] == 0 ? 1 : shape_[0]);
  t.offset_ = offset_ + static_cast<size_t>(start * row) * DTypeSize(dtype_);
  t.shape_[0] = count;
  return t;
}

absl::StatusOr<Tensor> Tensor::Reshape(std::vector<int64_t> shape) const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  if (n != numel()) {
    return absl::InvalidArgumentError(absl::StrCat("cannot reshape ", ShapeString(shape_),
                                                   " to ", ShapeString(shape)));
  }
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

std::string Tensor::DebugString() const {
  return absl::StrCat(DTypeName(dtype_), ShapeString(shape_), "@", DeviceName(device()));
}

namespace {

std::atomic<uint64_t> g_device_to_host{0};
std::atomic<uint64_t> g_host_to_device{0};
std::atomic<uint64_t> g_device_to_host_bytes{0};
std::atomic<uint64_t> g_host_to_device_bytes{0};

}  // namespace

TransferCounts GetTransferCounts() {
  TransferCounts c;
  c.device_to_host = g_device_to_host.load(std::memory_order_relaxed);
  c.host_to_device = g_host_to_device.load(std::memory_order_relaxed);
  c.device_to_host_bytes = g_device_to_host_bytes.load(std::memory_order_relaxed);
  c.host_to_device_bytes = g_host_to_device_bytes.load(std::memory_order_relaxed);
  return c;
}

void ResetTransferCounts() {
  g_device_to_host.store(0, std::memory_order_relaxed);
  g_host_to_device.store(0, std::memory_order_relaxed);
  g_device_to_host_bytes.store(0, std::memory_order_relaxed);
  g_host_to_device_bytes.store(0, std::memory_order_relaxed);
}

absl::Status CopyToHost(const Tensor& src, void* dst) {
  if (!src.defined()) return absl::InvalidArgumentError("CopyToHost: undefined tensor");
  g_device_to_host.fetch_add(1, std::memory_order_relaxed);
  g_device_to_host_bytes.fetch_add(src.bytes(), std::memory_order_relaxed);
  if (src.device() == Device::kCpu) {
    if (src.bytes() > 0) std::memcpy(dst, src.raw(), src.bytes());
    return absl::OkStatus();
  }
  return CopyBytesOnStream(dst, Device::kCpu, src.raw(), src.device(), src.bytes(),
                           CurrentStream(src.device()), /*wait=*/true);
}

absl::Status CopyFromHost(const void* src, Tensor* dst) {
  if (dst == nullptr || !dst->defined()) {
    return absl::InvalidArgumentError("CopyFromHost: undefined tensor");
  }
  g_host_to_device.fetch_add(1, std::memory_order_relaxed);
  g_host_to_device_bytes.fetch_add(dst->bytes(), std::memory_order_relaxed);
  if (dst->device() == Device::kCpu) {
    if (dst->bytes() > 0) std::memcpy(dst->raw(), src, dst->bytes());
    return absl::OkStatus();
  }
  // Queued on the stream: later ops on it see the data, and the host buffer may be reused
  // as soon as this returns (the runtime stages pageable memory before returning).
  return CopyBytesOnStream(dst->raw(), dst->device(), src, Device::kCpu, dst->bytes(),
                           CurrentStream(dst->device()), /*wait=*/false);
}

float F16ToF32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ff;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace sluice::kernels
