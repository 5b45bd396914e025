// (reference, target) prompt pairs for `semshare bench --suite reuse` (issue 3, item 7).
//
// Two kinds are built from the paraphrase corpus (data/paraphrase, MRPC's format; utf-8-sig, CRLF,
// tab-separated, no CSV quoting):
//  - paraphrase: the reference body is many label-1 first sentences, the target body the
//    human paraphrases of the same sentences in the same order (what a semantically similar
//    but not token-identical prompt looks like);
//  - reorder: the reference body is passages (groups of sentences); the target holds the same
//    passages shuffled by a seeded RNG, as retrieval-augmented prompts reorder retrieved chunks.
// Both bodies are wrapped in the same instruction and closing question, so the last tokens
// (the window that produces the logits) are shared. The body grows sentence by sentence until
// the wrapped target reaches the requested token count (counted by the caller's tokenizer)
// without passing it. A third kind, repeat, sends a paraphrase pair's reference again as the
// target (a repeated prompt: the exact-reuse path). A fourth, user, comes verbatim from a
// JSON-lines file. A fifth, chat (issue 15), is the next turn of a multi-turn conversation:
//  - chat: a system message, then `chat_turns` user turns. User turns 1..T-1 carry the body
//    (label-1 first sentences, split evenly in order) and a question each, every assistant
//    turn before the last an answer; user turn T is a question only. The reference is turn
//    T-1 as the server stores it: its prompt (the conversation up to user turn T-1, chat
//    template applied) followed by its answer (the server publishes whole turns); the target
//    is turn T's prompt, the conversation with that answer and the new question. Answers are
//    second sentences of other label-1 pairs (the bench replaces the last one with the model's
//    own greedy answer, which is what a client sends back). The body grows until the target
//    conversation reaches the requested token count (counted by the caller's ChatCounter:
//    the model's chat template and tokenizer) without passing it.
//
// Everything is deterministic given the seed (our own Fisher-Yates over std::mt19937_64, not
// std::shuffle, whose algorithm the standard leaves to the library).
#ifndef SEMSHARE_TOOLS_BENCH_PAIRS_H_
#define SEMSHARE_TOOLS_BENCH_PAIRS_H_

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/text/chat_template.h"

