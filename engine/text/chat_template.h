// Chat templates: turns a conversation into the prompt text a chat model was trained on.
//
// We do not run Jinja. A model's template (tokenizer.chat_template) is recognised as one of
// two families and rendered by hand, reproducing exactly what the Jinja template prints for
// plain conversations (no tools):
//   ChatML (SmolLM2, Qwen2):  <|im_start|>{role}\n{content}<|im_end|>\n ...
//                             generation prompt <|im_start|>assistant\n
//   Llama-3: [bos]<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>
//                             generation prompt <|start_header_id|>assistant<|end_header_id|>\n\n
// A default system message that the template inserts when the conversation does not start
// with one (SmolLM2: "You are a helpful AI assistant named SmolLM, ...") is read from the
// template text, not hard-coded per model. Templates that print something else for plain
// conversations (e.g. Llama-3.1's dated system header) are Unimplemented.
// tests/oracle/tokenizer_oracle_test.py checks Render against jinja2 on the real templates.
//
// Immutable after construction; Render is thread-safe.
#ifndef SEMSHARE_ENGINE_TEXT_CHAT_TEMPLATE_H_
#define SEMSHARE_ENGINE_TEXT_CHAT_TEMPLATE_H_

#include <span>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/text/tokenizer.h"

namespace semshare::engine {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

class ChatTemplate {
 public:
  enum class Style { kChatMl, kLlama3 };

  // From the tokenizer's template; a model without one gets Llama-3 when its vocabulary has
  // <|start_header_id|>, ChatML otherwise (llama.cpp's default). Unimplemented when the
  // template is of neither family.
  static absl::StatusOr<ChatTemplate> FromTokenizer(const Tokenizer& tokenizer);
  // The same from template text; `bos_text` is what Jinja's `bos_token` would print.
  static absl::StatusOr<ChatTemplate> FromText(std::string_view jinja, std::string_view bos_text,
                                               Style default_style = Style::kChatMl);

  // The prompt text (tokenize it with parse_special = true). InvalidArgument for an empty
  // conversation or a role other than system/user/assistant.
  // When emits_bos(), the text starts with the BOS token's text: do not add BOS again.
  absl::StatusOr<std::string> Render(std::span<const ChatMessage> messages,
                                     bool add_generation_prompt) const;

  Style style() const { return style_; }
  // System message inserted when the conversation does not start with one ("" if none).
  const std::string& default_system() const { return default_system_; }
  bool emits_bos() const { return !bos_text_.empty(); }

 private:
  ChatTemplate() = default;

  Style style_ = Style::kChatMl;
  std::string default_system_;
  std::string bos_text_;       // printed before the first message ("" when not)
  bool trim_content_ = false;  // the template applies Jinja's `| trim` to contents
};

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_TEXT_CHAT_TEMPLATE_H_
