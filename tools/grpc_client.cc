#include "tools/grpc_client.h"

#include <chrono>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace semshare::tools {
namespace {

absl::StatusOr<std::string> ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::vector<FlagSpec> ConnectionFlags() {
  return {
      {"target", "server address HOST:PORT", false, false, "127.0.0.1:50051"},
      {"api-key", "API key, sent as 'authorization: Bearer KEY' ($SEMSHARE_API_KEY)"},
      {"tls-ca", "PEM roots that verify the server; enables TLS"},
      {"tls-cert", "client certificate chain (PEM) for mutual TLS"},
      {"tls-key", "client private key (PEM) for mutual TLS"},
      {"timeout-s", "deadline per call in seconds (0 = none)", false, false, "0"},
  };
}

std::unique_ptr<grpc::ClientContext> Connection::NewContext() const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (!api_key.empty()) ctx->AddMetadata("authorization", "Bearer " + api_key);
  if (timeout_s > 0) {
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::microseconds(static_cast<int64_t>(timeout_s * 1e6)));
  }
  return ctx;
}

absl::StatusOr<Connection> Connect(const Args& args) {
  Connection c;
  const std::string target = args.Str("target");
  if (target.empty()) return absl::InvalidArgumentError("--target is empty");
  c.api_key = args.Str("api-key");
  if (c.api_key.empty()) {
    if (const char* k = std::getenv("SEMSHARE_API_KEY"); k != nullptr) c.api_key = k;
  }
  absl::StatusOr<double> timeout = args.Double("timeout-s");
  if (!timeout.ok()) return timeout.status();
  c.timeout_s = *timeout;
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (args.Has("tls-ca") || args.Has("tls-cert")) {
    grpc::SslCredentialsOptions o;
    if (args.Has("tls-ca")) {
      absl::StatusOr<std::string> ca = ReadAll(args.Str("tls-ca"));
      if (!ca.ok()) return ca.status();
      o.pem_root_certs = *ca;
    }
    if (args.Has("tls-cert")) {
      absl::StatusOr<std::string> cert = ReadAll(args.Str("tls-cert"));
      if (!cert.ok()) return cert.status();
      absl::StatusOr<std::string> key = ReadAll(args.Str("tls-key"));
      if (!key.ok()) return key.status();
      o.pem_cert_chain = *cert;
      o.pem_private_key = *key;
    }
    creds = grpc::SslCredentials(o);
  }
  grpc::ChannelArguments ch_args;
  ch_args.SetMaxReceiveMessageSize(64 << 20);
  c.channel = grpc::CreateCustomChannel(target, creds, ch_args);
  return c;
}

std::string CodeName(grpc::StatusCode code) {
  return absl::AsciiStrToUpper(
      absl::StatusCodeToString(static_cast<absl::StatusCode>(static_cast<int>(code))));
}

std::string DescribeStatus(const grpc::Status& s) {
  return absl::StrCat(CodeName(s.error_code()), ": ", s.error_message());
}

}  // namespace semshare::tools