namespace semshare::tools {

// One line of the MRPC file.
struct MrpcPair {
  int label = 0;  // 1 = the annotators judged the two sentences equivalent
  std::string sentence1, sentence2;
};

// Parses the MRPC text (an optional UTF-8 BOM, a header line starting with "Quality", then
// "label\tid1\tid2\tsentence1\tsentence2" lines ending in CRLF or LF). InvalidArgument names
// `source` and the line of the first malformed row.
absl::StatusOr<std::vector<MrpcPair>> ParseMrpc(std::string_view text, std::string_view source);
// NotFound / InvalidArgument naming the path when it cannot be read or parsed.
absl::StatusOr<std::vector<MrpcPair>> LoadMrpc(const std::string& path);
// The corpus the benches read: `flag` when set (a file, or a data dir holding
// paraphrase/paraphrase_pairs.txt or, like a developer's MRPC data folder,
// paraphrase/msr_paraphrase_train.txt); else the corpus shipped in the repository,
// data/paraphrase/paraphrase_pairs.txt, under $SEMSHARE_SOURCE_DIR, the working directory or the
// checkout holding this binary (the first that has it; the $SEMSHARE_SOURCE_DIR or
// working-directory path when none does, so the load error names it).
std::string CorpusPath(const std::string& flag);

enum class PairKind { kParaphrase, kReorder, kRepeat, kUser, kChat };
const char* PairKindName(PairKind kind);

struct PromptPair {
  PairKind kind = PairKind::kUser;
  int64_t length = 0;  // requested target tokens (user pairs: 0)
  int64_t index = 0;   // number of the pair within its (kind, length)
  std::string reference;
  std::string target;
  int64_t sentences = 0;  // body sentences (user pairs: 0)
  int64_t passages = 0;   // reorder: passages shuffled; paraphrase: 0
  // chat (reference and target above are empty): turn T-1's conversation, ending with its user
  // message; that turn's answer; turn T's new user message. ChatTargetMessages joins them.
  std::vector<engine::ChatMessage> reference_messages;
  std::string answer;
  std::string next_user;
  int64_t turns = 0;  // user turns in the target conversation
};

// Turn T's conversation: the reference turn's messages, `answer` as the assistant's reply, and
// the pair's new user message.
std::vector<engine::ChatMessage> ChatTargetMessages(const PromptPair& pair,
                                                    std::string_view answer);

// Tokens of a text as the model will see it (the bench passes the model tokenizer; tests pass
// a word counter).
using TokenCounter = std::function<int64_t(std::string_view)>;
// Tokens of a conversation as the model will see it, ready for the assistant's reply (the bench
// passes the model's chat template and tokenizer; tests a word counter). Errors stop the build.
using ChatCounter =
    std::function<absl::StatusOr<int64_t>(std::span<const engine::ChatMessage> messages)>;

struct PairOptions {
  int64_t target_tokens = 1024;  // the wrapped target reaches this count without passing it
  int64_t pairs = 4;             // pairs to build
  uint64_t seed = 1;
  int64_t passage_sentences = 4;  // reorder: sentences per passage
  // The wrapper shared by reference and target. The question is long enough (> 32 tokens) to
  // fill the default recompute window, so the last window is identical in both prompts.
  std::string instruction = "Summarize the following news sentences.\n\n";
  std::string question =
      "\n\nQuestion: Which people, companies, organisations and places are mentioned in the "
      "sentences above, and what is reported about each of them? Answer in a few short "
      "sentences, in the order in which they appear.\nAnswer:";
  // chat: user turns in the target conversation (>= 2), its system message, and the questions
  // of the user turns (used in turn, round robin).
  int64_t chat_turns = 4;
  std::string chat_system = "You are a careful assistant. Answer briefly.";
  std::vector<std::string> chat_questions = {
      "Summarise the report in one sentence.",
      "Which person or organisation does the report mention first?",
      "Name one number that appears in the report.",
      "What is the last event the report describes?",
  };
};

std::string WrapPrompt(std::string_view body, const PairOptions& options);

// Pairs built from the corpus. Each pair uses sentences no other pair of the same call uses
// (pairs walk one seeded order of the corpus); InvalidArgument when the corpus runs out or when
// the wrapper alone exceeds target_tokens.
absl::StatusOr<std::vector<PromptPair>> BuildParaphrasePairs(const std::vector<MrpcPair>& corpus,
                                                             const PairOptions& options,
                                                             const TokenCounter& count_tokens);
absl::StatusOr<std::vector<PromptPair>> BuildReorderPairs(const std::vector<MrpcPair>& corpus,
                                                          const PairOptions& options,
                                                          const TokenCounter& count_tokens);

// The paraphrase pairs' references, each as both reference and target (kind repeat).
absl::StatusOr<std::vector<PromptPair>> BuildRepeatPairs(const std::vector<MrpcPair>& corpus,
                                                         const PairOptions& options,
                                                         const TokenCounter& count_tokens);

// Chat pairs (the next turn of a conversation; see the file comment). Each pair's body and
// answers use sentences no other pair of the call uses; InvalidArgument when the corpus runs
// out, chat_turns < 2, there are no questions, or the conversation without a body already
// exceeds target_tokens.
absl::StatusOr<std::vector<PromptPair>> BuildChatPairs(const std::vector<MrpcPair>& corpus,
                                                       const PairOptions& options,
                                                       const ChatCounter& count_tokens);

// JSON lines, one object per non-empty line: {"reference": "...", "target": "..."} (both
// non-empty strings; other keys ignored). InvalidArgument names `source` and the line.
absl::StatusOr<std::vector<PromptPair>> ParseUserPairs(std::string_view text,
                                                       std::string_view source);
absl::StatusOr<std::vector<PromptPair>> LoadUserPairs(const std::string& path);

// Seeded Fisher-Yates permutation of 0..n-1 (deterministic on every platform).
std::vector<int64_t> SeededPermutation(int64_t n, uint64_t seed);

}  // namespace semshare::tools

#endif  // SEMSHARE_TOOLS_BENCH_PAIRS_H_
