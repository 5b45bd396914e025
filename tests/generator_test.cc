// Generation on the real default model ($SEMSHARE_MODEL): greedy is deterministic, streamed
// pieces add up to the text, stop strings cut the text before the match, max_tokens bounds
// the length, cancellation stops, and bad options are rejected with InvalidArgument.
#include "engine/generator.h"

#include <gtest/gtest.h>

#include "engine/cpu/cpu_backend.h"
#include "tests/test_util.h"

namespace semshare::engine {
namespace {

class GeneratorTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string error;
    model_ = semshare::testing::DefaultModel(&error);
    ASSERT_NE(model_, nullptr) << error;
  }
  static const Model* model_;
};
const Model* GeneratorTest::model_ = nullptr;

TEST_F(GeneratorTest, GreedyChatAnswerIsDeterministicAndStreamsWholeText) {
  ASSERT_NE(model_, nullptr);
  CpuBackend be;
  Generator gen(*model_, be);
  std::vector<ChatMessage> msgs = {{"user", "What is the capital of France?"}};
  auto ids = gen.TokenizeChat(msgs);
  ASSERT_TRUE(ids.ok()) << ids.status();
  GenerateOptions opt;
  opt.max_tokens = 24;
  std::string streamed;
  auto a = gen.Generate(*ids, opt, [&](std::string_view p) {
    streamed += p;
    return true;
  });
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(streamed, a->text);
  EXPECT_NE(a->text.find("Paris"), std::string::npos) << a->text;
  auto b = gen.Generate(*ids, opt);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(a->tokens, b->tokens);
  EXPECT_GT(a->timings.ttft_ms, 0);
  EXPECT_EQ(a->prompt_tokens, static_cast<int64_t>(ids->size()));
}

TEST_F(GeneratorTest, StopStringsMaxTokensAndCancel) {
  ASSERT_NE(model_, nullptr);
  CpuBackend be;
  Generator gen(*model_, be);
  const std::vector<int32_t> ids = gen.TokenizePrompt("The numbers from one to twenty: one, two,");
  GenerateOptions opt;
  opt.max_tokens = 12;
  auto full = gen.Generate(ids, opt);
  ASSERT_TRUE(full.ok());
  EXPECT_EQ(full->tokens.size(), 12u);
  EXPECT_EQ(full->finish, FinishReason::kLength);
  // Stop at a string taken from the middle of the greedy text.
  ASSERT_GT(full->text.size(), 8u) << full->text;
  const std::string stop = full->text.substr(4, 3);
  opt.stop = {stop};
  std::string streamed;
  auto cut = gen.Generate(ids, opt, [&](std::string_view p) {
    streamed += p;
    return true;
  });
  ASSERT_TRUE(cut.ok());
  EXPECT_EQ(cut->finish, FinishReason::kStopString);
  EXPECT_EQ(cut->text, full->text.substr(0, full->text.find(stop)));
  EXPECT_EQ(streamed, cut->text);  // the held-back prefix of the stop string never leaked
  opt.stop.clear();
  int pieces = 0;
  auto cancelled = gen.Generate(ids, opt, [&](std::string_view) { return ++pieces < 3; });
  ASSERT_TRUE(cancelled.ok());
  EXPECT_EQ(cancelled->finish, FinishReason::kCancelled);
  EXPECT_LT(cancelled->tokens.size(), 12u);
}

TEST_F(GeneratorTest, RejectsBadOptions) {
  ASSERT_NE(model_, nullptr);
  CpuBackend be;
  Generator gen(*model_, be);
  const std::vector<int32_t> ids = gen.TokenizePrompt("Hello");
  GenerateOptions opt;
  opt.max_tokens = 0;
  EXPECT_EQ(gen.Generate(ids, opt).status().code(), absl::StatusCode::kInvalidArgument);
  opt.max_tokens = 4;
  opt.sampling.top_p = 0;
  EXPECT_EQ(gen.Generate(ids, opt).status().code(), absl::StatusCode::kInvalidArgument);
  opt.sampling.top_p = 1;
  opt.stop = {""};
  EXPECT_EQ(gen.Generate(ids, opt).status().code(), absl::StatusCode::kInvalidArgument);
  opt.stop.clear();
  EXPECT_EQ(gen.Generate({}, opt).status().code(), absl::StatusCode::kInvalidArgument);
  opt.max_tokens = static_cast<int32_t>(model_->config.max_context);
  EXPECT_EQ(gen.Generate(ids, opt).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ModelLoadTest, MissingPathIsNotFound) {
  EXPECT_EQ(LoadModel("/nonexistent/model.gguf").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace semshare::engine
