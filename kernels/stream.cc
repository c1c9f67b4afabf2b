#include "kernels/stream.h"

#include "absl/strings/str_cat.h"

namespace sluice::kernels {

#ifdef SLUICE_WITH_CUDA
namespace cuda {
// Implemented in cuda/stream_cuda.cu; each returns nullptr or the CUDA error text.
const char* StreamCreate(void** out);
const char* StreamSynchronize(void* stream);
}  // namespace cuda
#endif

absl::Status Stream::Synchronize() const {
  if (device_ == Device::kCpu) return absl::OkStatus();
#ifdef SLUICE_WITH_CUDA
  if (const char* err = cuda::StreamSynchronize(native_)) {
    return absl::InternalError(absl::StrCat("cudaStreamSynchronize: ", err));
  }
  return absl::OkStatus();
#else
  return absl::UnimplementedError("this build has no CUDA backend");
#endif
}

const Stream& CurrentStream(Device device) {
  if (device == Device::kCpu) {
    static const Stream* cpu = new Stream(Device::kCpu, nullptr);
    return *cpu;
  }
  static const Stream* cuda_stream = [] {
    void* handle = nullptr;
#ifdef SLUICE_WITH_CUDA
    // Without a GPU creation fails; the legacy default stream (nullptr) then stands in,
    // and every op and copy answers the runtime's error.
    if (cuda::StreamCreate(&handle) != nullptr) handle = nullptr;
#endif
    return new Stream(Device::kCuda, handle);
  }();
  return *cuda_stream;
}

absl::Status Synchronize(Device device) { return CurrentStream(device).Synchronize(); }

}  // namespace sluice::kernels
