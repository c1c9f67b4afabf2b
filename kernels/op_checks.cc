#include "kernels/op_checks.h"

#include "absl/strings/str_cat.h"

namespace sluice::kernels {

absl::Status Expect(bool ok, absl::string_view op, absl::string_view what) {
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(op, ": ", what));
}

absl::Status SameDevice(absl::string_view op, std::initializer_list<const Tensor*> tensors) {
  const Device d = (*tensors.begin())->device();
  for (const Tensor* t : tensors) {
    if (!t->defined()) return absl::InvalidArgumentError(absl::StrCat(op, ": undefined tensor"));
    if (t->device() != d) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": tensors on different devices"));
    }
  }
  if (d != Device::kCpu) {
    return absl::UnimplementedError(absl::StrCat(op, " has no ", DeviceName(d), " kernel yet"));
  }
  return absl::OkStatus();
}

absl::Status SameDeviceF32(absl::string_view op, std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors) {
    if (t == nullptr || !t->defined()) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": undefined tensor"));
    }
    if (t->dtype() != DType::kF32) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": expected f32 tensors, got ", DTypeName(t->dtype())));
    }
  }
  return SameDevice(op, tensors);
}

}  // namespace sluice::kernels
