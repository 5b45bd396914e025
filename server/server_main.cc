// semshare-server: loads the model, opens the reference store, serves gRPC (SemShare,
// CacheAdmin, grpc.health.v1, reflection) and Prometheus /metrics, and drains on SIGTERM.
//
// Start-up order: the gRPC port opens first with health NOT_SERVING (so probes get an answer
// while the model loads), then the model, store, workers and metrics come up and health turns
// SERVING. The first log lines name the bound addresses ("grpc listening on HOST:PORT",
// "metrics on http://HOST:PORT/metrics", "http listening on HOST:PORT"), with the real port
// when 0 was asked for. The HTTP API (server/http_api.h) and /metrics are one HTTP server
// code; --metrics-listen is a second listener of it that serves only /metrics and /health.
//
// Shutdown (SIGTERM or SIGINT): health NOT_SERVING, new calls get UNAVAILABLE, requests
// already accepted run to completion for up to --drain-seconds, then the gRPC server shuts
// down, the store writes what is queued for publication, and the process exits 0.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/backend_factory.h"
#include "engine/cpu/thread_pool.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "server/config.h"
#include "server/http_api.h"
#include "server/log.h"
#include "server/service.h"

namespace semshare::server {
namespace {

constexpr const char* kServiceName = "semshare.v1.SemShare";

std::string DefaultModelPath() {
  if (const char* m = std::getenv("SEMSHARE_MODEL"); m != nullptr && *m != '\0') return m;
  std::string cache;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x != nullptr && *x != '\0') {
    cache = x;
  } else if (const char* h = std::getenv("HOME"); h != nullptr) {
    cache = absl::StrCat(h, "/.cache");
  }
  return absl::StrCat(cache, "/semshare/models/SmolLM2-135M-Instruct.Q4_1.gguf");
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  std::fclose(f);
  return out;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeCredentials(const ServerConfig& c) {
  if (c.tls_cert.empty()) return grpc::InsecureServerCredentials();
  absl::StatusOr<std::string> cert = ReadFile(c.tls_cert);
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadFile(c.tls_key);
  if (!key.ok()) return key.status();
  grpc::SslServerCredentialsOptions opts;
  opts.pem_key_cert_pairs.push_back({*key, *cert});
  if (!c.tls_client_ca.empty()) {
    absl::StatusOr<std::string> ca = ReadFile(c.tls_client_ca);
    if (!ca.ok()) return ca.status();
    opts.pem_root_certs = *ca;
    opts.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(opts);
}

int Fail(const absl::Status& s) {
  Log(LogLevel::kError, std::string(s.message()));
  return 1;
}

int Main(int argc, char** argv) {
  // Signals go to the sigwait below, never to whichever thread happens to run: block them
  // before any thread exists so every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  // A peer that closes its socket while we write (a Redis node killed or black-holed, a
  // scraper gone) must give that write an EPIPE error, not kill the process. gRPC and the
  // metrics endpoint pass MSG_NOSIGNAL themselves; hiredis does not.
  signal(SIGPIPE, SIG_IGN);

  bool help = false;
  absl::StatusOr<ServerConfig> parsed = ParseServerConfig(argc, argv, ProcessEnvironment(), &help);
  if (help) {
    std::fputs(ServerHelp().c_str(), stdout);
    return 0;
  }
  if (!parsed.ok()) {
    std::fprintf(stderr, "semshare-server: %s\n", std::string(parsed.status().message()).c_str());
    return 2;
  }
  ServerConfig config = *std::move(parsed);
  SetLogLevel(ParseLogLevel(config.log_level));

  std::optional<ApiKeys> keys;
  if (!config.api_keys.empty()) {
    absl::StatusOr<ApiKeys> k = ApiKeys::Load(config.api_keys);
    if (!k.ok()) return Fail(k.status());
    Log(LogLevel::kInfo, absl::StrCat("api keys: ", k->size(), " loaded from ", config.api_keys));
    keys = *std::move(k);
  } else if (!IsLoopbackAddress(config.listen)) {
    const std::string port = config.listen.substr(config.listen.rfind(':') + 1);
    Log(LogLevel::kWarning,
        absl::StrCat("no --api-keys file: binding loopback only (127.0.0.1:", port, ") instead of ",
                     config.listen, "; give --api-keys to serve other hosts"));
    config.listen = "127.0.0.1:" + port;
  } else {
    Log(LogLevel::kInfo, "no --api-keys file: no authentication; loopback only");
  }

  if (!config.http_listen.empty() && !keys.has_value() && !IsLoopbackAddress(config.http_listen)) {
    const std::string port = config.http_listen.substr(config.http_listen.rfind(':') + 1);
    Log(LogLevel::kWarning, absl::StrCat("no --api-keys file: HTTP API on 127.0.0.1:", port,
                                         " instead of ", config.http_listen));
    config.http_listen = "127.0.0.1:" + port;
  }
  const std::optional<ApiKeys> http_keys = keys;  // the HTTP adapter's copy
  ServiceState state(config, std::move(keys));
  SemShareService semshare(&state);
  CacheAdminService admin(&state);
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> creds = MakeCredentials(config);
  if (!creds.ok()) return Fail(creds.status());
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(config.listen, *creds, &port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(config.max_message_bytes));
  builder.RegisterService(&semshare);
  builder.RegisterService(&admin);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return Fail(absl::UnavailableError(absl::StrCat("cannot listen on ", config.listen)));
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  health->SetServingStatus("", false);
  health->SetServingStatus(kServiceName, false);
  const std::string host = config.listen.substr(0, config.listen.rfind(':'));
  Log(LogLevel::kInfo, absl::StrCat("grpc listening on ", host, ":", port,
                                    config.tls_cert.empty()        ? " (plaintext)"
                                    : config.tls_client_ca.empty() ? " (TLS)"
                                                                   : " (mutual TLS)"));

  // The model and everything derived from it.
  const std::string model_path = config.model.empty() ? DefaultModelPath() : config.model;
  const auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<engine::Model>> loaded = engine::LoadModel(model_path);
  if (!loaded.ok()) return Fail(loaded.status());
  std::shared_ptr<const engine::Model> shared_model(std::move(*loaded));
  const engine::Model& model = *shared_model;
  if (config.threads > 0) engine::ThreadPool::SetDefaultThreads(config.threads);

  ServingCore core;
  core.model = &model;
  core.backend_name = config.backend;
  serving::PipelineOptions po;
  po.backend = config.backend;
  po.serving.reuse.mode = engine::PrefillMode::kSemShare;
  po.serving.reuse.hit_threshold = config.similarity_threshold;
  po.serving.reuse.min_reuse_tokens = config.min_reuse_tokens;
  po.serving.reuse.hybrid_selective_min_tokens = config.hybrid_selective_min_tokens;
  po.serving.reuse.run_start_tokens = config.run_start_tokens;
  po.serving.reuse.exact_run_tokens = config.exact_run_tokens;
  po.serving.reuse.recompute_min_tokens = config.recompute_min_tokens;
  po.serving.lookup_candidates = config.lookup_candidates;
  po.serving.max_prompt_tokens =
      config.max_prompt_tokens > 0 ? config.max_prompt_tokens : model.config.max_context;
  if (po.serving.max_prompt_tokens <= 0) po.serving.max_prompt_tokens = 8192;
  if (auto s = po.serving.reuse.Validate(); !s.ok()) return Fail(s);
  po.front_workers = config.workers;
  po.max_queue = config.max_queue;
  po.loop.max_batch_tokens = config.max_batch_tokens;
  po.loop.max_num_seqs = config.max_num_seqs;
  po.loop.kv_cache_bytes = config.kv_cache_bytes;
  po.loop.max_waiting = config.max_queue;
  core.limits.max_new_tokens = config.max_new_tokens;
  core.limits.default_max_tokens = config.default_max_tokens;
  core.limits.max_stop_strings = config.max_stop_strings;
  core.limits.max_stop_bytes = config.max_stop_bytes;
  core.limits.max_messages = config.max_messages;
  core.limits.max_prompt_bytes = config.max_message_bytes;
  core.limits.default_threshold = config.similarity_threshold;

  std::string model_name = config.model_name;
  if (model_name.empty()) {
    std::string base = model_path;
    while (base.size() > 1 && base.back() == '/') base.pop_back();
    base = base.substr(base.rfind('/') + 1);
    if (base.size() > 5 && base.substr(base.size() - 5) == ".gguf") base.resize(base.size() - 5);
    model_name = base;
  }
  Metrics metrics(model_name);
  core.metrics = &metrics;
  std::unique_ptr<HttpServer> metrics_http;
  HttpOptions http_options;
  http_options.model_id = model_name;
  http_options.max_body_bytes = config.max_message_bytes;
  // Every stream that can run or wait, and a few for /metrics, /health and errors.
  http_options.threads = config.max_num_seqs + config.max_queue + 8;
  if (!config.metrics_listen.empty()) {
    HttpOptions mo = http_options;
    mo.routes = HttpRoutes::kMetrics;
    mo.threads = 4;
    absl::StatusOr<std::unique_ptr<HttpServer>> started =
        HttpServer::Start(config.metrics_listen, &state, http_keys, metrics.registry(), mo);
    if (!started.ok()) return Fail(started.status());
    metrics_http = *std::move(started);
    const std::string mhost = config.metrics_listen.substr(0, config.metrics_listen.rfind(':'));
    Log(LogLevel::kInfo,
        absl::StrCat("metrics on http://", mhost, ":", metrics_http->port(), "/metrics"));
  }
  std::unique_ptr<HttpServer> http;
  if (!config.http_listen.empty()) {
    absl::StatusOr<std::unique_ptr<HttpServer>> started =
        HttpServer::Start(config.http_listen, &state, http_keys, metrics.registry(), http_options);
    if (started.ok()) {
      http = *std::move(started);
      const std::string hhost = config.http_listen.substr(0, config.http_listen.rfind(':'));
      Log(LogLevel::kInfo, absl::StrCat("http listening on ", hhost, ":", http->port(),
                                        " (OpenAI-compatible API, model \"", model_name, "\")"));
    } else if (config.http_listen == ServerConfig().http_listen) {
      // The default port taken (another server on this host): gRPC still serves; an address
      // given explicitly must bind.
      Log(LogLevel::kWarning, absl::StrCat("HTTP API off: ", started.status().message(),
                                           "; give --http-listen HOST:PORT (\"\" turns it off)"));
    } else {
      return Fail(started.status());
    }
  }

  store::StoreOptions so;
  so.memory_byte_budget = config.cache_memory_bytes;
  so.disk_dir = config.cache_dir;
  so.disk_byte_budget = config.cache_disk_bytes;
  so.redis.client.url = config.redis;
  so.redis.ttl_ms = int64_t{config.redis_ttl_seconds} * 1000;
  absl::StatusOr<std::unique_ptr<store::ReferenceStore>> opened = store::ReferenceStore::Open(so);
  if (!opened.ok()) return Fail(opened.status());
  std::unique_ptr<store::ReferenceStore> ref_store = *std::move(opened);
  core.store = ref_store.get();

  // The pipeline: front workers (tokenize, lookup) and the engine loop that batches every
  // running request. With --backend cuda the weights go to the device once.
  absl::StatusOr<std::unique_ptr<serving::Pipeline>> created =
      serving::Pipeline::Create(shared_model, po, core.store, &metrics);
  if (!created.ok()) {
    const absl::Status& s = created.status();
    return Fail(absl::Status(
        s.code(),
        absl::StrCat(
            "--backend ", config.backend, ": ", s.message(),
            config.backend == "cuda" ? " (use --backend cpu on a host without one)" : "")));
  }
  std::unique_ptr<serving::Pipeline> pipeline = *std::move(created);
  core.pipeline = pipeline.get();

  // Store figures into the gauges once a second. The first update runs here, before health
  // says SERVING, so a client that sees the server ready also sees the records it indexed at
  // start (a thread's first update could run after the first scrape).
  const auto update_gauges = [&] {
    metrics.UpdateStore(ref_store->Stats());
    if (const engine::BackendMemory m = pipeline->Memory(); m.device) {
      metrics.SetGpuMemory(m.used, m.total);
    }
  };
  update_gauges();
  std::mutex stats_mu;
  std::condition_variable stats_cv;
  bool stats_stop = false;
  std::thread stats([&] {
    std::unique_lock<std::mutex> lock(stats_mu);
    while (!stats_cv.wait_for(lock, std::chrono::seconds(1), [&] { return stats_stop; })) {
      update_gauges();
    }
  });

  state.Attach(&core);
  health->SetServingStatus("", true);
  health->SetServingStatus(kServiceName, true);
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  Log(LogLevel::kInfo,
      absl::StrCat("serving ", model_name, " (", model.fingerprint, ") from ", model_path, " on ",
                   config.backend, " (", config.workers, " front worker(s), KV budget ",
                   pipeline->options().loop.kv_cache_bytes >> 20, " MiB, up to ",
                   config.max_num_seqs, " sequences of ", config.max_batch_tokens,
                   " tokens per batch); ready in ", absl::StrFormat("%.2f", load_s), " s"));

  int sig = 0;
  sigwait(&signals, &sig);
  Log(LogLevel::kInfo,
      absl::StrCat("signal ", sig, ": draining for up to ", config.drain_seconds, " s"));
  state.StartDraining();
  health->SetServingStatus("", false);
  health->SetServingStatus(kServiceName, false);
  pipeline->Close();
  const bool idle = pipeline->WaitIdle(int64_t{config.drain_seconds} * 1000);
  Log(LogLevel::kInfo, idle ? "drained: no requests in flight"
                            : "drain period over with requests still running; cancelling");
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(idle ? 5 : 1));
  http.reset();
  {
    std::lock_guard<std::mutex> lock(stats_mu);
    stats_stop = true;
  }
  stats_cv.notify_all();
  stats.join();
  ref_store->Flush();
  Log(LogLevel::kInfo, "stopped");
  return 0;
}

}  // namespace
}  // namespace semshare::server

int main(int argc, char** argv) { return semshare::server::Main(argc, argv); }
