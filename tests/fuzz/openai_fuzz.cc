// Fuzz target: the OpenAI-compatible HTTP API's request handling (server/openai_json.h) on
// arbitrary bytes, two ways:
//   1. the bytes as a raw HTTP/1.1 request, parsed by cpp-httplib's server (process_request on
//      an in-memory stream), routed to POST /v1/chat/completions and /v1/completions handlers
//      that run PrepareGenerate as the real adapter does (Content-Type, JSON mapping, model,
//      the shared validation), with a 4 KiB body limit (413);
//   2. the bytes as a JSON body of both endpoints.
// Properties: nothing crashes; a refusal maps to an OpenAI error (400/404, a JSON body with
// message, type, param and code, a non-empty message); an accepted request respects every
// limit (as request_fuzz checks for gRPC); the response and stream chunks built from it are
// valid JSON of OpenAI's shape; every HTTP answer starts with a status line.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>

#include "httplib.h"
#include "nlohmann/json.hpp"
#include "server/openai_json.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using semshare::server::OpenAiEndpoint;
using semshare::server::PreparedGenerate;
using semshare::server::RequestLimits;

RequestLimits Limits() {
  RequestLimits l;
  l.max_new_tokens = 64;
  l.default_max_tokens = 8;
  l.max_stop_strings = 4;
  l.max_stop_bytes = 16;
  l.max_messages = 8;
  l.max_prompt_bytes = 4096;
  return l;
}

constexpr std::string_view kModel = "fuzz-model";

void CheckError(const absl::Status& s) {
  const semshare::server::ApiError e = semshare::server::ToApiError(s);
  FUZZ_CHECK(e.http_status == 400 || e.http_status == 404);
  const nlohmann::json j = nlohmann::json::parse(e.body, nullptr, false);
  FUZZ_CHECK(j.is_object() && j.contains("error"));
  const nlohmann::json& err = j["error"];
  for (const char* k : {"message", "type", "param", "code"}) FUZZ_CHECK(err.contains(k));
  FUZZ_CHECK(err["message"].is_string() && !err["message"].get<std::string>().empty());
}

void CheckAccepted(const PreparedGenerate& p, const RequestLimits& limits, OpenAiEndpoint e) {
  const auto& o = p.validated.options;
  FUZZ_CHECK(o.max_tokens >= 1 && o.max_tokens <= limits.max_new_tokens);
  FUZZ_CHECK(static_cast<int32_t>(o.stop.size()) <= limits.max_stop_strings);
  for (const auto& s : o.stop) {
    FUZZ_CHECK(!s.empty() && static_cast<int32_t>(s.size()) <= limits.max_stop_bytes);
  }
  FUZZ_CHECK(std::isfinite(o.sampling.temperature) && o.sampling.temperature >= 0 &&
             o.sampling.temperature <= 2);
  FUZZ_CHECK(o.sampling.top_p > 0 && o.sampling.top_p <= 1);
  FUZZ_CHECK(p.validated.threshold > 0 && p.validated.threshold <= 1);
  FUZZ_CHECK(p.validated.input.is_chat == (e == OpenAiEndpoint::kChat));
  FUZZ_CHECK(p.request.include_usage ? p.request.stream : true);
  // Responses built from it (the request's own text as the "generated" text) are OpenAI JSON.
  semshare::serving::ServeResult r;
  r.gen.text =
      p.validated.input.is_chat ? p.validated.input.messages[0].content : p.validated.input.prompt;
  r.gen.prompt_tokens = 3;
  r.gen.tokens = {1, 2};
  const semshare::server::OpenAiReply reply{"id-1", std::string(kModel), 1};
  const semshare::v1::Timings t = semshare::server::TimingsOf(r);
  for (const std::string& out : {semshare::server::CompletionJson(e, reply, r, t),
                                 semshare::server::ChunkJson(e, reply, r.gen.text, true),
                                 semshare::server::FinalChunkJson(e, reply, r, t),
                                 semshare::server::UsageChunkJson(e, reply, r)}) {
    const nlohmann::json j = nlohmann::json::parse(out, nullptr, false);
    FUZZ_CHECK(j.is_object() && j["choices"].is_array() && j["model"] == kModel);
  }
}

void Body(std::string_view content_type, std::string_view body, OpenAiEndpoint e) {
  const RequestLimits limits = Limits();
  absl::StatusOr<PreparedGenerate> p =
      semshare::server::PrepareGenerate(content_type, body, e, kModel, limits);
  if (!p.ok()) {
    FUZZ_CHECK(p.status().code() == absl::StatusCode::kInvalidArgument ||
               p.status().code() == absl::StatusCode::kOutOfRange ||
               p.status().code() == absl::StatusCode::kNotFound);
    CheckError(p.status());
    return;
  }
  CheckAccepted(*p, limits, e);
}

// An HTTP connection that reads the fuzz input and keeps what the server writes.
class BufferStream final : public httplib::Stream {
 public:
  explicit BufferStream(std::string_view in) : in_(in) {}
  bool is_readable() const override { return true; }
  bool is_writable() const override { return true; }
  ssize_t read(char* ptr, size_t size) override {
    const size_t n = std::min(size, in_.size() - pos_);
    std::memcpy(ptr, in_.data() + pos_, n);
    pos_ += n;
    return static_cast<ssize_t>(n);
  }
  ssize_t write(const char* ptr, size_t size) override {
    out_.append(ptr, size);
    return static_cast<ssize_t>(size);
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    ip = "127.0.0.1";
    port = 40000;
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    ip = "127.0.0.1";
    port = 8000;
  }
  socket_t socket() const override { return INVALID_SOCKET; }
  const std::string& out() const { return out_; }

 private:
  std::string_view in_;
  size_t pos_ = 0;
  std::string out_;
};

class FuzzServer final : public httplib::Server {
 public:
  FuzzServer() {
    set_payload_max_length(4096);
    for (auto [path, e] : {std::pair{"/v1/chat/completions", OpenAiEndpoint::kChat},
                           std::pair{"/v1/completions", OpenAiEndpoint::kCompletion}}) {
      Post(path, [e = e](const httplib::Request& req, httplib::Response& res) {
        Body(req.get_header_value("Content-Type"), req.body, e);
        res.set_content("{}", "application/json");
      });
    }
  }
  using httplib::Server::process_request;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  Body("application/json", bytes, OpenAiEndpoint::kChat);
  Body("application/json; charset=utf-8", bytes, OpenAiEndpoint::kCompletion);

  static FuzzServer* server = new FuzzServer();
  BufferStream stream(bytes);
  bool closed = false;
  server->process_request(stream, /*close_connection=*/true, closed, nullptr);
  FUZZ_CHECK(stream.out().empty() || stream.out().rfind("HTTP/1.1 ", 0) == 0);
  return 0;
}
