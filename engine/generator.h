// Generator: prompt -> tokens -> prefill -> decode with sampling until a stop condition,
// streaming text pieces that are whole UTF-8 characters and never part of a stop string.
// One Generator per model+backend; Generate() is not thread-safe (it owns the forward pass'
// scratch); the server runs one per worker.
#ifndef SEMSHARE_ENGINE_GENERATOR_H_
#define SEMSHARE_ENGINE_GENERATOR_H_

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/llama_forward.h"
#include "engine/model/model.h"
#include "engine/sampling.h"
#include "engine/text/chat_template.h"

namespace semshare::engine {

struct GenerateOptions {
  int32_t max_tokens = 128;  // new tokens at most; >= 1
  SamplingParams sampling;
  std::vector<std::string> stop;  // stop strings; the text ends before the first match
  bool stop_at_eog = true;        // stop at end-of-generation tokens (EOS, <|im_end|>, ...)
  // Called once per token before it is sampled (the server checks cancellation and deadlines
  // and times tokens here); returning true stops with FinishReason::kCancelled.
  std::function<bool()> should_stop;
};

enum class FinishReason { kEndOfGeneration, kStopString, kLength, kCancelled };
const char* FinishReasonName(FinishReason r);

struct GenerateTimings {
  double prefill_ms = 0;  // prompt through the model, logits of its last token
  double ttft_ms = 0;     // Generate() start to the first token sampled
  double decode_ms = 0;   // after the first token to the end
  double total_ms = 0;
};

struct GenerateResult {
  std::string text;
  std::vector<int32_t> tokens;  // generated ids (the stop token excluded)
  FinishReason finish = FinishReason::kLength;
  int64_t prompt_tokens = 0;
  GenerateTimings timings;
};

// Receives text as it becomes final; returning false cancels generation.
using TextCallback = std::function<bool(std::string_view piece)>;

// One request's decoding state, a step at a time: samples each token from its logits with the
// request's parameters (its own seeded generator), ends at end-of-generation, a stop string or
// max_tokens, and hands on_text the text as it becomes final (whole UTF-8 characters, never
// part of a possible stop string). Generator::DecodeWith drives one for a single request; the
// serving engine loop drives one per running request, whatever the batch around it.
// Not thread-safe. `tokenizer` and `on_text` are borrowed and must outlive it.
class TokenStream {
 public:
  TokenStream(const Tokenizer& tokenizer, const GenerateOptions& options,
              const TextCallback* on_text);
  // Samples the next token from logits[vocab]. True when generation goes on: feed
  // last_token() to the model and call Accept with its logits. False when it has ended (or
  // on_text asked to stop: finish() is then kCancelled); call Finish.
  bool Accept(std::span<const float> logits);
  // Ends the stream early (cancellation): Finish then reports kCancelled.
  void Cancel() { result_.finish = FinishReason::kCancelled; }
  // Flushes the text (unless stopped or cancelled) and returns the result; once.
  GenerateResult Finish();

  int32_t last_token() const { return result_.tokens.back(); }
  const std::vector<int32_t>& tokens() const { return result_.tokens; }
  FinishReason finish() const { return result_.finish; }
  int32_t steps() const { return steps_; }

 private:
  bool Emit(size_t end);

  const Tokenizer& tokenizer_;
  const GenerateOptions& options_;
  const TextCallback* on_text_;
  Sampler sampler_;
  StreamDecoder decoder_;
  GenerateResult result_;
  std::string text_;    // all generated text so far
  size_t emitted_ = 0;  // bytes of text_ handed to on_text
  int32_t steps_ = 0;   // tokens sampled
};

class Generator {
 public:
  Generator(const Model& model, Backend& backend);

  // Token ids of a plain prompt (special-token strings in it are parsed) with BOS when the
  // model wants one.
  std::vector<int32_t> TokenizePrompt(std::string_view prompt) const;
  // Token ids of a conversation rendered with the model's chat template, ready for the
  // assistant's reply.
  absl::StatusOr<std::vector<int32_t>> TokenizeChat(std::span<const ChatMessage> messages) const;

  absl::StatusOr<GenerateResult> Generate(std::span<const int32_t> prompt,
                                          const GenerateOptions& options,
                                          const TextCallback& on_text = nullptr);

  // Decodes after a prefill done elsewhere (a selective one, say): `cache` holds the KV of the
  // prompt's prompt_tokens tokens (rows may have been trimmed by retention) and logits[vocab]
  // are its last token's. Generated tokens' KV are appended to `cache`; logits is overwritten.
  // Timings count from this call (prefill_ms = 0).
  absl::StatusOr<GenerateResult> Decode(int64_t prompt_tokens, KvCache& cache,
                                        std::span<float> logits, const GenerateOptions& options,
                                        const TextCallback& on_text = nullptr);

  // Decode with the forward step supplied: forward_step(id, logits) appends token `id` at the next
  // position to the caller's KV (wherever it lives: the server's CUDA sessions keep it on the
  // device) and writes its logits[vocab]. Decode() is this with LlamaForward on `cache`.
  using DecodeStep = std::function<absl::Status(int32_t id, float* logits)>;
  absl::StatusOr<GenerateResult> DecodeWith(int64_t prompt_tokens, const DecodeStep& forward_step,
                                            std::span<float> logits, const GenerateOptions& options,
                                            const TextCallback& on_text = nullptr);

  // InvalidArgument naming the problem: max_tokens < 1, sampling out of range, an empty stop
  // string, or prompt + max_tokens over the model's context.
  absl::Status CheckOptions(int64_t prompt_tokens, const GenerateOptions& options) const;

  const Model& model() const { return model_; }

 private:
  const Model& model_;
  LlamaForward forward_;
};

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_GENERATOR_H_
