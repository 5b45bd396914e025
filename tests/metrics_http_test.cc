// MetricsHttpServer (server/metrics_http.h): what Prometheus' scrape gets, every error answer,
// and that silent or slow clients cannot hold the endpoint or the shutdown for long.
#include "server/metrics_http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "prometheus/counter.h"
#include "prometheus/registry.h"

namespace semshare::server {
namespace {

using Clock = std::chrono::steady_clock;

// A connected loopback socket with a receive timeout; -1 on failure.
int Connect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Everything the server sends until it closes.
std::string ReadAll(int fd) {
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

std::string Exchange(int port, const std::string& request) {
  const int fd = Connect(port);
  if (fd < 0) return "connect failed";
  (void)!send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string r = ReadAll(fd);
  close(fd);
  return r;
}

std::string Body(const std::string& response) {
  const size_t p = response.find("\r\n\r\n");
  return p == std::string::npos ? "" : response.substr(p + 4);
}

class MetricsHttpTest : public ::testing::Test {
 protected:
  void Start(const MetricsHttpOptions& options = {}) {
    registry_ = std::make_shared<prometheus::Registry>();
    prometheus::BuildCounter()
        .Name("test_scrapes_total")
        .Help("a counter for the test")
        .Register(*registry_)
        .Add({{"model", "m"}})
        .Increment(3);
    absl::StatusOr<std::unique_ptr<MetricsHttpServer>> s =
        MetricsHttpServer::Start("127.0.0.1:0", registry_, options);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    ASSERT_GT(server_->port(), 0);
  }
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<MetricsHttpServer> server_;
};

TEST_F(MetricsHttpTest, GetServesTheTextFormat) {
  Start();
  const std::string r = Exchange(
      server_->port(), "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n");
  EXPECT_EQ(r.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << r;
  EXPECT_NE(r.find("Content-Type: text/plain; version=0.0.4"), std::string::npos) << r;
  EXPECT_NE(r.find("Connection: close"), std::string::npos) << r;
  const std::string body = Body(r);
  EXPECT_NE(body.find("# TYPE test_scrapes_total counter"), std::string::npos) << body;
  EXPECT_NE(body.find("test_scrapes_total{model=\"m\"} 3"), std::string::npos) << body;
  EXPECT_NE(r.find("Content-Length: " + std::to_string(body.size()) + "\r\n"), std::string::npos);

  // A query string is ignored; HTTP/1.0 and bare-LF line ends are accepted.
  EXPECT_EQ(
      Exchange(server_->port(), "GET /metrics?name[]=x HTTP/1.0\n\n").rfind("HTTP/1.1 200", 0), 0u);
}

TEST_F(MetricsHttpTest, HeadHasTheLengthButNoBody) {
  Start();
  const std::string get = Exchange(server_->port(), "GET /metrics HTTP/1.1\r\n\r\n");
  const std::string head = Exchange(server_->port(), "HEAD /metrics HTTP/1.1\r\n\r\n");
  EXPECT_EQ(head.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << head;
  EXPECT_TRUE(Body(head).empty()) << head;
  EXPECT_NE(head.find("Content-Length: " + std::to_string(Body(get).size()) + "\r\n"),
            std::string::npos)
      << head;
}

TEST_F(MetricsHttpTest, ErrorsGetTheirCodes) {
  Start();
  const int port = server_->port();
  EXPECT_EQ(Exchange(port, "GET / HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 404 ", 0), 0u);
  EXPECT_EQ(Exchange(port, "GET /metricsX HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 404 ", 0), 0u);
  const std::string post = Exchange(port, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
  EXPECT_EQ(post.rfind("HTTP/1.1 405 ", 0), 0u) << post;
  EXPECT_NE(post.find("Allow: GET, HEAD\r\n"), std::string::npos) << post;
  for (const char* bad :
       {"garbage\r\n\r\n", "GET /metrics\r\n\r\n", "GET  /metrics HTTP/1.1\r\n\r\n",
        "GET /metrics HTTP/1.1 extra\r\n\r\n", "GET /metrics SPDY/3\r\n\r\n"}) {
    EXPECT_EQ(Exchange(port, bad).rfind("HTTP/1.1 400 ", 0), 0u) << bad;
  }
  const std::string huge = "GET /metrics HTTP/1.1\r\nX-Pad: " + std::string(20000, 'a');
  EXPECT_EQ(Exchange(port, huge).rfind("HTTP/1.1 431 ", 0), 0u);
  // After every error the endpoint still serves.
  EXPECT_EQ(Exchange(port, "GET /metrics HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 200 ", 0), 0u);
}

TEST_F(MetricsHttpTest, SilentClientsAreDroppedAfterTheTimeout) {
  MetricsHttpOptions o;
  o.threads = 1;
  o.io_timeout = std::chrono::milliseconds(300);
  Start(o);
  const int silent = Connect(server_->port());
  ASSERT_GE(silent, 0);
  // The only handler is held by the silent client until its 300 ms run out; then this scrape
  // is served.
  const auto t0 = Clock::now();
  const std::string r = Exchange(server_->port(), "GET /metrics HTTP/1.1\r\n\r\n");
  EXPECT_EQ(r.rfind("HTTP/1.1 200 ", 0), 0u) << r;
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(5));
  EXPECT_EQ(ReadAll(silent), "");  // closed without an answer
  close(silent);
}

TEST_F(MetricsHttpTest, StopDoesNotWaitForIdleClients) {
  MetricsHttpOptions o;
  o.io_timeout = std::chrono::seconds(30);
  Start(o);
  const int idle1 = Connect(server_->port());
  const int idle2 = Connect(server_->port());
  ASSERT_GE(idle1, 0);
  ASSERT_GE(idle2, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // both accepted and waiting
  const auto t0 = Clock::now();
  server_.reset();
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(2));
  close(idle1);
  close(idle2);
}

TEST(MetricsHttpStartTest, BadAddressesAreClearErrors) {
  auto registry = std::make_shared<prometheus::Registry>();
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> s =
      MetricsHttpServer::Start("127.0.0.1", registry);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  s = MetricsHttpServer::Start("127.0.0.1:70000", registry);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  s = MetricsHttpServer::Start("no-such-host.invalid:9464", registry);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable) << s.status();

  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> first =
      MetricsHttpServer::Start("127.0.0.1:0", registry);
  ASSERT_TRUE(first.ok()) << first.status();
  s = MetricsHttpServer::Start("127.0.0.1:" + std::to_string((*first)->port()), registry);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(s.status().message().find("cannot listen"), absl::string_view::npos) << s.status();

  // IPv6 literal in brackets (skipped where the host has no IPv6 loopback).
  s = MetricsHttpServer::Start("[::1]:0", registry);
  if (s.ok()) {
    EXPECT_GT((*s)->port(), 0);
  }
}

}  // namespace
}  // namespace semshare::server
