#include "kernels/op_checks.h"

#include "absl/strings/str_cat.h"
#include "kernels/dispatch.h"
#include "kernels/status_macros.h"

namespace sluice::kernels {

absl::Status Expect(bool ok, absl::string_view op, absl::string_view what) {
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(op, ": ", what));
}

absl::Status NoKernel(absl::string_view op, Device device) {
  return absl::UnimplementedError(absl::StrCat(op, " has no ", DeviceName(device), " kernel yet"));
}

absl::Status CheckDevices(absl::string_view op, std::initializer_list<const Tensor*> tensors) {
  const Tensor* first = *tensors.begin();
  if (first == nullptr) return absl::InvalidArgumentError(absl::StrCat(op, ": null tensor"));
  const Device d = first->device();
  for (const Tensor* t : tensors) {
    if (t == nullptr) return absl::InvalidArgumentError(absl::StrCat(op, ": null tensor"));
    if (!t->defined()) return absl::InvalidArgumentError(absl::StrCat(op, ": undefined tensor"));
    if (t->device() != d) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": tensors on different devices"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckDevicesF32(absl::string_view op, std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors) {
    if (t == nullptr || !t->defined()) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": undefined tensor"));
    }
    if (t->dtype() != DType::kF32) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": expected f32 tensors, got ", DTypeName(t->dtype())));
    }
  }
  return CheckDevices(op, tensors);
}

absl::Status CheckOptional(absl::string_view op, absl::string_view name, const Tensor& t,
                           Device device, DType dtype, int64_t numel) {
  if (!t.defined()) return absl::OkStatus();
  if (t.device() != device) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", name, " is on another device"));
  }
  if (t.dtype() != dtype || t.numel() != numel) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", name, " must be ", DTypeName(dtype),
                                                   " with ", numel, " elements, got ",
                                                   t.DebugString()));
  }
  return absl::OkStatus();
}

absl::Status SameDevice(absl::string_view op, std::initializer_list<const Tensor*> tensors) {
  SLUICE_RETURN_IF_ERROR(CheckDevices(op, tensors));
  const Device d = (*tensors.begin())->device();
  if (d != Device::kCpu) return NoKernel(op, d);
  return absl::OkStatus();
}

absl::Status SameDeviceF32(absl::string_view op, std::initializer_list<const Tensor*> tensors) {
  SLUICE_RETURN_IF_ERROR(CheckDevicesF32(op, tensors));
  return SameDevice(op, tensors);
}

}  // namespace sluice::kernels
