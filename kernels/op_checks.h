// Argument checks shared by the device-neutral halves of the ops (ops.cc,
// gated_delta_net.cc). Internal to kernels/.
#ifndef SLUICE_KERNELS_OP_CHECKS_H_
#define SLUICE_KERNELS_OP_CHECKS_H_

#include <initializer_list>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "kernels/tensor.h"

namespace sluice::kernels {

// INVALID_ARGUMENT "op: what" unless ok.
absl::Status Expect(bool ok, absl::string_view op, absl::string_view what);

// Every tensor non-null, defined and on one device (INVALID_ARGUMENT otherwise). Whether
// that device has a body is the dispatcher's answer (dispatch.h), not this check's.
absl::Status CheckDevices(absl::string_view op, std::initializer_list<const Tensor*> tensors);

// CheckDevices, after checking that every tensor is non-null, defined and f32.
absl::Status CheckDevicesF32(absl::string_view op, std::initializer_list<const Tensor*> tensors);

// For an optional tensor argument (e.g. head_skip, row_k): undefined is fine, otherwise it
// must be on `device` with `dtype` and `numel` elements.
absl::Status CheckOptional(absl::string_view op, absl::string_view name, const Tensor& t,
                           Device device, DType dtype, int64_t numel);

// CheckDevices, and the device must be the CPU (UNIMPLEMENTED "<op> has no <device>
// kernel yet" otherwise): for ops that call cpu:: bodies directly instead of
// dispatching through dispatch.h. New ops should dispatch.
absl::Status SameDevice(absl::string_view op, std::initializer_list<const Tensor*> tensors);

// SameDevice, after checking that every tensor is non-null, defined and f32.
absl::Status SameDeviceF32(absl::string_view op, std::initializer_list<const Tensor*> tensors);

}  // namespace sluice::kernels

#endif  // SLUICE_KERNELS_OP_CHECKS_H_
