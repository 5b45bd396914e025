#include "server/openai_json.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace semshare::server {
namespace {

using nlohmann::json;

absl::Status Bad(std::string_view param, std::string message) {
  return WithParam(absl::InvalidArgumentError(std::move(message)), param);
}

std::string Dump(const json& j) {
  // Generated text is valid UTF-8 but a replacement beats an exception if it ever is not.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

// A number field: absent and null leave `out` alone.
absl::Status Number(const json& body, const char* key, double* out, bool* present = nullptr) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number()) return Bad(key, absl::StrCat(key, " must be a number"));
  *out = it->get<double>();
  if (!std::isfinite(*out)) return Bad(key, absl::StrCat(key, " must be finite"));
  if (present != nullptr) *present = true;
  return absl::OkStatus();
}

absl::Status Integer(const json& body, const char* key, int64_t lo, int64_t hi, int64_t* out,
                     bool* present) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number_integer()) return Bad(key, absl::StrCat(key, " must be an integer"));
  if (it->is_number_unsigned()) {
    const uint64_t u = it->get<uint64_t>();
    if (u > static_cast<uint64_t>(hi)) {
      return Bad(key, absl::StrCat(key, " must be at most ", hi, ", got ", u));
    }
    *out = static_cast<int64_t>(u);
  } else {
    *out = it->get<int64_t>();
  }
  if (*out < lo || *out > hi) {
    return Bad(key, absl::StrCat(key, " must be in [", lo, ", ", hi, "], got ", *out));
  }
  *present = true;
  return absl::OkStatus();
}

// OpenAI's message content: a string, or a list of parts of which only {"type":"text"} exist
// here.
absl::StatusOr<std::string> Content(const json& c, const std::string& where) {
  if (c.is_string()) return c.get<std::string>();
  if (c.is_null()) return std::string();
  if (!c.is_array()) {
    return Bad(where, absl::StrCat(where, " must be a string or a list of text parts"));
  }
  std::string out;
  for (size_t i = 0; i < c.size(); ++i) {
    const json& part = c[i];
    const std::string pw = absl::StrCat(where, "[", i, "]");
    if (!part.is_object() || part.value("type", json()) != "text") {
      return Bad(pw, absl::StrCat(pw,
                                  " must be {\"type\": \"text\", \"text\": ...}; this server "
                                  "reads text only"));
    }
    auto t = part.find("text");
    if (t == part.end() || !t->is_string()) {
      return Bad(pw, absl::StrCat(pw, ".text must be a string"));
    }
    out += t->get<std::string>();
  }
  return out;
}

absl::Status Messages(const json& body, v1::GenerateRequest* g) {
  auto it = body.find("messages");
  if (it == body.end() || it->is_null()) {
    return Bad("messages", "messages is required: a list of {\"role\", \"content\"} objects");
  }
  if (!it->is_array()) return Bad("messages", "messages must be a list of {role, content}");
  v1::Messages* ms = g->mutable_messages();  // empty lists are the validator's to refuse
  for (size_t i = 0; i < it->size(); ++i) {
    const json& m = (*it)[i];
    const std::string where = absl::StrCat("messages[", i, "]");
    if (!m.is_object()) return Bad(where, absl::StrCat(where, " must be an object"));
    auto role = m.find("role");
    if (role == m.end() || !role->is_string()) {
      return Bad(where + ".role",
                 absl::StrCat(where, ".role must be a string (system, user, assistant)"));
    }
    auto content = m.find("content");
    std::string text;
    if (content != m.end()) {
      absl::StatusOr<std::string> c = Content(*content, where + ".content");
      if (!c.ok()) return c.status();
      text = *std::move(c);
    }
    v1::ChatMessage* cm = ms->add_messages();
    cm->set_role(role->get<std::string>());
    cm->set_content(std::move(text));
  }
  return absl::OkStatus();
}

