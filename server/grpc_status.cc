#include "server/grpc_status.h"

#include "absl/strings/ascii.h"

namespace semshare::server {

grpc::Status ToGrpcStatus(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  // absl::StatusCode and grpc::StatusCode share the canonical numbering (google.rpc.Code).
  return grpc::Status(static_cast<grpc::StatusCode>(static_cast<int>(s.code())),
                      std::string(s.message()));
}

std::string CodeName(grpc::StatusCode code) {
  return absl::AsciiStrToUpper(
      absl::StatusCodeToString(static_cast<absl::StatusCode>(static_cast<int>(code))));
}

}  // namespace semshare::server
