// Declarations of the CUDA op bodies (kernels/op_bodies.h; the pattern is in
// kernels/dispatch.h). Included by op_bodies.h only when the CUDA backend is built, so
// that every translation unit that dispatches sees the same specialisations. An op
// without a line here answers UNIMPLEMENTED "<op> has no cuda kernel yet".
//
// To land a body: declare it here, e.g.
//   template <> absl::Status RmsNormBody<Device::kCuda>(const Tensor& x, const Tensor& weight,
//                                                      float eps, float weight_offset, Tensor* out);
// define it in a host .cc under cuda/ that launches a plain-typed kernel from a .cu file
// (nvcc never parses Abseil), on CurrentStream(Device::kCuda).native_handle(), and add
// both files to kernels/CMakeLists.txt under if(SLUICE_CUDA).
#ifndef SLUICE_KERNELS_CUDA_OP_BODIES_CUDA_H_
#define SLUICE_KERNELS_CUDA_OP_BODIES_CUDA_H_

#include "kernels/op_bodies.h"

namespace sluice::kernels {

// cuda/op_bodies_cuda.cc
template <>
absl::Status FillConstantBody<Device::kCuda>(float value, Tensor* x);
template <>
absl::Status AddInPlaceBody<Device::kCuda>(const Tensor& y, Tensor* x);

}  // namespace sluice::kernels

#endif  // SLUICE_KERNELS_CUDA_OP_BODIES_CUDA_H_
