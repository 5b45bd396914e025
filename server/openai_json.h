// The OpenAI-compatible JSON mapping (DESIGN.md section 3: one pipeline, two thin protocol
// adapters): request bodies of POST /v1/chat/completions and /v1/completions become the same
// v1::GenerateRequest the gRPC adapter takes, so both go through ValidateGenerateRequest
// (server/request_validation.h): one rule, two adapters. Responses, stream chunks and errors
// are built here too. Pure functions of their input: the fuzz target (tests/fuzz/openai_fuzz.cc)
// runs ParseOpenAiRequest and the response builders on arbitrary bytes.
#ifndef SEMSHARE_SERVER_OPENAI_JSON_H_
#define SEMSHARE_SERVER_OPENAI_JSON_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "semshare/v1/semshare.pb.h"
#include "server/request_validation.h"
#include "serving/pipeline.h"

namespace semshare::server {

enum class OpenAiEndpoint { kChat, kCompletion };

// What a request body says beyond the GenerateRequest.
struct OpenAiRequest {
  OpenAiEndpoint endpoint = OpenAiEndpoint::kChat;
  std::string model;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  v1::GenerateRequest generate;
};

// Parses and checks the OpenAI shape (JSON object, types, n == 1, model present) and maps it:
// messages (content a string or a list of text parts) or prompt (a string or a list of one
// string), max_completion_tokens / max_tokens, temperature, top_p, seed, stop (string or list),
// and the extension `semshare: {cache_policy: auto|bypass|no_publish, similarity_threshold,
// ignore_eos}`.
// INVALID_ARGUMENT naming the field (payload kParamPayload = the field name) otherwise.
// Fields OpenAI defines that do not change the output here (user, logit_bias absent...) are
// accepted and ignored; presence_penalty / frequency_penalty / logprobs other than their
// neutral values are refused, since this server does not implement them.
absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(std::string_view body, OpenAiEndpoint endpoint);

// Everything the HTTP adapter checks in a POST body before the pipeline, in its order: the
// Content-Type (application/json), ParseOpenAiRequest, the model id (NOT_FOUND, param model),
// then the shared ValidateGenerateRequest (with WithValidationParam).
struct PreparedGenerate {
  OpenAiRequest request;
  ValidatedGenerate validated;
};
absl::StatusOr<PreparedGenerate> PrepareGenerate(std::string_view content_type,
                                                 std::string_view body, OpenAiEndpoint endpoint,
                                                 std::string_view model_id,
                                                 const RequestLimits& limits);

// The status payload key that names the offending request field ("param" of the error JSON).
inline constexpr std::string_view kParamPayload = "semshare.dev/param";
absl::Status WithParam(absl::Status s, std::string_view param);
// A status of the shared validation (ValidateGenerateRequest) with its param: the field its
// message starts with, in OpenAI's names ("sampling.max_tokens ..." -> max_tokens, "messages[2]
// .role" -> messages); unchanged when it has one or names no field.
absl::Status WithValidationParam(absl::Status s, OpenAiEndpoint endpoint);

// An error as OpenAI writes it: {"error": {"message", "type", "param", "code"}} and its HTTP
// status (400 invalid argument and out of range, 401, 403, 404, 413, 429, 499 cancelled by the
// client, 503 unavailable, 504 deadline, 500 otherwise).
struct ApiError {
  int http_status = 500;
  std::string body;
};
ApiError ToApiError(const absl::Status& s);
// For statuses that are not from a Status (httplib's 413, 404 of an unknown route...).
std::string ErrorJson(std::string_view message, std::string_view type, std::string_view param,
                      std::string_view code);

// What a finished request reports (the model id, creation time and id are the adapter's).
struct OpenAiReply {
  std::string id;  // "chatcmpl-..." / "cmpl-..."
  std::string model;
  int64_t created = 0;  // unix seconds
};

const char* OpenAiFinishReason(engine::FinishReason r);

// The whole response of a non-streaming request.
std::string CompletionJson(OpenAiEndpoint endpoint, const OpenAiReply& reply,
                           const serving::ServeResult& result, const v1::Timings& timings);
// One SSE event body (without "data: " and the blank line): a text delta, or the last chunk
// with finish_reason (and the semshare extra field); usage chunk: choices empty, usage set.
std::string ChunkJson(OpenAiEndpoint endpoint, const OpenAiReply& reply, std::string_view text,
                      bool first);
std::string FinalChunkJson(OpenAiEndpoint endpoint, const OpenAiReply& reply,
                           const serving::ServeResult& result, const v1::Timings& timings);
std::string UsageChunkJson(OpenAiEndpoint endpoint, const OpenAiReply& reply,
                           const serving::ServeResult& result);

// Timings of a result as the gRPC response carries them (queue, lookup, prefill, ttft, total).
v1::Timings TimingsOf(const serving::ServeResult& r);

}  // namespace semshare::server

#endif  // SEMSHARE_SERVER_OPENAI_JSON_H_
