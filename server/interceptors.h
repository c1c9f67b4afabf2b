// Server-side interceptor point. Every RPC passes through the factories returned here
// before it reaches a service, which is where API-key auth and per-RPC metrics hook in.
#ifndef SLUICE_SERVER_INTERCEPTORS_H_
#define SLUICE_SERVER_INTERCEPTORS_H_

#include <memory>
#include <vector>

#include <grpcpp/support/server_interceptor.h>

#include "server/metrics.h"

namespace sluice::server {

std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
MakeInterceptorFactories(Metrics* metrics);

}  // namespace sluice::server

#endif  // SLUICE_SERVER_INTERCEPTORS_H_
