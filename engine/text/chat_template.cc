#include "engine/text/chat_template.h"

#include <array>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/text/unicode_utf8.h"

namespace semshare::engine {
namespace {

constexpr char kImStart[] = "<|im_start|>";
constexpr char kImEnd[] = "<|im_end|>";
constexpr char kStartHeader[] = "<|start_header_id|>";
constexpr char kEndHeader[] = "<|end_header_id|>";
constexpr char kEotId[] = "<|eot_id|>";

bool Contains(std::string_view s, std::string_view part) {
  return s.find(part) != std::string_view::npos;
}

// Debian 12's abseil has its own absl::string_view, which does not convert from std::'s.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Undoes the escapes of a Jinja string literal (\n, \t, \', \", \\); others stay as written.
std::string UnescapeJinja(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 == s.size()) {
      out.push_back(s[i]);
      continue;
    }
    const char e = s[++i];
    switch (e) {
      case 'n':
        out.push_back('\n');
        break;
      case 't':
        out.push_back('\t');
        break;
      case 'r':
        out.push_back('\r');
        break;
      case '\'':
      case '"':
      case '\\':
        out.push_back(e);
        break;
      default:
        out.push_back('\\');
        out.push_back(e);
        break;
    }
  }
  return out;
}

// The literal system text in `<|im_start|>system\n TEXT <|im_end|>` inside one Jinja string
// literal of the template, or "" when the template has none (the text must not contain a
// quote, which would mean it is built from expressions rather than written out).
std::string ExtractChatMlDefaultSystem(std::string_view jinja) {
  const std::string head = absl::StrCat(kImStart, "system");
  for (size_t pos = jinja.find(head); pos != std::string_view::npos;
       pos = jinja.find(head, pos + 1)) {
    std::string_view rest = jinja.substr(pos + head.size());
    if (rest.starts_with("\\n")) {
      rest.remove_prefix(2);
    } else if (rest.starts_with("\n")) {
      rest.remove_prefix(1);
    } else {
      continue;
    }
    const size_t end = rest.find(kImEnd);
    if (end == std::string_view::npos || end == 0) continue;
    const std::string_view text = rest.substr(0, end);
    if (text.find_first_of("'\"{}") != std::string_view::npos) continue;
    return UnescapeJinja(text);
  }
  return "";
}

// Python's str.strip(): what Jinja's `trim` removes from both ends.
bool IsPythonSpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::string_view TrimPython(std::string_view s) {
  // Leading.
  while (!s.empty()) {
    const utf8::Seq seq = utf8::DecodeAt(s, 0);
    if (seq.status != utf8::SeqStatus::kOk || !IsPythonSpace(seq.codepoint)) break;
    s.remove_prefix(seq.length);
  }
  // Trailing: step back to the start of the last character.
  while (!s.empty()) {
    size_t start = s.size() - 1;
    while (start > 0 && s.size() - start < 4 && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80) {
      --start;
    }
    const utf8::Seq seq = utf8::DecodeAt(s, start);
    if (seq.status != utf8::SeqStatus::kOk || start + seq.length != s.size() ||
        !IsPythonSpace(seq.codepoint)) {
      break;
    }
    s.remove_suffix(seq.length);
  }
  return s;
}

}  // namespace

absl::StatusOr<ChatTemplate> ChatTemplate::FromTokenizer(const Tokenizer& tokenizer) {
  const int32_t bos = tokenizer.bos_id();
  const std::string bos_text = bos >= 0 ? tokenizer.TokenBytes(bos) : std::string();
  const Style default_style =
      tokenizer.TokenId(kStartHeader) >= 0 ? Style::kLlama3 : Style::kChatMl;
  return FromText(tokenizer.chat_template(), bos_text, default_style);
}

absl::StatusOr<ChatTemplate> ChatTemplate::FromText(std::string_view jinja,
                                                    std::string_view bos_text,
                                                    Style default_style) {
  ChatTemplate t;
  if (jinja.empty()) {
    t.style_ = default_style;  // no template: no default system message, no BOS text
    return t;
  }
  if (Contains(jinja, "Cutting Knowledge Date")) {
    return absl::UnimplementedError(
        "chat template with a dated system header (Llama-3.1 and later) is not supported");
  }
  if (Contains(jinja, kImStart)) {
    t.style_ = Style::kChatMl;
    t.default_system_ = ExtractChatMlDefaultSystem(jinja);
  } else if (Contains(jinja, kStartHeader)) {
    t.style_ = Style::kLlama3;
  } else {
    return absl::UnimplementedError(
        "chat template is neither ChatML (<|im_start|>) nor Llama-3 (<|start_header_id|>)");
  }
  if (Contains(jinja, "bos_token")) t.bos_text_ = std::string(bos_text);
  t.trim_content_ = Contains(jinja, "| trim") || Contains(jinja, "|trim");
  return t;
}

absl::StatusOr<std::string> ChatTemplate::Render(std::span<const ChatMessage> messages,
                                                 bool add_generation_prompt) const {
  if (messages.empty()) return absl::InvalidArgumentError("chat: the conversation is empty");
  size_t bytes = 64 + default_system_.size();
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role != "system" && role != "user" && role != "assistant") {
      return absl::InvalidArgumentError(absl::StrCat("chat: message ", i, " has role '", role,
                                                     "' (expected system, user or assistant)"));
    }
    bytes += role.size() + messages[i].content.size() + 40;
  }
  std::string out;
  out.reserve(bytes);
  out.append(bos_text_);
  const auto content = [&](const ChatMessage& m) {
    return trim_content_ ? TrimPython(m.content) : std::string_view(m.content);
  };
  if (style_ == Style::kChatMl) {
    if (!default_system_.empty() && messages[0].role != "system") {
      absl::StrAppend(&out, kImStart, "system\n", default_system_, kImEnd, "\n");
    }
    for (const ChatMessage& m : messages) {
      absl::StrAppend(&out, kImStart, m.role, "\n", Sv(content(m)), kImEnd, "\n");
    }
    if (add_generation_prompt) absl::StrAppend(&out, kImStart, "assistant\n");
  } else {
    for (const ChatMessage& m : messages) {
      absl::StrAppend(&out, kStartHeader, m.role, kEndHeader, "\n\n", Sv(content(m)), kEotId);
    }
    if (add_generation_prompt) absl::StrAppend(&out, kStartHeader, "assistant", kEndHeader, "\n\n");
  }
  return out;
}

}  // namespace semshare::engine
