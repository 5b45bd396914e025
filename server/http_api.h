// The HTTP front end: an OpenAI-compatible API (POST /v1/chat/completions, POST /v1/completions,
// streaming as Server-Sent Events or not; GET /v1/models), GET /health and GET /metrics, the
// second thin protocol adapter over serving::Pipeline beside the gRPC one (server/service.h):
// the same API keys (Authorization: Bearer), tenants (one store namespace each), limits and
// validation (JSON becomes the v1::GenerateRequest gRPC takes; server/openai_json.h), metrics
// (requests_total{method="POST /v1/chat/completions", code=...}, Metrics::RecordRequest) and
// cancellation: a client that disconnects turns its request's `cancelled` true, so the engine
// loop stops it and frees its KV at the next iteration.
//
// Library: cpp-httplib (Debian libcpp-httplib-dev), not Boost.Beast: a blocking
// thread-per-connection server is a few lines with it, and our handlers block anyway (they
// wait on the pipeline, which does the work on its own threads). Its thread pool is
// std::thread, so its threads get the default (8 MiB) stack: civetweb, whose fixed 100 KiB stack
// could not hold libcublasLt's static TLS (engine/cuda/README.md), is not involved. Debian 12
// ships 0.11.4, which has no Request::is_connection_closed: a handler finds its connection's
// socket once (the descriptor whose peer and local ports are the request's) and polls it for
// a hang-up while it waits; streams also notice a failed write.
//
// The same class serves --metrics-listen with only /metrics and /health (HttpRoutes::kMetrics).
#ifndef SEMSHARE_SERVER_HTTP_API_H_
#define SEMSHARE_SERVER_HTTP_API_H_

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "prometheus/collectable.h"
#include "server/auth.h"
#include "server/service.h"

namespace httplib {
class Server;
}

namespace semshare::server {

enum class HttpRoutes { kAll, kMetrics };

struct HttpOptions {
  HttpRoutes routes = HttpRoutes::kAll;
  int threads = 136;                          // connections served at once
  int64_t max_body_bytes = int64_t{4} << 20;  // larger bodies: 413
  std::string model_id;                       // the id /v1/models lists and requests name
};

class HttpServer {
 public:
  // Binds `listen` ("HOST:PORT", "[V6]:PORT"; port 0 picks a free one) and serves. `state`
  // (core attached later; /health and the API answer 503 until then) and `metrics` outlive
  // the server. `keys` null: no authentication (loopback only, as gRPC).
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(
      const std::string& listen, ServiceState* state, std::optional<ApiKeys> keys,
      std::shared_ptr<prometheus::Collectable> metrics, const HttpOptions& options);
  // Stops accepting, lets handlers finish, joins the threads.
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const { return port_; }

 private:
  HttpServer() = default;
  std::unique_ptr<httplib::Server> server_;
  std::thread listener_;
  std::atomic<bool> listener_done_{false};  // listen_after_bind returned
  int port_ = 0;
};

}  // namespace semshare::server

#endif  // SEMSHARE_SERVER_HTTP_API_H_
