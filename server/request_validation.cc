#include "server/request_validation.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace semshare::server {

absl::StatusOr<PromptInput> ValidatePromptInput(bool has_prompt, const std::string& prompt,
                                                const v1::Messages* messages,
                                                const RequestLimits& limits) {
  PromptInput in;
  if (has_prompt) {
    if (prompt.empty()) {
      return absl::InvalidArgumentError("prompt is empty; send the text to complete");
    }
    if (static_cast<int64_t>(prompt.size()) > limits.max_prompt_bytes) {
      return absl::OutOfRangeError(
          absl::StrCat("prompt is ", prompt.size(), " bytes; at most ", limits.max_prompt_bytes));
    }
    in.prompt = prompt;
    return in;
  }
  if (messages == nullptr) {
    return absl::InvalidArgumentError("set either prompt or messages");
  }
  if (messages->messages_size() == 0) {
    return absl::InvalidArgumentError("messages is empty; send at least one message");
  }
  if (messages->messages_size() > limits.max_messages) {
    return absl::InvalidArgumentError(absl::StrCat("messages has ", messages->messages_size(),
                                                   " entries; at most ", limits.max_messages));
  }
  in.is_chat = true;
  int64_t bytes = 0;
  for (int i = 0; i < messages->messages_size(); ++i) {
    const v1::ChatMessage& m = messages->messages(i);
    if (m.role().empty() || m.role().size() > 64) {
      return absl::InvalidArgumentError(
          absl::StrCat("messages[", i, "].role must be 1..64 bytes (system, user, assistant)"));
    }
    bytes += static_cast<int64_t>(m.content().size());
    in.messages.push_back({m.role(), m.content()});
  }
  if (bytes > limits.max_prompt_bytes) {
    return absl::OutOfRangeError(absl::StrCat(
        "messages hold ", bytes, " bytes of content; at most ", limits.max_prompt_bytes));
  }
  return in;
}

absl::StatusOr<ValidatedGenerate> ValidateGenerateRequest(const v1::GenerateRequest& r,
                                                          const RequestLimits& limits) {
  ValidatedGenerate v;
  absl::StatusOr<PromptInput> in =
      ValidatePromptInput(r.input_case() == v1::GenerateRequest::kPrompt, r.prompt(),
                          r.has_messages() ? &r.messages() : nullptr, limits);
  if (!in.ok()) return in.status();
  v.input = *std::move(in);

  const v1::SamplingParams& s = r.sampling();
  if (s.has_max_tokens() && s.max_tokens() < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sampling.max_tokens must be >= 1 (leave it unset for the server's default of ",
        limits.default_max_tokens, "), got ", s.max_tokens()));
  }
  if (s.max_tokens() > limits.max_new_tokens) {
    return absl::OutOfRangeError(absl::StrCat("sampling.max_tokens is ", s.max_tokens(),
                                              "; this server allows at most ",
                                              limits.max_new_tokens));
  }
  v.options.max_tokens = s.has_max_tokens() ? s.max_tokens() : limits.default_max_tokens;
  if (!std::isfinite(s.temperature()) || s.temperature() < 0 || s.temperature() > 100) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sampling.temperature must be in [0, 100] (0 = greedy), got ", s.temperature()));
  }
  if (!std::isfinite(s.top_p()) || s.top_p() < 0 || s.top_p() > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.top_p must be in (0, 1] (0 = unset = 1), got ", s.top_p()));
  }
  if (s.top_k() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.top_k must be >= 0 (0 = no limit), got ", s.top_k()));
  }
  v.options.sampling.temperature = s.temperature();
  v.options.sampling.top_p = s.top_p() == 0 ? 1.0f : s.top_p();
  v.options.sampling.top_k = s.top_k();
  v.options.sampling.seed = s.seed();
  v.options.stop_at_eog = !s.ignore_eos();
  if (s.stop_size() > limits.max_stop_strings) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.stop has ", s.stop_size(),
                                                   " strings; at most ", limits.max_stop_strings));
  }
  for (int i = 0; i < s.stop_size(); ++i) {
    const std::string& stop = s.stop(i);
    if (stop.empty() || static_cast<int32_t>(stop.size()) > limits.max_stop_bytes) {
      return absl::InvalidArgumentError(absl::StrCat("sampling.stop[", i, "] must be 1..",
                                                     limits.max_stop_bytes, " bytes, got ",
                                                     stop.size()));
    }
    v.options.stop.push_back(stop);
  }

  switch (r.cache_policy()) {
    case v1::CACHE_POLICY_AUTO:
      v.policy = CachePolicy::kAuto;
      break;
    case v1::CACHE_POLICY_BYPASS:
      v.policy = CachePolicy::kBypass;
      break;
    case v1::CACHE_POLICY_NO_PUBLISH:
      v.policy = CachePolicy::kNoPublish;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("cache_policy ", static_cast<int>(r.cache_policy()),
                       " is unknown; use AUTO (0), BYPASS (1) or NO_PUBLISH (2)"));
  }
  const float t = r.similarity_threshold();
  if (!std::isfinite(t) || t < 0 || t > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("similarity_threshold must be in (0, 1] (0 = the server's default), got ", t));
  }
  v.threshold = t == 0 ? limits.default_threshold : t;
  return v;
}

absl::StatusOr<ValidatedGenerate> ParseGenerateRequest(std::string_view bytes,
                                                       const RequestLimits& limits) {
  v1::GenerateRequest r;
  if (!r.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::InvalidArgumentError(
        "the request is not a valid semshare.v1.GenerateRequest (malformed encoding, or a "
        "string field such as prompt, content or stop that is not valid UTF-8)");
  }
  return ValidateGenerateRequest(r, limits);
}

}  // namespace semshare::server
