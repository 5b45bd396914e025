// Fuzz target: chat-template recognition and rendering (engine/text/chat_template.h) of arbitrary
// messages, under the real templates of the model families we serve and under arbitrary
// template text.
//
// Input layout (so that corpus files stay readable text): byte 0 holds flags, the rest is a
// list of fields separated by 0x1E (ASCII record separator):
//   flags bit 0     add_generation_prompt
//   flags bits 1-2  template: 0 SmolLM2 (the default model's), 1 Llama-3, 2 Qwen2.5, 3 the
//                   first field is the template text itself (and is not a message field)
//   flags bit 3     a BOS text is supplied ("<|begin_of_text|>")
//   fields          role, content, role, content, ... (a missing last content is "")
// Properties checked (abort = a crash libFuzzer records): Render succeeds exactly when there is
// at least one message and every role is system/user/assistant; the output starts with the
// BOS text when emits_bos(), ends with the generation prompt when asked, and holds every
// message's role and content in order.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/text/chat_template.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using semshare::engine::ChatMessage;
using semshare::engine::ChatTemplate;

// The templates as the models ship them (copies of tests/chat_template_test.cc's).
constexpr char kSmolLm2[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|im_start|>assistant\n' }}{% endif %}";
constexpr char kLlama3[] =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | "
    "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
constexpr char kQwen25[] =
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}"
    "{{- messages[0]['content'] }}{%- else %}{{- 'You are Qwen, created by Alibaba Cloud. You "
    "are a helpful assistant.' }}{%- endif %}{%- else %}{%- if messages[0]['role'] == 'system' "
    "%}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}{%- endif %}{%- endif %}";
constexpr char kBos[] = "<|begin_of_text|>";
// The ASCII bytes Python's str.strip() (Jinja's `trim`) removes.
constexpr std::string_view kAsciiSpace = " \t\n\r\v\f\x1c\x1d\x1e\x1f";

std::vector<std::string_view> SplitFields(std::string_view s) {
  std::vector<std::string_view> out;
  size_t start = 0;
  for (size_t i = 0; i <= s.size(); ++i) {
    if (i == s.size() || s[i] == '\x1e') {
      out.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t flags = data[0];
  const bool gen = flags & 1;
  const int which = (flags >> 1) & 3;
  const std::string_view bos = (flags & 8) ? kBos : "";
  std::vector<std::string_view> fields =
      SplitFields(std::string_view(reinterpret_cast<const char*>(data) + 1, size - 1));
  std::string_view jinja = which == 0 ? kSmolLm2 : which == 1 ? kLlama3 : kQwen25;
  size_t first = 0;
  if (which == 3) {
    jinja = fields[0];
    first = 1;
  }
  std::vector<ChatMessage> messages;
  bool roles_ok = true;
  for (size_t i = first; i < fields.size(); i += 2) {
    ChatMessage m{std::string(fields[i]), i + 1 < fields.size() ? std::string(fields[i + 1]) : ""};
    roles_ok = roles_ok && (m.role == "system" || m.role == "user" || m.role == "assistant");
    messages.push_back(std::move(m));
  }
  // The last field of an input with no separator is "": an input that is only a template has
  // no messages.
  if (messages.size() == 1 && messages[0].role.empty() && messages[0].content.empty()) {
    messages.clear();
  }

  auto t = ChatTemplate::FromText(jinja, bos);
  if (!t.ok()) {
    FUZZ_CHECK(which == 3);  // the shipped templates are always recognised
    return 0;
  }
  auto out = t->Render(messages, gen);
  FUZZ_CHECK(out.ok() == (!messages.empty() && roles_ok));
  if (!out.ok()) return 0;
  const std::string& text = *out;
  if (t->emits_bos()) FUZZ_CHECK(text.starts_with(bos));
  if (gen) {
    FUZZ_CHECK(text.ends_with(t->style() == ChatTemplate::Style::kChatMl
                                  ? "<|im_start|>assistant\n"
                                  : "<|start_header_id|>assistant<|end_header_id|>\n\n"));
  }
  // Roles and contents in order (contents may be trimmed: look for the first non-space byte).
  size_t pos = 0;
  for (const ChatMessage& m : messages) {
    pos = text.find(m.role, pos);
    FUZZ_CHECK(pos != std::string::npos);
    pos += m.role.size();
    const size_t b = m.content.find_first_not_of(kAsciiSpace);
    if (b == std::string::npos) continue;
    const size_t e = m.content.find_last_not_of(kAsciiSpace);
    const std::string_view core = std::string_view(m.content).substr(b, e - b + 1);
    // Only an ASCII-trimmed core is certainly present; Unicode spaces may be trimmed too.
    if (static_cast<uint8_t>(core.front()) < 0x80 && static_cast<uint8_t>(core.back()) < 0x80) {
      pos = text.find(core, pos);
      FUZZ_CHECK(pos != std::string::npos);
      pos += core.size();
    }
  }
  return 0;
}
