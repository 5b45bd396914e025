// Chat template tests on template texts of the families we render (ChatML: SmolLM2, Qwen2,
// Qwen2.5; Llama-3). Expected strings are written out by hand from what the Jinja templates
// print; tests/oracle/tokenizer_oracle_test.py compares against jinja2 itself.
#include "engine/text/chat_template.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "engine/text/tokenizer.h"

namespace semshare::engine {
namespace {

// SmolLM2-135M-Instruct's template (GGUF tokenizer.chat_template; real newlines in literals).
constexpr char kSmolLm2[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|im_start|>assistant\n' }}{% endif %}";

// Qwen2.5's, abridged to its non-tool branch shape: the default system text sits in a literal
// after a first `'<|im_start|>system\n' }}` that is followed by an expression, not text.
constexpr char kQwen25[] =
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}"
    "{{- messages[0]['content'] }}{%- else %}{{- 'You are Qwen, created by Alibaba Cloud. You "
    "are a helpful assistant.' }}{%- endif %}{%- else %}{%- if messages[0]['role'] == 'system' "
    "%}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}{%- endif %}{%- endif %}";

// Meta-Llama-3-8B-Instruct's template.
constexpr char kLlama3[] =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | "
    "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

std::string MustRender(const ChatTemplate& t, const std::vector<ChatMessage>& m, bool gen) {
  auto r = t.Render(m, gen);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : "";
}

TEST(ChatTemplateTest, SmolLm2InsertsItsDefaultSystemMessage) {
  auto t = ChatTemplate::FromText(kSmolLm2, "<|im_start|>");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->style(), ChatTemplate::Style::kChatMl);
  EXPECT_EQ(t->default_system(),
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  EXPECT_FALSE(t->emits_bos());
  const std::vector<ChatMessage> user = {{"user", "Hi!"}};
  EXPECT_EQ(MustRender(*t, user, false),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n");
  EXPECT_EQ(MustRender(*t, user, true),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n");
  const std::vector<ChatMessage> with_system = {
      {"system", "Be terse."}, {"user", " a \n"}, {"assistant", "b"}, {"user", "c"}};
  EXPECT_EQ(MustRender(*t, with_system, true),
            "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\n a \n<|im_end|>\n"
            "<|im_start|>assistant\nb<|im_end|>\n<|im_start|>user\nc<|im_end|>\n"
            "<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, DefaultSystemFromEscapedLiterals) {
  auto t = ChatTemplate::FromText(kQwen25, "");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->default_system(),
            "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
  // A ChatML template without a default system message inserts none.
  auto plain = ChatTemplate::FromText(
      "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + "
      "'<|im_end|>\\n'}}{% endfor %}",
      "");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->default_system(), "");
  EXPECT_EQ(MustRender(*plain, {{"user", "x"}}, true),
            "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, Llama3TrimsContentAndPrintsBos) {
  auto t = ChatTemplate::FromText(kLlama3, "<|begin_of_text|>");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->style(), ChatTemplate::Style::kLlama3);
  EXPECT_TRUE(t->emits_bos());
  EXPECT_EQ(t->default_system(), "");
  EXPECT_EQ(MustRender(*t, {{"system", "  Be kind.\n"}, {"user", "\tHi\u3000"}}, true),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe kind.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(MustRender(*t, {{"user", "   "}}, false),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|eot_id|>");
}

TEST(ChatTemplateTest, ErrorsAndUnknownTemplates) {
  auto t = ChatTemplate::FromText(kSmolLm2, "");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->Render({}, true).status().code(), absl::StatusCode::kInvalidArgument);
  const std::vector<ChatMessage> bad_role = {{"user", "a"}, {"robot", "b"}};
  EXPECT_EQ(t->Render(bad_role, true).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ChatTemplate::FromText("[INST] {{ content }} [/INST]", "").status().code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(
      ChatTemplate::FromText("<|start_header_id|> Cutting Knowledge Date: ...", "").status().code(),
      absl::StatusCode::kUnimplemented);
}

TEST(ChatTemplateTest, ModelWithoutTemplateGetsAFamilyDefault) {
  // Tiny tokenizers: 256 byte tokens are not needed to pick a template, only the specials.
  const auto make = [](const std::string& special) {
    const std::string json =
        R"({"added_tokens":[{"id":1,"content":")" + special +
        R"(","special":true}],"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false},)"
        R"("model":{"type":"BPE","vocab":{"a":0},"merges":[]}})";
    auto tok = Tokenizer::FromHfJson(json, "");
    EXPECT_TRUE(tok.ok()) << tok.status();
    return *std::move(tok);
  };
  auto llama = ChatTemplate::FromTokenizer(*make("<|start_header_id|>"));
  ASSERT_TRUE(llama.ok());
  EXPECT_EQ(llama->style(), ChatTemplate::Style::kLlama3);
  EXPECT_EQ(MustRender(*llama, {{"user", " x "}}, false),
            "<|start_header_id|>user<|end_header_id|>\n\n x <|eot_id|>");
  auto chatml = ChatTemplate::FromTokenizer(*make("<|im_start|>"));
  ASSERT_TRUE(chatml.ok());
  EXPECT_EQ(chatml->style(), ChatTemplate::Style::kChatMl);
  EXPECT_EQ(chatml->default_system(), "");
}

}  // namespace
}  // namespace semshare::engine
