#include "server/http_api.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <string_view>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "prometheus/text_serializer.h"
#include "server/grpc_status.h"
#include "server/openai_json.h"

namespace semshare::server {
namespace {

constexpr auto kPollInterval = std::chrono::milliseconds(50);

// The descriptor of the connection a request came on: a TCP socket of this process whose peer
// is the request's remote address and port. -1 when none is found (then only a failed write
// reveals a disconnect).
int FindClientSocket(const httplib::Request& req) {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int found = -1;
  while (dirent* e = readdir(dir)) {
    int fd = 0;
    if (!absl::SimpleAtoi(e->d_name, &fd) || fd == dirfd(dir)) continue;
    sockaddr_storage peer{};
    socklen_t len = sizeof(peer);
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len) != 0) continue;
    char host[INET6_ADDRSTRLEN] = {};
    int port = 0;
    if (peer.ss_family == AF_INET) {
      const auto* a = reinterpret_cast<const sockaddr_in*>(&peer);
      inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
      port = ntohs(a->sin_port);
    } else if (peer.ss_family == AF_INET6) {
      const auto* a = reinterpret_cast<const sockaddr_in6*>(&peer);
      inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
      port = ntohs(a->sin6_port);
    } else {
      continue;
    }
    if (port == req.remote_port && req.remote_addr == host) {
      found = fd;
      break;
    }
  }
  closedir(dir);
  return found;
}

