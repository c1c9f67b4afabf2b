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

// Every tensor defined and on one device, and that device has a kernel for op
// (UNIMPLEMENTED otherwise).
absl::Status SameDevice(absl::string_view op, std::initializer_list<const Tensor*> tensors);

// SameDevice, after checking that every tensor is non-null, defined and f32.
absl::Status SameDeviceF32(absl::string_view op, std::initializer_list<const Tensor*> tensors);

}  // namespace sluice::kernels

#endif  // SLUICE_KERNELS_OP_CHECKS_H_
