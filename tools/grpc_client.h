// What `semshare client` and `semshare loadgen` share: a channel to a semshare-server from
// --target and the TLS flags, per-call credentials from --api-key, and the flag specs for both.
#ifndef SEMSHARE_TOOLS_GRPC_CLIENT_H_
#define SEMSHARE_TOOLS_GRPC_CLIENT_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"
#include "tools/cli_args.h"

namespace semshare::tools {

// --target, --api-key, --tls-ca, --tls-cert, --tls-key, --timeout-s.
std::vector<FlagSpec> ConnectionFlags();

struct Connection {
  std::shared_ptr<grpc::Channel> channel;
  std::string api_key;   // sent as "authorization: Bearer <key>" when non-empty
  double timeout_s = 0;  // per-call deadline; 0 = none
  // A context with the credentials and deadline of this connection.
  std::unique_ptr<grpc::ClientContext> NewContext() const;
};

// NotFound when a TLS file cannot be read; InvalidArgument for an empty target.
absl::StatusOr<Connection> Connect(const Args& args);

// "CODE: message" of a failed call, e.g. "INVALID_ARGUMENT: prompt is empty; ...".
std::string DescribeStatus(const grpc::Status& s);
std::string CodeName(grpc::StatusCode code);

}  // namespace semshare::tools

#endif  // SEMSHARE_TOOLS_GRPC_CLIENT_H_
