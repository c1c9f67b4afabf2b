// One dispatch mechanism for every op (the CTranslate2 DEVICE_DISPATCH pattern, made
// to return absl::Status instead of throwing).
//
// An op is split in three:
//   - the header (ops.h, gated_delta_net.h, ...) declares it;
//   - its device-neutral .cc checks shapes, dtypes and devices, never tensor contents
//     (on a GPU reading them would mean a device-to-host copy), then dispatches;
//   - each device holds a body: an explicit specialisation of a function template
//     `template <Device D> ... NameBody(...)` in cpu/ (and, when built, cuda/).
// The primary template has no body: it answers UNIMPLEMENTED "<op> has no <device>
// kernel yet", so a device's bodies can land one file at a time. The bodies own the
// checks that read tensor contents (token ids in range, block ids, ...), since only
// they can read them cheaply.
//
// The dispatch is a switch over Device with the device as a compile-time constant, so
// it costs what a switch costs: a decode step calls several hundred ops.
//
// Declaring an op's bodies (in a kernels-internal header seen by the neutral .cc and by
// every device file that defines a body):
//   SLUICE_DECLARE_DEVICE_BODY(absl::Status, RmsNorm, "RmsNorm",
//                              const Tensor&, const Tensor&, float, float, Tensor*);
// which declares RmsNormBody<D> and its kCpu specialisation. A CUDA specialisation is
// declared the same way in a cuda/ header included only under SLUICE_WITH_CUDA:
//   template <> absl::Status RmsNormBody<Device::kCuda>(const Tensor&, ...);
// and it must be declared wherever the neutral .cc instantiates the dispatch, or that
// TU would instantiate the UNIMPLEMENTED primary instead.
//
// Dispatching (in the neutral .cc, after the checks):
//   return SLUICE_DEVICE_DISPATCH(out->device(), RmsNormBody<D>(x, weight, eps, off, out));
#ifndef SLUICE_KERNELS_DISPATCH_H_
#define SLUICE_KERNELS_DISPATCH_H_

#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "kernels/tensor.h"

namespace sluice::kernels {

// UNIMPLEMENTED "<op> has no <device> kernel yet".
absl::Status NoKernel(absl::string_view op, Device device);

template <Device D>
using DeviceTag = std::integral_constant<Device, D>;

// Calls fn(DeviceTag<D>{}) for the runtime device `device`. Every device case is
// instantiated; a device whose body is missing reaches the primary template.
template <typename Fn>
inline decltype(auto) DispatchOnDevice(Device device, Fn&& fn) {
  switch (device) {
    case Device::kCuda:
      return fn(DeviceTag<Device::kCuda>{});
    case Device::kCpu:
    default:
      return fn(DeviceTag<Device::kCpu>{});
  }
}

}  // namespace sluice::kernels

// Evaluates the expression in __VA_ARGS__ with `D` bound to `device` as a constant.
#define SLUICE_DEVICE_DISPATCH(device, ...)                                  \
  ::sluice::kernels::DispatchOnDevice((device), [&](auto sluice_device_tag_) { \
    constexpr ::sluice::kernels::Device D = decltype(sluice_device_tag_)::value; \
    return __VA_ARGS__;                                                      \
  })

// Declares `template <Device D> Ret Name##Body(params)` answering UNIMPLEMENTED for
// devices without a body, and its CPU specialisation (defined in cpu/). Ret must be
// constructible from an absl::Status (absl::Status or absl::StatusOr<T>).
// (The primary's parameters are unused by design, hence the pragmas.)
#define SLUICE_DECLARE_DEVICE_BODY(Ret, Name, op_name, ...)                      \
  _Pragma("GCC diagnostic push")                                                 \
  _Pragma("GCC diagnostic ignored \"-Wunused-parameter\"")                       \
  template <::sluice::kernels::Device D>                                         \
  Ret Name##Body(__VA_ARGS__) {                                                  \
    return ::sluice::kernels::NoKernel(op_name, D);                              \
  }                                                                              \
  _Pragma("GCC diagnostic pop")                                                  \
  template <>                                                                    \
  Ret Name##Body<::sluice::kernels::Device::kCpu>(__VA_ARGS__)

#endif  // SLUICE_KERNELS_DISPATCH_H_
