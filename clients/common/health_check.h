// grpc.health.v1.Health/Check for the whole server (empty service name), without the
// health proto: the request is empty and the response's only field,
// `ServingStatus status = 1`, is decoded by hand. Shared by the CLI and the tests.
#ifndef SLUICE_CLIENTS_COMMON_HEALTH_CHECK_H_
#define SLUICE_CLIENTS_COMMON_HEALTH_CHECK_H_

#include <grpcpp/grpcpp.h>

#include <memory>

namespace sluice::clients {

// The server's ServingStatus: 0 UNKNOWN, 1 SERVING, 2 NOT_SERVING, 3 SERVICE_UNKNOWN.
// On an RPC error *status is set and 0 is returned.
int CheckHealth(const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext* ctx,
                grpc::Status* status);

}  // namespace sluice::clients

#endif  // SLUICE_CLIENTS_COMMON_HEALTH_CHECK_H_
