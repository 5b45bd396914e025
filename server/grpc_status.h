// The one place an absl::Status becomes a grpc::Status (STYLE.md habit 2), and the canonical
// code names the metrics' code label uses.
#ifndef SEMSHARE_SERVER_GRPC_STATUS_H_
#define SEMSHARE_SERVER_GRPC_STATUS_H_

#include <string>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace semshare::server {

grpc::Status ToGrpcStatus(const absl::Status& s);
// "OK", "INVALID_ARGUMENT", ... (the names of google.rpc.Code).
std::string CodeName(grpc::StatusCode code);

}  // namespace semshare::server

#endif  // SEMSHARE_SERVER_GRPC_STATUS_H_
