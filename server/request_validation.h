// Validation of untrusted requests: every size and value an attacker or a buggy client controls
// is checked here, before anything is queued, with a message that says what to change
// (DESIGN.md section 8). Pure functions of the bytes and the limits: the fuzz target
// (tests/fuzz) calls ParseGenerateRequest on arbitrary input.
#ifndef SEMSHARE_SERVER_REQUEST_VALIDATION_H_
#define SEMSHARE_SERVER_REQUEST_VALIDATION_H_

#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"
#include "semshare/v1/semshare.pb.h"
#include "serving/pipeline.h"

namespace semshare::server {

using serving::CachePolicy;
using serving::PromptInput;

struct RequestLimits {
  int32_t max_new_tokens = 1024;
  int32_t default_max_tokens = 128;
  int32_t max_stop_strings = 16;
  int32_t max_stop_bytes = 256;
  int32_t max_messages = 256;
  int64_t max_prompt_bytes = int64_t{4} << 20;
  float default_threshold = 0.8f;
};

// What a valid GenerateRequest becomes (namespace and callbacks are the service's to fill).
struct ValidatedGenerate {
  PromptInput input;
  engine::GenerateOptions options;
  CachePolicy policy = CachePolicy::kAuto;
  float threshold = 0.8f;
};

// INVALID_ARGUMENT: empty prompt or messages, a message without a role, negative or
// non-finite temperature (or above 100), top_p outside (0, 1], negative top_k, max_tokens set
// to 0 or less,
// unknown cache_policy, similarity_threshold outside [0, 1], too many / empty / long stop
// strings, too many messages. OUT_OF_RANGE: max_tokens over the server's limit.
absl::StatusOr<ValidatedGenerate> ValidateGenerateRequest(const v1::GenerateRequest& r,
                                                          const RequestLimits& limits);
// Input of Tokenize / AddReference / LookupReference (the same oneof rules).
absl::StatusOr<PromptInput> ValidatePromptInput(bool has_prompt, const std::string& prompt,
                                                const v1::Messages* messages,
                                                const RequestLimits& limits);
// Parses serialized bytes (INVALID_ARGUMENT naming the message type when they are not a valid
// encoding, which includes string fields that are not UTF-8), then validates.
absl::StatusOr<ValidatedGenerate> ParseGenerateRequest(std::string_view bytes,
                                                       const RequestLimits& limits);

}  // namespace semshare::server

#endif  // SEMSHARE_SERVER_REQUEST_VALIDATION_H_