absl::Status Prompt(const json& body, v1::GenerateRequest* g) {
  auto it = body.find("prompt");
  if (it == body.end() || it->is_null()) return Bad("prompt", "prompt is required: a string");
  if (it->is_string()) {
    g->set_prompt(it->get<std::string>());
    return absl::OkStatus();
  }
  if (it->is_array() && it->size() == 1 && (*it)[0].is_string()) {
    g->set_prompt((*it)[0].get<std::string>());
    return absl::OkStatus();
  }
  if (it->is_array() && it->size() > 1) {
    return Bad("prompt",
               "prompt lists of more than one string are not supported; send one "
               "request per prompt");
  }
  return Bad("prompt", "prompt must be a string (token-id prompts are not supported)");
}

absl::Status Stop(const json& body, v1::SamplingParams* s) {
  auto it = body.find("stop");
  if (it == body.end() || it->is_null()) return absl::OkStatus();
  if (it->is_string()) {
    s->add_stop(it->get<std::string>());
    return absl::OkStatus();
  }
  if (!it->is_array()) return Bad("stop", "stop must be a string or a list of strings");
  for (size_t i = 0; i < it->size(); ++i) {
    if (!(*it)[i].is_string()) {
      return Bad("stop", absl::StrCat("stop[", i, "] must be a string"));
    }
    s->add_stop((*it)[i].get<std::string>());
  }
  return absl::OkStatus();
}

// Options this server does not implement are refused unless neutral, so no client believes
// they took effect.
absl::Status Unsupported(const json& body) {
  for (const char* key : {"presence_penalty", "frequency_penalty"}) {
    auto it = body.find(key);
    if (it == body.end() || it->is_null()) continue;
    if (!it->is_number() || it->get<double>() != 0) {
      return Bad(key, absl::StrCat(key, " is not supported by this server; leave it unset or 0"));
    }
  }
  for (const char* key : {"logprobs", "echo"}) {
    auto it = body.find(key);
    if (it == body.end() || it->is_null()) continue;
    if (!(it->is_boolean() && !it->get<bool>()) && !(it->is_number() && it->get<double>() == 0)) {
      return Bad(key, absl::StrCat(key, " is not supported by this server; leave it unset"));
    }
  }
  for (const char* key : {"tools", "functions", "logit_bias", "suffix"}) {
    auto it = body.find(key);
    if (it == body.end() || it->is_null()) continue;
    if ((it->is_array() || it->is_object() || it->is_string()) && it->empty()) continue;
    return Bad(key, absl::StrCat(key, " is not supported by this server"));
  }
  return absl::OkStatus();
}

absl::Status Extension(const json& body, v1::GenerateRequest* g) {
  auto it = body.find("semshare");
  if (it == body.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_object()) {
    return Bad("semshare", "semshare must be an object {cache_policy, similarity_threshold}");
  }
  auto p = it->find("cache_policy");
  if (p != it->end() && !p->is_null()) {
    const std::string v = p->is_string() ? p->get<std::string>() : "";
    if (v == "auto") {
      g->set_cache_policy(v1::CACHE_POLICY_AUTO);
    } else if (v == "bypass") {
      g->set_cache_policy(v1::CACHE_POLICY_BYPASS);
    } else if (v == "no_publish") {
      g->set_cache_policy(v1::CACHE_POLICY_NO_PUBLISH);
    } else {
      return Bad("semshare.cache_policy",
                 "semshare.cache_policy must be \"auto\", \"bypass\" or \"no_publish\"");
    }
  }
  if (auto e = it->find("ignore_eos"); e != it->end() && !e->is_null()) {
    if (!e->is_boolean())
      return Bad("semshare.ignore_eos", "semshare.ignore_eos must be a boolean");
    g->mutable_sampling()->set_ignore_eos(e->get<bool>());
  }
  double t = 0;
  if (auto s = Number(*it, "similarity_threshold", &t); !s.ok()) {
    return WithParam(s, "semshare.similarity_threshold");
  }
  g->set_similarity_threshold(static_cast<float>(t));
  return absl::OkStatus();
}

json Usage(const serving::ServeResult& r) {
  const int64_t completion = static_cast<int64_t>(r.gen.tokens.size());
  return {{"prompt_tokens", r.gen.prompt_tokens},
          {"completion_tokens", completion},
          {"total_tokens", r.gen.prompt_tokens + completion},
          {"prompt_tokens_details", {{"cached_tokens", r.reused_tokens}}}};
}

