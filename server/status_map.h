// The one place an absl::Status becomes a grpc::Status. Every RPC answers through it,
// so the codes documented in proto/sluice/v1/generation.proto hold everywhere.
#ifndef SLUICE_SERVER_STATUS_MAP_H_
#define SLUICE_SERVER_STATUS_MAP_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace sluice::server {

grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace sluice::server

#endif  // SLUICE_SERVER_STATUS_MAP_H_