// True once the peer has closed or reset the connection (data it sent, e.g. a pipelined next
// request, is left unread).
bool ClientGone(int fd) {
  if (fd < 0) return false;
  pollfd p{fd, POLLIN | POLLRDHUP, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return true;
  char c;
  return recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

// What the pipeline hands back to the HTTP thread that waits on the request.
struct Channel {
  std::mutex mu;
  std::condition_variable cv;
  std::string text;  // streamed pieces not yet written
  bool done = false;
  bool abandoned = false;  // the HTTP side gave up (client gone): `done` only counts
  std::optional<absl::StatusOr<serving::ServeResult>> result;
  std::atomic<bool> gone{false};  // the request's `cancelled`
};

void SetError(httplib::Response& res, const absl::Status& s) {
  const ApiError e = ToApiError(s);
  res.status = e.http_status;
  res.set_content(e.body, "application/json");
}

RequestFigures FiguresOf(const serving::ServeResult& r, const v1::Timings& t) {
  RequestFigures f;
  f.cache_result = r.cache_result;
  f.looked_up = r.looked_up;
  f.queue_s = t.queue_ms() / 1e3;
  f.prefill_s = r.prefill_ms / 1e3;
  f.ttft_s = t.ttft_ms() / 1e3;
  f.total_s = t.total_ms() / 1e3;
  f.prompt_tokens = r.gen.prompt_tokens;
  f.completion_tokens = static_cast<int64_t>(r.gen.tokens.size());
  f.reused_tokens = r.reused_tokens;
  f.recomputed_tokens = r.recomputed_tokens;
  f.similarity = r.similarity;
  f.hit_kind = r.hit_kind;
  return f;
}

std::string RandomId(const char* prefix) {
  static std::atomic<uint64_t> counter{0};
  const uint64_t n =
      counter.fetch_add(1) ^
      static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(n));
  return absl::StrCat(prefix, buf);
}

// httplib::Server with its listening socket reachable: Debian's build listens with a backlog
// of 5 (CPPHTTPLIB_LISTEN_BACKLOG, compiled into the library), which resets connections when
// tens of clients connect at once; Listen() raises it (listen() again on a listening socket
// only changes its backlog).
class Server final : public httplib::Server {
 public:
  bool RaiseBacklog(int backlog) {
    const socket_t fd = svr_sock_;
    return fd != INVALID_SOCKET && ::listen(fd, backlog) == 0;
  }
};

class Api {
 public:
  Api(ServiceState* state, std::optional<ApiKeys> keys,
      std::shared_ptr<prometheus::Collectable> metrics, HttpOptions options)
      : state_(state),
        keys_(std::move(keys)),
        metrics_(std::move(metrics)),
        options_(std::move(options)) {}

  void Register(httplib::Server& s) {
    s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(prometheus::TextSerializer().Serialize(metrics_->Collect()),
                      "text/plain; version=0.0.4; charset=utf-8");
    });
    s.Get("/health", [this](const httplib::Request&, httplib::Response& res) { Health(res); });
    if (options_.routes == HttpRoutes::kMetrics) return;
    s.Get("/v1/models",
          [this](const httplib::Request& req, httplib::Response& res) { Models(req, res); });
    s.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
      Generate(req, res, OpenAiEndpoint::kChat);
    });
    s.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
      Generate(req, res, OpenAiEndpoint::kCompletion);
    });
  }

 private:
  void Count(const char* method, const absl::Status& s) const {
    if (ServingCore* core = state_->core(); core != nullptr) {
      core->metrics->CountRequest(method, CodeName(ToGrpcStatus(s).error_code()));
    }
  }

  // The same rule as gRPC's ServiceState::Admit, on the Authorization header.
  absl::StatusOr<Principal> Admit(const httplib::Request& req) const {
    if (state_->draining()) {
      return absl::UnavailableError(
          "the server is draining for shutdown; retry on another replica");
    }
    if (state_->core() == nullptr) {
      return absl::UnavailableError("the model is still loading; retry shortly");
    }
    if (!keys_.has_value()) return Principal{"default", Role::kAdmin};
    const std::string authorization = req.get_header_value("Authorization");
    return keys_->Authenticate(authorization);
  }

  void Health(httplib::Response& res) const {
    const bool ready = state_->core() != nullptr && !state_->draining();
    res.status = ready ? 200 : 503;
    const char* status = ready ? "ok" : state_->draining() ? "draining" : "loading";
    res.set_content(nlohmann::json{{"status", status}}.dump(), "application/json");
  }

  void Models(const httplib::Request& req, httplib::Response& res) const {
    constexpr const char* kMethod = "GET /v1/models";
    absl::StatusOr<Principal> p = Admit(req);
    if (!p.ok()) {
      Count(kMethod, p.status());
      return SetError(res, p.status());
    }
    const ServingCore& core = *state_->core();
    nlohmann::json model = {{"id", options_.model_id},
                            {"object", "model"},
                            {"created", 0},
                            {"owned_by", "semshare"},
                            {"max_model_len", core.pipeline->serving().max_prompt_tokens},
                            {"fingerprint", core.model->fingerprint}};
    res.set_content(nlohmann::json{{"object", "list"}, {"data", {model}}}.dump(),
                    "application/json");
    Count(kMethod, absl::OkStatus());
  }

  void Generate(const httplib::Request& req, httplib::Response& res, OpenAiEndpoint endpoint) {
    const char* method =
        endpoint == OpenAiEndpoint::kChat ? "POST /v1/chat/completions" : "POST /v1/completions";
    auto fail = [&](const absl::Status& s) {
      Count(method, s);
      SetError(res, s);
    };
    absl::StatusOr<Principal> p = Admit(req);
    if (!p.ok()) return fail(p.status());
    ServingCore* core = state_->core();
    absl::StatusOr<PreparedGenerate> prepared = PrepareGenerate(
        req.get_header_value("Content-Type"), req.body, endpoint, options_.model_id, core->limits);
    if (!prepared.ok()) return fail(prepared.status());
    const OpenAiRequest* parsed = &prepared->request;
    ValidatedGenerate* v = &prepared->validated;

    auto ir = std::make_shared<serving::ServeRequest>();
    ir->input = std::move(v->input);
    ir->options = std::move(v->options);
    ir->policy = v->policy;
    ir->threshold = v->threshold;
    ir->ns = state_->NamespaceOf(*p);
    auto ch = std::make_shared<Channel>();
    ir->cancelled = [ch] { return ch->gone.load(); };
    if (parsed->stream) {
      ir->on_text = [ch](std::string_view piece) {
        {
          std::lock_guard<std::mutex> lock(ch->mu);
          ch->text.append(piece);
        }
        ch->cv.notify_all();
        return !ch->gone.load();
      };
    }
    Api* self = this;
    absl::Status submitted =
        core->pipeline->Generate(ir, [ch, self, method](absl::StatusOr<serving::ServeResult> r) {
          bool abandoned;
          {
            std::lock_guard<std::mutex> lock(ch->mu);
            abandoned = ch->abandoned;
            ch->done = true;
            ch->result = std::move(r);
          }
          if (abandoned) {
            self->Count(method, absl::CancelledError("the client disconnected"));
          }
          ch->cv.notify_all();
        });
    if (!submitted.ok()) return fail(submitted);

    const int fd = FindClientSocket(req);
    OpenAiReply reply;
    reply.id = RandomId(endpoint == OpenAiEndpoint::kChat ? "chatcmpl-" : "cmpl-");
    reply.model = options_.model_id;
    reply.created = std::chrono::duration_cast<std::chrono::seconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count();

    // Until the result, or (streams) the first text: the status is known only then. A client
    // that hangs up meanwhile cancels the request; `done` still comes (the loop drops it).
    {
      std::unique_lock<std::mutex> lock(ch->mu);
      while (!ch->done && (!parsed->stream || ch->text.empty())) {
        ch->cv.wait_for(lock, kPollInterval);
        if (!ch->gone && ClientGone(fd)) ch->gone = true;
      }
      if (ch->done && !ch->result->ok()) {
        absl::Status s = ch->result->status();
        if (ch->gone) s = absl::CancelledError("the client disconnected");
        lock.unlock();
        return fail(s);
      }
      if (ch->gone && ch->done) {
        lock.unlock();
        return fail(absl::CancelledError("the client disconnected"));
      }
    }
    if (!parsed->stream) {
      const serving::ServeResult& r = **ch->result;
      const v1::Timings t = TimingsOf(r);
      core->metrics->RecordRequest(FiguresOf(r, t));
      res.set_content(CompletionJson(endpoint, reply, r, t), "application/json");
      Count(method, absl::OkStatus());
      return;
    }
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    const bool include_usage = parsed->include_usage;
    auto first = std::make_shared<bool>(true);
    res.set_chunked_content_provider(
        "text/event-stream", [ch, self, core, method, endpoint, reply, fd, include_usage, first](
                                 size_t, httplib::DataSink& sink) {
          auto event = [&](const std::string& body) {
            const std::string e = absl::StrCat("data: ", body, "\n\n");
            return sink.write(e.data(), e.size());
          };
          auto abandon = [&] {
            ch->gone = true;
            bool count = false;
            {
              std::lock_guard<std::mutex> lock(ch->mu);
              ch->abandoned = true;
              count = ch->done;  // else `done` counts it
            }
            if (count) self->Count(method, absl::CancelledError("the client disconnected"));
            return false;
          };
          std::unique_lock<std::mutex> lock(ch->mu);
          if (ch->text.empty() && !ch->done) ch->cv.wait_for(lock, kPollInterval);
          std::string text = std::move(ch->text);
          ch->text.clear();
          const bool done = ch->done;
          lock.unlock();
          if (!text.empty()) {
            if (!event(ChunkJson(endpoint, reply, text, *first))) return abandon();
            *first = false;
          }
          if (!done) return ClientGone(fd) ? abandon() : true;
          if (!ch->result->ok()) {
            // Cut after the first text (preempted past its budget, the server stopping...).
            const absl::Status s = ch->result->status();
            self->Count(method, s);
            event(ToApiError(s).body);
          } else {
            const serving::ServeResult& r = **ch->result;
            const v1::Timings t = TimingsOf(r);
            core->metrics->RecordRequest(FiguresOf(r, t));
            self->Count(method, absl::OkStatus());
            event(FinalChunkJson(endpoint, reply, r, t));
            if (include_usage) event(UsageChunkJson(endpoint, reply, r));
          }
          event("[DONE]");
          sink.done();
          return true;
        });
  }

  ServiceState* const state_;
  const std::optional<ApiKeys> keys_;
  const std::shared_ptr<prometheus::Collectable> metrics_;
  const HttpOptions options_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(
    const std::string& listen, ServiceState* state, std::optional<ApiKeys> keys,
    std::shared_ptr<prometheus::Collectable> metrics, const HttpOptions& options) {
  const size_t colon = listen.rfind(':');
  int want_port = -1;
  if (colon == std::string::npos || !absl::SimpleAtoi(listen.substr(colon + 1), &want_port) ||
      want_port < 0 || want_port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("HTTP listen address \"", listen, "\" is not HOST:PORT"));
  }
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  std::unique_ptr<HttpServer> out(new HttpServer());
  auto server = std::make_unique<Server>();
  Server* raw = server.get();
  out->server_ = std::move(server);
  httplib::Server& s = *out->server_;
  const int threads = std::max(2, options.threads);
  // std::thread workers: the default stack (see the header).
  s.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  // SO_REUSEADDR only: cpp-httplib's default sets SO_REUSEPORT, with which a second server
  // binds a port already in use without an error and the kernel splits connections between
  // the two.
  s.set_socket_options([](socket_t fd) {
    int yes = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  s.set_payload_max_length(static_cast<size_t>(options.max_body_bytes));
  s.set_read_timeout(30, 0);
  s.set_write_timeout(30, 0);
  s.set_error_handler(httplib::Server::HandlerWithResponse(
      [max = options.max_body_bytes](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        std::string body;
        switch (res.status) {
          case 404:
            body = ErrorJson(absl::StrCat("no route ", req.method, " ", req.path.substr(0, 200),
                                          "; see GET /v1/models, POST /v1/chat/completions, POST "
                                          "/v1/completions, GET /health, GET /metrics"),
                             "invalid_request_error", "", "not_found");
            break;
          case 413:
            body =
                ErrorJson(absl::StrCat("the request body is larger than this server's limit of ",
                                       max, " bytes (--max-message-bytes); send a shorter prompt"),
                          "invalid_request_error", "", "request_too_large");
            break;
          default:
            body = ErrorJson(absl::StrCat("HTTP ", res.status, " for ", req.method, " ",
                                          req.path.substr(0, 200)),
                             "invalid_request_error", "", "");
        }
        res.set_content(body, "application/json");
        return httplib::Server::HandlerResponse::Handled;
      }));
  auto api = std::make_shared<Api>(state, std::move(keys), std::move(metrics), options);
  api->Register(s);
  // Handlers hold `api` through the server's lifetime.
  s.set_logger([api](const httplib::Request&, const httplib::Response&) {});
  int port = want_port;
  if (want_port == 0) {
    port = s.bind_to_any_port(host);
    if (port < 0) port = 0;
  } else if (!s.bind_to_port(host, want_port)) {
    port = 0;
  }
  if (port <= 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", listen, " (HTTP)"));
  }
  if (!raw->RaiseBacklog(SOMAXCONN)) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", listen, " (HTTP backlog)"));
  }
  out->port_ = port;
  out->listener_ = std::thread([srv = out->server_.get(), done = &out->listener_done_] {
    srv->listen_after_bind();
    *done = true;
  });
  // Until its accept loop runs: a stop() before that would be lost and the join would hang.
  // Connections that arrive meanwhile wait in the backlog.
  while (!out->server_->is_running() && !out->listener_done_) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return out;
}

HttpServer::~HttpServer() {
  if (server_ != nullptr) server_->stop();
  if (listener_.joinable()) listener_.join();
}

}  // namespace semshare::server