json Extra(const serving::ServeResult& r, const v1::Timings& t) {
  return {{"cache",
           {{"result", serving::CacheResultName(r.cache_result)},
            {"hit", r.cache_result == serving::CacheResult::kHit},
            {"kind", r.hit_kind},
            {"reference_id", r.reference_id},
            {"similarity", r.similarity < 0 ? 0.0 : r.similarity},
            {"exact_tokens", r.exact_tokens},
            {"reused_tokens", r.reused_tokens},
            {"recomputed_tokens", r.recomputed_tokens},
            {"kv_bytes", r.kv_bytes},
            {"published", r.published}}},
          {"timings",
           {{"queue_ms", t.queue_ms()},
            {"lookup_ms", t.lookup_ms()},
            {"prefill_ms", t.prefill_ms()},
            {"ttft_ms", t.ttft_ms()},
            {"total_ms", t.total_ms()}}}};
}

json Envelope(OpenAiEndpoint e, const OpenAiReply& reply, bool chunk) {
  const char* object = e == OpenAiEndpoint::kChat
                           ? (chunk ? "chat.completion.chunk" : "chat.completion")
                           : "text_completion";
  return {{"id", reply.id}, {"object", object}, {"created", reply.created}, {"model", reply.model}};
}

}  // namespace

absl::Status WithParam(absl::Status s, std::string_view param) {
  s.SetPayload(std::string(kParamPayload), absl::Cord(std::string(param)));
  return s;
}

absl::Status WithValidationParam(absl::Status s, OpenAiEndpoint endpoint) {
  if (s.ok() || s.GetPayload(std::string(kParamPayload)).has_value()) return s;
  const std::string message(s.message());
  std::string_view m = message;
  m = m.substr(0, std::min(m.find(' '), m.size()));
  if (m.substr(0, 9) == "sampling.") m.remove_prefix(9);
  m = m.substr(0, std::min(std::min(m.find('['), m.find('.')), m.size()));
  for (std::string_view f : {"prompt", "messages", "max_tokens", "temperature", "top_p", "stop",
                             "seed", "similarity_threshold", "cache_policy"}) {
    if (m != f) continue;
    if (f == "similarity_threshold" || f == "cache_policy") {
      return WithParam(std::move(s), absl::StrCat("semshare.", std::string(f)));
    }
    if (f == "max_tokens" && endpoint == OpenAiEndpoint::kChat) {
      return WithParam(std::move(s), "max_tokens");
    }
    return WithParam(std::move(s), f);
  }
  return s;
}

absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(std::string_view body, OpenAiEndpoint endpoint) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError(
        "the request body is not valid JSON (UTF-8); send a JSON object such as "
        "{\"model\": ..., \"messages\": [...]}");
  }
  if (!j.is_object()) return absl::InvalidArgumentError("the request body must be a JSON object");
  OpenAiRequest out;
  out.endpoint = endpoint;
  auto model = j.find("model");
  if (model == j.end() || !model->is_string() || model->get<std::string>().empty()) {
    return Bad("model", "model is required: the id GET /v1/models lists");
  }
  out.model = model->get<std::string>();

  int64_t n = 1;
  bool has_n = false;
  if (auto s = Integer(j, "n", std::numeric_limits<int64_t>::min(),
                       std::numeric_limits<int64_t>::max(), &n, &has_n);
      !s.ok()) {
    return s;
  }
  if (n != 1) return Bad("n", absl::StrCat("n must be 1 (one choice per request), got ", n));
  if (auto s = Unsupported(j); !s.ok()) return s;

  if (auto it = j.find("stream"); it != j.end() && !it->is_null()) {
    if (!it->is_boolean()) return Bad("stream", "stream must be true or false");
    out.stream = it->get<bool>();
  }
  if (auto it = j.find("stream_options"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) return Bad("stream_options", "stream_options must be an object");
    if (!out.stream) {
      return Bad("stream_options", "stream_options is only allowed with stream: true");
    }
    auto u = it->find("include_usage");
    if (u != it->end() && !u->is_null()) {
      if (!u->is_boolean()) {
        return Bad("stream_options.include_usage", "include_usage must be true or false");
      }
      out.include_usage = u->get<bool>();
    }
  }

  v1::GenerateRequest& g = out.generate;
  if (endpoint == OpenAiEndpoint::kChat) {
    if (auto s = Messages(j, &g); !s.ok()) return s;
  } else {
    if (auto s = Prompt(j, &g); !s.ok()) return s;
  }
  v1::SamplingParams* sp = g.mutable_sampling();
  // max_completion_tokens (the current name) wins over max_tokens (the older one).
  for (const char* key : {"max_tokens", "max_completion_tokens"}) {
    int64_t v = 0;
    bool present = false;
    if (auto s = Integer(j, key, std::numeric_limits<int32_t>::min(),
                         std::numeric_limits<int32_t>::max(), &v, &present);
        !s.ok()) {
      return s;
    }
    if (!present) continue;
    if (v < 1) {
      return Bad(key, absl::StrCat(key,
                                   " must be at least 1 (leave it unset for the server's "
                                   "default), got ",
                                   v));
    }
    sp->set_max_tokens(static_cast<int32_t>(v));
  }
  double temperature = 1.0;  // OpenAI's default; 0 is greedy
  if (auto s = Number(j, "temperature", &temperature); !s.ok()) return s;
  if (temperature < 0 || temperature > 2) {
    return Bad("temperature",
               absl::StrCat("temperature must be in [0, 2] (0 = greedy), got ", temperature));
  }
  sp->set_temperature(static_cast<float>(temperature));
  double top_p = 1.0;
  if (auto s = Number(j, "top_p", &top_p); !s.ok()) return s;
  if (top_p <= 0 || top_p > 1) {
    return Bad("top_p", absl::StrCat("top_p must be in (0, 1], got ", top_p));
  }
  sp->set_top_p(static_cast<float>(top_p));
  int64_t seed = 0;
  bool has_seed = false;
  if (auto s = Integer(j, "seed", std::numeric_limits<int64_t>::min(),
                       std::numeric_limits<int64_t>::max(), &seed, &has_seed);
      !s.ok()) {
    return s;
  }
  sp->set_seed(static_cast<uint64_t>(seed));
  if (auto s = Stop(j, sp); !s.ok()) return s;
  if (auto s = Extension(j, &g); !s.ok()) return s;
  return out;
}

absl::StatusOr<PreparedGenerate> PrepareGenerate(std::string_view content_type,
                                                 std::string_view body, OpenAiEndpoint endpoint,
                                                 std::string_view model_id,
                                                 const RequestLimits& limits) {
  const std::string type = absl::AsciiStrToLower(std::string(content_type));
  if (type.rfind("application/json", 0) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("Content-Type must be application/json, got \"", type.substr(0, 100),
                     "\"; send the body as JSON (curl: -H 'Content-Type: application/json')"));
  }
  absl::StatusOr<OpenAiRequest> parsed = ParseOpenAiRequest(body, endpoint);
  if (!parsed.ok()) return parsed.status();
  if (parsed->model != model_id) {
    return WithParam(
        absl::NotFoundError(absl::StrCat("the model \"", parsed->model.substr(0, 200),
                                         "\" does not exist on this server; it serves \"",
                                         std::string(model_id), "\" (GET /v1/models)")),
        "model");
  }
  absl::StatusOr<ValidatedGenerate> v = ValidateGenerateRequest(parsed->generate, limits);
  if (!v.ok()) return WithValidationParam(v.status(), endpoint);
  return PreparedGenerate{*std::move(parsed), *std::move(v)};
}

std::string ErrorJson(std::string_view message, std::string_view type, std::string_view param,
                      std::string_view code) {
  json e = {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}};
  if (!param.empty()) e["param"] = param;
  if (!code.empty()) e["code"] = code;
  return Dump(json{{"error", e}});
}

