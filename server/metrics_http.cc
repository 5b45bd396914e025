#include "server/metrics_http.h"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string_view>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "prometheus/text_serializer.h"

namespace semshare::server {
namespace {

using Clock = std::chrono::steady_clock;

// Milliseconds left until `deadline`, at least 0.
int RemainingMs(Clock::time_point deadline) {
  const auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left > 0 ? static_cast<int>(left) : 0;
}

// Waits until fd is ready for `events`. False on timeout, error, hang-up, or when wake_fd (the
// stop pipe) became readable.
bool WaitReady(int fd, short events, int wake_fd, Clock::time_point deadline) {
  for (;;) {
    pollfd p[2] = {{fd, events, 0}, {wake_fd, POLLIN, 0}};
    const int n = poll(p, 2, RemainingMs(deadline));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0 || (p[1].revents & POLLIN)) return false;
    return (p[0].revents & events) != 0;
  }
}

std::string Reply(int code, absl::string_view reason, absl::string_view content_type,
                  absl::string_view body, bool head_only, absl::string_view extra_headers = {}) {
  std::string r = absl::StrCat("HTTP/1.1 ", code, " ", reason, "\r\nContent-Type: ", content_type,
                               "\r\nContent-Length: ", body.size(), "\r\nConnection: close\r\n",
                               extra_headers, "\r\n");
  if (!head_only) r.append(body.data(), body.size());
  return r;
}

std::string PlainReply(int code, absl::string_view reason, absl::string_view body,
                       absl::string_view extra_headers = {}) {
  return Reply(code, reason, "text/plain; charset=utf-8", body, false, extra_headers);
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& listen, std::shared_ptr<prometheus::Collectable> collectable,
    const MetricsHttpOptions& options) {
  const size_t colon = listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos || !absl::SimpleAtoi(listen.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address must be HOST:PORT, got '", listen, "'"));
  }
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  const std::string port_str = std::to_string(port);
  if (const int rc =
          getaddrinfo(host.empty() ? nullptr : host.c_str(), port_str.c_str(), &hints, &found);
      rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot resolve metrics address '", listen, "': ", gai_strerror(rc)));
  }
  int fd = -1;
  std::string last_error = "no address";
  for (addrinfo* a = found; a != nullptr && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) {
      last_error = std::strerror(errno);
      continue;
    }
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || ::listen(fd, 128) != 0) {
      last_error = std::strerror(errno);
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(found);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen for metrics on ", listen, ": ", last_error));
  }
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  int bound_port = port;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len) == 0) {
    if (bound.ss_family == AF_INET) {
      bound_port = ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    } else if (bound.ss_family == AF_INET6) {
      bound_port = ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
    }
  }
  std::unique_ptr<MetricsHttpServer> server(
      new MetricsHttpServer(fd, bound_port, std::move(collectable), options));
  if (server->wake_[0] < 0) return absl::InternalError("cannot create the metrics stop pipe");
  return server;
}

MetricsHttpServer::MetricsHttpServer(int listen_fd, int port,
                                     std::shared_ptr<prometheus::Collectable> collectable,
                                     const MetricsHttpOptions& options)
    : listen_fd_(listen_fd), port_(port), collectable_(std::move(collectable)), options_(options) {
  if (pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) {
    wake_[0] = wake_[1] = -1;
    return;  // Start reports it; the destructor sees no threads to join
  }
  acceptor_ = std::thread([this] { AcceptLoop(); });
  for (int i = 0; i < std::max(1, options_.threads); ++i) {
    handlers_.emplace_back([this] { HandlerLoop(); });
  }
}

MetricsHttpServer::~MetricsHttpServer() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  // The pipe stays readable from here on: it wakes the accept loop and every handler's poll.
  if (wake_[1] >= 0) (void)!write(wake_[1], "x", 1);
  cv_.notify_all();
  if (acceptor_.joinable()) acceptor_.join();
  for (std::thread& t : handlers_) t.join();
  for (int fd : pending_) close(fd);
  close(listen_fd_);
  for (int fd : wake_) {
    if (fd >= 0) close(fd);
  }
}

