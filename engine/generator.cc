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
  TokenStream stream(*model_.tokenizer, options, &on_text);
  double ttft_ms = 0;
  for (;;) {
    if (options.should_stop && options.should_stop()) {
      stream.Cancel();
      break;
    }
    const bool more = stream.Accept(logits);
    if (stream.steps() == 1) ttft_ms = MsSince(t0);
    if (!more) break;
    if (auto s = forward_step(stream.last_token(), logits.data()); !s.ok()) return s;
  }
  GenerateResult result = stream.Finish();
  result.prompt_tokens = prompt_tokens;
  result.timings.ttft_ms = ttft_ms;
  result.timings.total_ms = MsSince(t0);
  if (!result.tokens.empty() || result.finish != FinishReason::kLength) {
    result.timings.decode_ms = result.timings.total_ms - result.timings.ttft_ms;
  }
  return result;
}

TokenStream::TokenStream(const Tokenizer& tokenizer, const GenerateOptions& options,
                         const TextCallback* on_text)
    : tokenizer_(tokenizer),
      options_(options),
      on_text_(on_text != nullptr && *on_text ? on_text : nullptr),
      sampler_(options.sampling),
      decoder_(tokenizer) {
  result_.finish = FinishReason::kLength;
}

bool TokenStream::Emit(size_t end) {
  if (end > emitted_ && on_text_ != nullptr &&
      !(*on_text_)(std::string_view(text_).substr(emitted_, end - emitted_))) {
    return false;
  }
  emitted_ = std::max(emitted_, end);
  return true;
}

bool TokenStream::Accept(std::span<const float> logits) {
  if (result_.finish == FinishReason::kCancelled || steps_ >= options_.max_tokens) return false;
  const int32_t id = sampler_.Sample(logits);
  ++steps_;
  if (options_.stop_at_eog && tokenizer_.IsEog(id)) {
    result_.finish = FinishReason::kEndOfGeneration;
    return false;
  }
  result_.tokens.push_back(id);
  const size_t before = text_.size();
  text_ += decoder_.Push(id);
  bool stopped = false;
  for (const std::string& s : options_.stop) {
    // A new match can only start where it would overlap the newly added text.
    const size_t from = before >= s.size() ? before - s.size() + 1 : 0;
    const size_t at = text_.find(s, from);
    if (at != std::string::npos) {
      text_.resize(at);
      stopped = true;
    }
  }
  if (stopped) {
    result_.finish = FinishReason::kStopString;
    return false;
  }
  if (!Emit(text_.size() - HeldBack(text_, options_.stop))) {
    result_.finish = FinishReason::kCancelled;
    return false;
  }
  return steps_ < options_.max_tokens;
}

GenerateResult TokenStream::Finish() {
  if (result_.finish != FinishReason::kStopString && result_.finish != FinishReason::kCancelled) {
    text_ += decoder_.Flush();
  }
  if (result_.finish != FinishReason::kCancelled) Emit(text_.size());
  result_.text = std::move(text_);
  return std::move(result_);
}

}  // namespace semshare::engine