ApiError ToApiError(const absl::Status& s) {
  ApiError out;
  const char* type = "invalid_request_error";
  const char* code = "";
  switch (s.code()) {
    case absl::StatusCode::kInvalidArgument:
      out.http_status = 400;
      break;
    case absl::StatusCode::kOutOfRange:
      out.http_status = 400;
      code = "context_length_exceeded";
      break;
    case absl::StatusCode::kUnauthenticated:
      out.http_status = 401;
      type = "authentication_error";
      code = "invalid_api_key";
      break;
    case absl::StatusCode::kPermissionDenied:
      out.http_status = 403;
      type = "permission_error";
      break;
    case absl::StatusCode::kNotFound:
      out.http_status = 404;
      code = "model_not_found";
      break;
    case absl::StatusCode::kResourceExhausted:
      out.http_status = 429;
      type = "rate_limit_error";
      code = "queue_full";
      break;
    case absl::StatusCode::kUnavailable:
      out.http_status = 503;
      type = "server_error";
      code = "unavailable";
      break;
    case absl::StatusCode::kDeadlineExceeded:
      out.http_status = 504;
      type = "server_error";
      code = "timeout";
      break;
    case absl::StatusCode::kCancelled:
      out.http_status = 499;
      code = "cancelled";
      break;
    default:
      out.http_status = 500;
      type = "server_error";
      break;
  }
  std::string param;
  if (auto p = s.GetPayload(std::string(kParamPayload)); p.has_value()) {
    param = std::string(*p);
  }
  out.body = ErrorJson(std::string(s.message()), type, param, code);
  return out;
}

const char* OpenAiFinishReason(engine::FinishReason r) {
  switch (r) {
    case engine::FinishReason::kEndOfGeneration:
    case engine::FinishReason::kStopString:
      return "stop";
    case engine::FinishReason::kLength:
      return "length";
    case engine::FinishReason::kCancelled:
      break;
  }
  return "stop";
}

v1::Timings TimingsOf(const serving::ServeResult& r) {
  // As the gRPC adapter reports them: the front queue is added to the loop's queue, the first
  // token and the total are counted from acceptance.
  v1::Timings t;
  t.set_queue_ms(r.front_queue_ms + r.loop_queue_ms);
  t.set_lookup_ms(r.lookup_ms);
  t.set_prefill_ms(r.prefill_ms);
  t.set_ttft_ms(r.front_queue_ms + r.first_token_ms);
  t.set_total_ms(r.front_queue_ms + r.total_ms);
  return t;
}

std::string CompletionJson(OpenAiEndpoint e, const OpenAiReply& reply,
                           const serving::ServeResult& r, const v1::Timings& t) {
  json out = Envelope(e, reply, /*chunk=*/false);
  json choice = {{"index", 0}, {"finish_reason", OpenAiFinishReason(r.gen.finish)}};
  if (e == OpenAiEndpoint::kChat) {
    choice["message"] = {{"role", "assistant"}, {"content", r.gen.text}};
  } else {
    choice["text"] = r.gen.text;
    choice["logprobs"] = nullptr;
  }
  out["choices"] = json::array({choice});
  out["usage"] = Usage(r);
  out["semshare"] = Extra(r, t);
  return Dump(out);
}

std::string ChunkJson(OpenAiEndpoint e, const OpenAiReply& reply, std::string_view text,
                      bool first) {
  json out = Envelope(e, reply, /*chunk=*/true);
  json choice = {{"index", 0}, {"finish_reason", nullptr}};
  if (e == OpenAiEndpoint::kChat) {
    choice["delta"] =
        first ? json{{"role", "assistant"}, {"content", text}} : json{{"content", text}};
  } else {
    choice["text"] = text;
    choice["logprobs"] = nullptr;
  }
  out["choices"] = json::array({choice});
  return Dump(out);
}

std::string FinalChunkJson(OpenAiEndpoint e, const OpenAiReply& reply,
                           const serving::ServeResult& r, const v1::Timings& t) {
  json out = Envelope(e, reply, /*chunk=*/true);
  json choice = {{"index", 0}, {"finish_reason", OpenAiFinishReason(r.gen.finish)}};
  if (e == OpenAiEndpoint::kChat) {
    choice["delta"] = json::object();
  } else {
    choice["text"] = "";
    choice["logprobs"] = nullptr;
  }
  out["choices"] = json::array({choice});
  out["semshare"] = Extra(r, t);
  return Dump(out);
}

std::string UsageChunkJson(OpenAiEndpoint e, const OpenAiReply& reply,
                           const serving::ServeResult& r) {
  json out = Envelope(e, reply, /*chunk=*/true);
  out["choices"] = json::array();
  out["usage"] = Usage(r);
  return Dump(out);
}

}  // namespace semshare::server
