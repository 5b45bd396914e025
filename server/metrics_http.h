// The /metrics endpoint: a small HTTP/1.1 server that answers Prometheus' scrapes with the text
// exposition format (0.0.4) of a prometheus-cpp Collectable.
//
// Why not prometheus-cpp's Exposer: it serves through civetweb, which Debian builds with a fixed
// 100 KiB thread stack (USE_STACK_SIZE=102400). libcublasLt brings 94 KiB of static TLS, and
// glibc places a thread's static TLS inside its stack, so once the CUDA libraries are linked,
// civetweb's pthread_create fails with EINVAL and /metrics never starts. Threads here use the
// default stack size.
//
// What it serves: GET or HEAD of /metrics (a query string is ignored) -> 200; other paths 404;
// other methods 405; a malformed request line 400; a request head over max_request_bytes 431.
// Every response closes the connection (scrapes are seconds apart; no keep-alive state to
// bound). A client gets io_timeout in total to send its request head and io_timeout to take the
// response, so a slow or silent client holds one handler thread for at most twice that; when
// every handler is busy and the accept queue is full, new connections are closed at once.
#ifndef SEMSHARE_SERVER_METRICS_HTTP_H_
#define SEMSHARE_SERVER_METRICS_HTTP_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "prometheus/collectable.h"

namespace semshare::server {

struct MetricsHttpOptions {
  int threads = 2;  // connection handlers
  int queue = 32;   // accepted connections waiting for a handler
  std::chrono::milliseconds io_timeout{5000};
  size_t max_request_bytes = 8192;  // request line + headers
};

class MetricsHttpServer {
 public:
  // Binds `listen` ("HOST:PORT", "[V6]:PORT"; port 0 picks a free one) and starts serving
  // `collectable`. Unavailable when the address cannot be resolved or bound.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& listen, std::shared_ptr<prometheus::Collectable> collectable,
      const MetricsHttpOptions& options = {});

  // Stops accepting, closes queued connections, joins every thread.
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  int port() const { return port_; }

 private:
  MetricsHttpServer(int listen_fd, int port, std::shared_ptr<prometheus::Collectable> collectable,
                    const MetricsHttpOptions& options);
  void AcceptLoop();
  void HandlerLoop();
  void Serve(int fd);
  std::string Respond(const std::string& head) const;

  const int listen_fd_;
  const int port_;
  const std::shared_ptr<prometheus::Collectable> collectable_;
  const MetricsHttpOptions options_;
  int wake_[2] = {-1, -1};  // a pipe: writing to it wakes the accept loop to stop
  std::atomic<bool> stopping_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<int> pending_;  // accepted connection fds, guarded by mu_
  std::thread acceptor_;
  std::vector<std::thread> handlers_;
};

}  // namespace semshare::server

#endif  // SEMSHARE_SERVER_METRICS_HTTP_H_