void MetricsHttpServer::AcceptLoop() {
  while (!stopping_) {
    pollfd p[2] = {{listen_fd_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (p[1].revents & POLLIN) return;
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      // Out of descriptors: back off instead of spinning on a listen socket that stays ready.
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      continue;
    }
    std::unique_lock<std::mutex> lock(mu_);
    if (stopping_ || pending_.size() >= static_cast<size_t>(std::max(0, options_.queue))) {
      lock.unlock();
      close(fd);  // every handler busy and the queue full: shed this scrape
      continue;
    }
    pending_.push_back(fd);
    lock.unlock();
    cv_.notify_one();
  }
}

void MetricsHttpServer::HandlerLoop() {
  for (;;) {
    int fd;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !pending_.empty(); });
      if (stopping_) return;
      fd = pending_.front();
      pending_.pop_front();
    }
    Serve(fd);
    close(fd);
  }
}

void MetricsHttpServer::Serve(int fd) {
  std::string head;
  const Clock::time_point read_deadline = Clock::now() + options_.io_timeout;
  std::string response;
  char buf[2048];
  for (;;) {
    if (head.find("\r\n\r\n") != std::string::npos || head.find("\n\n") != std::string::npos) {
      response = Respond(head);
      break;
    }
    if (head.size() > options_.max_request_bytes) {
      response =
          PlainReply(431, "Request Header Fields Too Large",
                     absl::StrCat("request head over ", options_.max_request_bytes, " bytes\n"));
      break;
    }
    if (!WaitReady(fd, POLLIN, wake_[0], read_deadline)) return;  // silent, slow, or stopping
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
    if (n <= 0) return;  // the client went away before finishing its request
    head.append(buf, static_cast<size_t>(n));
  }
  const Clock::time_point write_deadline = Clock::now() + options_.io_timeout;
  size_t sent = 0;
  while (sent < response.size()) {
    const ssize_t n = send(fd, response.data() + sent, response.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!WaitReady(fd, POLLOUT, wake_[0], write_deadline)) return;
    } else {
      return;
    }
  }
  // Lingering close: a client may still be sending (an over-long head); closing with unread
  // input would send a reset that can destroy the answer before the client reads it. So read
  // and drop what comes, briefly and boundedly, until the client closes.
  shutdown(fd, SHUT_WR);
  const Clock::time_point drain_deadline =
      Clock::now() + std::min<Clock::duration>(options_.io_timeout, std::chrono::seconds(1));
  for (size_t drained = 0; drained < (size_t{1} << 20);) {
    if (!WaitReady(fd, POLLIN, wake_[0], drain_deadline)) return;
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
    if (n <= 0) return;
    drained += static_cast<size_t>(n);
  }
}

std::string MetricsHttpServer::Respond(const std::string& head) const {
  const size_t eol = head.find('\n');
  std::string_view line(head.data(), eol);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  const size_t s1 = line.find(' ');
  const size_t s2 = s1 == std::string_view::npos ? s1 : line.find(' ', s1 + 1);
  if (s1 == std::string_view::npos || s2 == std::string_view::npos ||
      line.find(' ', s2 + 1) != std::string_view::npos || s1 == 0 || s2 == s1 + 1 ||
      line.substr(s2 + 1).rfind("HTTP/1.", 0) != 0) {
    return PlainReply(400, "Bad Request", "expected: GET /metrics HTTP/1.1\n");
  }
  const std::string_view method = line.substr(0, s1);
  std::string_view target = line.substr(s1 + 1, s2 - s1 - 1);
  target = target.substr(0, target.find('?'));
  if (method != "GET" && method != "HEAD") {
    return PlainReply(405, "Method Not Allowed", "only GET and HEAD are served\n",
                      "Allow: GET, HEAD\r\n");
  }
  const bool head_only = method == "HEAD";
  if (target != "/metrics") {
    return Reply(404, "Not Found", "text/plain; charset=utf-8", "metrics are served at /metrics\n",
                 head_only);
  }
  const std::string body = prometheus::TextSerializer().Serialize(collectable_->Collect());
  return Reply(200, "OK", "text/plain; version=0.0.4; charset=utf-8", body, head_only);
}

}  // namespace semshare::server
