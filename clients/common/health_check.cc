#include "clients/common/health_check.h"

#include <grpcpp/generic/generic_stub.h>

#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

namespace sluice::clients {

int CheckHealth(const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext* ctx,
                grpc::Status* status) {
  grpc::GenericStub generic(channel);
  grpc::Slice empty("", 0);
  grpc::ByteBuffer request(&empty, 1), response;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  // This grpc++ has no blocking generic call: wait for the callback.
  generic.UnaryCall(ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                    [&](grpc::Status s) {
                      std::lock_guard<std::mutex> lock(mu);
                      *status = s;
                      done = true;
                      cv.notify_one();
                    });
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done; });
  }
  if (!status->ok()) return 0;
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return 0;
  std::string bytes;
  for (const auto& slice : slices) bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  // HealthCheckResponse { ServingStatus status = 1; } → bytes 0x08 <enum>
  return bytes.size() >= 2 && bytes[0] == 0x08 ? bytes[1] : 0;
}

}  // namespace sluice::clients
