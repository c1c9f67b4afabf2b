// CUDA op bodies (declared in op_bodies_cuda.h): host code that checks what reads
// tensor contents (nothing, for these) and launches the plain-typed kernels of the .cu
// files on the device's current stream. Nothing here waits for the GPU.
#include "kernels/cuda/op_bodies_cuda.h"

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/stream.h"

namespace sluice::kernels {
namespace cuda {
// cuda/elementwise_cuda.cu
const char* LaunchFill(float* x, int64_t n, float value, void* stream);
const char* LaunchAdd(float* x, const float* y, int64_t n, void* stream);
}  // namespace cuda

namespace {

absl::Status Launched(absl::string_view op, const char* err) {
  if (err == nullptr) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(op, " on cuda: ", err));
}

void* StreamHandle() { return CurrentStream(Device::kCuda).native_handle(); }

}  // namespace

template <>
absl::Status FillConstantBody<Device::kCuda>(float value, Tensor* x) {
  return Launched("FillConstant",
                  cuda::LaunchFill(x->data<float>(), x->numel(), value, StreamHandle()));
}

template <>
absl::Status AddInPlaceBody<Device::kCuda>(const Tensor& y, Tensor* x) {
  if (x->dtype() != DType::kF32 || y.dtype() != DType::kF32) {
    return absl::InvalidArgumentError("AddInPlace: f32 tensors expected on cuda");
  }
  return Launched("AddInPlace", cuda::LaunchAdd(x->data<float>(), y.data<float>(), x->numel(),
                                                StreamHandle()));
}

}  // namespace sluice::kernels
