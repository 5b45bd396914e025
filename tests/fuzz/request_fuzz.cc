// Fuzz target: request validation (server/request_validation.h) on arbitrary bytes taken as a
// serialized semshare.v1.GenerateRequest. Properties: it never crashes; a refusal is
// INVALID_ARGUMENT or OUT_OF_RANGE (the codes the API documents for bad input) with a
// non-empty message; an accepted request respects every limit the server relies on later
// (max_tokens in [1, max_new_tokens], stop strings and messages within their counts and sizes,
// finite sampling values in range, a non-empty prompt or conversation).
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "server/request_validation.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using semshare::server::ParseGenerateRequest;
  using semshare::server::RequestLimits;
  RequestLimits limits;
  limits.max_new_tokens = 64;
  limits.default_max_tokens = 8;
  limits.max_stop_strings = 4;
  limits.max_stop_bytes = 16;
  limits.max_messages = 8;
  limits.max_prompt_bytes = 4096;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<semshare::server::ValidatedGenerate> v = ParseGenerateRequest(bytes, limits);
  if (!v.ok()) {
    FUZZ_CHECK(v.status().code() == absl::StatusCode::kInvalidArgument ||
               v.status().code() == absl::StatusCode::kOutOfRange);
    FUZZ_CHECK(!v.status().message().empty());
    return 0;
  }
  const auto& o = v->options;
  FUZZ_CHECK(o.max_tokens >= 1 && o.max_tokens <= limits.max_new_tokens);
  FUZZ_CHECK(static_cast<int32_t>(o.stop.size()) <= limits.max_stop_strings);
  for (const auto& s : o.stop) {
    FUZZ_CHECK(!s.empty() && static_cast<int32_t>(s.size()) <= limits.max_stop_bytes);
  }
  FUZZ_CHECK(std::isfinite(o.sampling.temperature) && o.sampling.temperature >= 0 &&
             o.sampling.temperature <= 100);
  FUZZ_CHECK(o.sampling.top_p > 0 && o.sampling.top_p <= 1);
  FUZZ_CHECK(o.sampling.top_k >= 0);
  FUZZ_CHECK(o.sampling.Validate().ok());
  FUZZ_CHECK(v->threshold > 0 && v->threshold <= 1);
  if (v->input.is_chat) {
    FUZZ_CHECK(!v->input.messages.empty() &&
               static_cast<int32_t>(v->input.messages.size()) <= limits.max_messages);
    for (const auto& m : v->input.messages) FUZZ_CHECK(!m.role.empty());
  } else {
    FUZZ_CHECK(!v->input.prompt.empty() &&
               static_cast<int64_t>(v->input.prompt.size()) <= limits.max_prompt_bytes);
  }
  return 0;
}
