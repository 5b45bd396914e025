// The HTTP listener (server/http_api.h) without a model: --metrics-listen's routes (/metrics in
// the Prometheus text format, /health, everything else a 404 in OpenAI's error JSON), the API
// listener before the model is attached (503 with the error JSON, /health "loading") and while
// draining, an oversize body (413), 64 concurrent scrapes all answered (the listen backlog and
// the thread pool), and start-up errors (address in use, malformed address). Also under TSan.
#include "server/http_api.h"

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "prometheus/counter.h"
#include "prometheus/registry.h"

namespace semshare::server {
namespace {

using ::testing::HasSubstr;

struct Fixture {
  ServerConfig config;
  ServiceState state{config, std::nullopt};
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  Fixture() {
    prometheus::BuildCounter()
        .Name("semshare_test_total")
        .Help("test")
        .Register(*registry)
        .Add({{"model", "m"}})
        .Increment(3);
  }
  std::unique_ptr<HttpServer> Start(HttpRoutes routes, int64_t max_body = 1024) {
    HttpOptions o;
    o.routes = routes;
    o.threads = 8;
    o.max_body_bytes = max_body;
    o.model_id = "m";
    absl::StatusOr<std::unique_ptr<HttpServer>> s =
        HttpServer::Start("127.0.0.1:0", &state, std::nullopt, registry, o);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  }
};

nlohmann::json Error(const httplib::Result& r) {
  EXPECT_EQ(r->get_header_value("Content-Type"), "application/json");
  nlohmann::json j = nlohmann::json::parse(r->body, nullptr, false);
  EXPECT_TRUE(j.is_object() && j.contains("error")) << r->body;
  for (const char* k : {"message", "type", "param", "code"}) {
    EXPECT_TRUE(j["error"].contains(k)) << r->body;
  }
  return j["error"];
}

TEST(HttpApiTest, MetricsListenerServesMetricsAndHealthOnly) {
  Fixture f;
  std::unique_ptr<HttpServer> s = f.Start(HttpRoutes::kMetrics);
  ASSERT_NE(s, nullptr);
  httplib::Client c("127.0.0.1", s->port());
  httplib::Result m = c.Get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->status, 200);
  EXPECT_THAT(m->get_header_value("Content-Type"), HasSubstr("text/plain; version=0.0.4"));
  EXPECT_THAT(m->body, HasSubstr("# TYPE semshare_test_total counter"));
  EXPECT_THAT(m->body, HasSubstr("semshare_test_total{model=\"m\"} 3"));
  httplib::Result h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 503);  // no model attached
  EXPECT_EQ(nlohmann::json::parse(h->body)["status"], "loading");
  for (const char* path : {"/v1/models", "/", "/metrics/x"}) {
    httplib::Result r = c.Get(path);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 404) << path;
    EXPECT_EQ(Error(r)["code"], "not_found");
  }
  httplib::Result p = c.Post("/v1/chat/completions", "{}", "application/json");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->status, 404);
}

TEST(HttpApiTest, ApiAnswers503UntilLoadedAnd413ForOversizeBodies) {
  Fixture f;
  std::unique_ptr<HttpServer> s = f.Start(HttpRoutes::kAll, /*max_body=*/1024);
  ASSERT_NE(s, nullptr);
  httplib::Client c("127.0.0.1", s->port());
  httplib::Result r =
      c.Post("/v1/chat/completions", R"({"model":"m","messages":[]})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  nlohmann::json e = Error(r);
  EXPECT_EQ(e["type"], "server_error");
  EXPECT_THAT(e["message"].get<std::string>(), HasSubstr("loading"));
  httplib::Result big = c.Post("/v1/completions", std::string(4096, 'x'), "application/json");
  ASSERT_TRUE(big);
  EXPECT_EQ(big->status, 413);
  e = Error(big);
  EXPECT_EQ(e["code"], "request_too_large");
  EXPECT_THAT(e["message"].get<std::string>(), HasSubstr("1024 bytes"));
  f.state.StartDraining();
  httplib::Result h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 503);
  EXPECT_EQ(nlohmann::json::parse(h->body)["status"], "draining");
  httplib::Result m = c.Get("/v1/models");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->status, 503);
  EXPECT_THAT(Error(m)["message"].get<std::string>(), HasSubstr("draining"));
}

TEST(HttpApiTest, SixtyFourConcurrentScrapesAreAllAnswered) {
  Fixture f;
  std::unique_ptr<HttpServer> s = f.Start(HttpRoutes::kMetrics);
  ASSERT_NE(s, nullptr);
  std::atomic<int> ok{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < 64; ++i) {
    clients.emplace_back([&] {
      httplib::Client c("127.0.0.1", s->port());
      c.set_read_timeout(60, 0);
      httplib::Result r = c.Get("/metrics");
      if (r && r->status == 200 && r->body.find("semshare_test_total") != std::string::npos) {
        ++ok;
      }
    });
  }
  for (std::thread& t : clients) t.join();
  EXPECT_EQ(ok.load(), 64);
}

TEST(HttpApiTest, StartFailsOnAnAddressInUseOrMalformed) {
  Fixture f;
  std::unique_ptr<HttpServer> first = f.Start(HttpRoutes::kMetrics);
  ASSERT_NE(first, nullptr);
  HttpOptions o;
  absl::StatusOr<std::unique_ptr<HttpServer>> again = HttpServer::Start(
      "127.0.0.1:" + std::to_string(first->port()), &f.state, std::nullopt, f.registry, o);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(again.status().message()), HasSubstr("cannot listen"));
  absl::StatusOr<std::unique_ptr<HttpServer>> bad =
      HttpServer::Start("no-port", &f.state, std::nullopt, f.registry, o);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace semshare::server
