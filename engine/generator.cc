#include "engine/generator.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"

namespace semshare::engine {
namespace {

double MsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// Length of the longest suffix of `text` that is a proper prefix of some stop string: that
// much text must be held back until the next token decides.
size_t HeldBack(std::string_view text, const std::vector<std::string>& stops) {
  size_t held = 0;
  for (const std::string& s : stops) {
    for (size_t len = std::min(s.size() - 1, text.size()); len > held; --len) {
      if (text.substr(text.size() - len) == std::string_view(s).substr(0, len)) {
        held = len;
        break;
      }
    }
  }
  return held;
}

}  // namespace

const char* FinishReasonName(FinishReason r) {
  switch (r) {
    case FinishReason::kEndOfGeneration:
      return "stop";
    case FinishReason::kStopString:
      return "stop_string";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

Generator::Generator(const Model& model, Backend& backend)
    : model_(model), forward_(model, backend) {}

std::vector<int32_t> Generator::TokenizePrompt(std::string_view prompt) const {
  std::vector<int32_t> ids;
  const Tokenizer& tok = *model_.tokenizer;
  if (tok.add_bos() && tok.bos_id() >= 0) ids.push_back(tok.bos_id());
  std::vector<int32_t> body = tok.Encode(prompt, /*parse_special=*/true);
  ids.insert(ids.end(), body.begin(), body.end());
  return ids;
}

absl::StatusOr<std::vector<int32_t>> Generator::TokenizeChat(
    std::span<const ChatMessage> messages) const {
  auto tmpl = ChatTemplate::FromTokenizer(*model_.tokenizer);
  if (!tmpl.ok()) return tmpl.status();
  auto text = tmpl->Render(messages, /*add_generation_prompt=*/true);
  if (!text.ok()) return text.status();
  // A template that writes the BOS text itself (Llama-3) must not get a second BOS.
  if (tmpl->emits_bos()) return model_.tokenizer->Encode(*text, /*parse_special=*/true);
  return TokenizePrompt(*text);
}

absl::Status Generator::CheckOptions(int64_t prompt_tokens, const GenerateOptions& options) const {
  const ModelConfig& c = model_.config;
  if (prompt_tokens < 1) return absl::InvalidArgumentError("the prompt has no tokens");
  if (options.max_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens must be >= 1, got ", options.max_tokens));
  }
  if (auto s = options.sampling.Validate(); !s.ok()) return s;
  for (const std::string& s : options.stop) {
    if (s.empty()) return absl::InvalidArgumentError("stop strings must not be empty");
  }
  if (c.max_context > 0 && prompt_tokens + options.max_tokens > c.max_context) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt (", prompt_tokens, " tokens) + max_tokens (", options.max_tokens,
                     ") exceeds the model's context of ", c.max_context, " tokens"));
  }
  return absl::OkStatus();
}

absl::StatusOr<GenerateResult> Generator::Generate(std::span<const int32_t> prompt,
                                                   const GenerateOptions& options,
                                                   const TextCallback& on_text) {
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t n = static_cast<int64_t>(prompt.size());
  if (auto s = CheckOptions(n, options); !s.ok()) return s;
  KvCache cache = forward_.NewCache();
  cache.Reserve(n + options.max_tokens);
  std::vector<int32_t> pos(n);
  for (int64_t i = 0; i < n; ++i) pos[i] = static_cast<int32_t>(i);
  std::vector<float> logits(model_.config.vocab_size);
  if (auto s = forward_.Forward(prompt, pos, cache, logits.data()); !s.ok()) return s;
  const double prefill_ms = MsSince(t0);
  absl::StatusOr<GenerateResult> result = Decode(n, cache, logits, options, on_text);
  if (!result.ok()) return result;
  result->timings.prefill_ms = prefill_ms;
  result->timings.ttft_ms += prefill_ms;
  result->timings.total_ms += prefill_ms;
  return result;
}

absl::StatusOr<GenerateResult> Generator::Decode(int64_t prompt_tokens, KvCache& cache,
                                                 std::span<float> logits,
                                                 const GenerateOptions& options,
                                                 const TextCallback& on_text) {
  const DecodeStep step = [&](int32_t id, float* out) {
    const int32_t p = cache.next_position();
    return forward_.Forward({&id, 1}, {&p, 1}, cache, out);
  };
  return DecodeWith(prompt_tokens, step, logits, options, on_text);
}

absl::StatusOr<GenerateResult> Generator::DecodeWith(int64_t prompt_tokens,
                                                     const DecodeStep& forward_step,
                                                     std::span<float> logits,
                                                     const GenerateOptions& options,
                                                     const TextCallback& on_text) {
  const auto t0 = std::chrono::steady_clock::now();
  if (auto s = CheckOptions(prompt_tokens, options); !s.ok()) return s;
  if (static_cast<int64_t>(logits.size()) != model_.config.vocab_size) {
    return absl::InvalidArgumentError("decode: logits must hold one value per vocabulary entry");
  }
  GenerateResult result;
  result.prompt_tokens = prompt_tokens;
  Sampler sampler(options.sampling);
  StreamDecoder decoder(*model_.tokenizer);
  std::string text;    // all generated text so far
  size_t emitted = 0;  // bytes of `text` handed to on_text
  auto emit = [&](size_t end) {
    if (end > emitted && on_text &&
        !on_text(std::string_view(text).substr(emitted, end - emitted))) {
      return false;
    }
    emitted = std::max(emitted, end);
    return true;
  };
  result.finish = FinishReason::kLength;
  for (int32_t step = 0; step < options.max_tokens; ++step) {
    if (options.should_stop && options.should_stop()) {
      result.finish = FinishReason::kCancelled;
      break;
    }
    const int32_t id = sampler.Sample(logits);
    if (step == 0) {
      result.timings.ttft_ms = MsSince(t0);
    }
    if (options.stop_at_eog && model_.tokenizer->IsEog(id)) {
      result.finish = FinishReason::kEndOfGeneration;
      break;
    }
    result.tokens.push_back(id);
    const size_t before = text.size();
    text += decoder.Push(id);
    bool stopped = false;
    for (const std::string& s : options.stop) {
      // A new match can only start where it would overlap the newly added text.
      const size_t from = before >= s.size() ? before - s.size() + 1 : 0;
      const size_t at = text.find(s, from);
      if (at != std::string::npos) {
        text.resize(at);
        stopped = true;
      }
    }
    if (stopped) {
      result.finish = FinishReason::kStopString;
      break;
    }
    if (!emit(text.size() - HeldBack(text, options.stop))) {
      result.finish = FinishReason::kCancelled;
      break;
    }
    if (step + 1 == options.max_tokens) break;
    if (auto s = forward_step(id, logits.data()); !s.ok()) return s;
  }
  if (result.finish != FinishReason::kStopString && result.finish != FinishReason::kCancelled) {
    text += decoder.Flush();
  }
  if (result.finish != FinishReason::kCancelled) emit(text.size());
  result.text = std::move(text);
  result.timings.total_ms = MsSince(t0);
  if (!result.tokens.empty() || result.finish != FinishReason::kLength) {
    result.timings.decode_ms = result.timings.total_ms - result.timings.ttft_ms;
  }
  return result;
}

}  // namespace semshare::engine
