// Pair building for `semshare bench --suite reuse` (tools/bench_pairs.h) and token-level
// ROUGE-L (tools/rouge.h), on hand-made inputs whose answers are derived by hand, plus the
// shipped paraphrase corpus's documented counts (data/paraphrase/README.md).
#include "tools/bench_pairs.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "tools/rouge.h"

namespace semshare::tools {
namespace {

// ---- ROUGE-L ----

TEST(RougeTest, LcsOfTextbookExample) {
  // CLRS: LCS("ABCBDAB", "BDCABA") = 4 ("BCBA").
  const std::vector<int32_t> a = {'A', 'B', 'C', 'B', 'D', 'A', 'B'};
  const std::vector<int32_t> b = {'B', 'D', 'C', 'A', 'B', 'A'};
  EXPECT_EQ(LcsLength(a, b), 4);
  EXPECT_EQ(LcsLength(b, a), 4);
  EXPECT_EQ(LcsLength(a, {}), 0);
}

TEST(RougeTest, PrecisionRecallF1ByHand) {
  // LCS of [1 2 3 4] and [1 3 4 5 6] is [1 3 4]: P = 3/4, R = 3/5, F1 = 2PR/(P+R) = 2/3.
  const std::vector<int32_t> cand = {1, 2, 3, 4}, ref = {1, 3, 4, 5, 6};
  const RougeL r = RougeLScore(cand, ref);
  EXPECT_EQ(r.lcs, 3);
  EXPECT_DOUBLE_EQ(r.precision, 0.75);
  EXPECT_DOUBLE_EQ(r.recall, 0.6);
  EXPECT_NEAR(r.f1, 2.0 / 3.0, 1e-12);  // one rounding in the harmonic mean
}

TEST(RougeTest, IdenticalDisjointAndEmpty) {
  const std::vector<int32_t> a = {5, 6, 7, 5}, b = {8, 9};
  EXPECT_DOUBLE_EQ(RougeLScore(a, a).f1, 1.0);
  EXPECT_DOUBLE_EQ(RougeLScore(a, b).f1, 0.0);
  EXPECT_DOUBLE_EQ(RougeLScore(a, {}).f1, 0.0);
  EXPECT_DOUBLE_EQ(RougeLScore({}, {}).f1, 1.0);
  // Order matters (a subsequence, not a bag): the reversed sequence shares only one token.
  const std::vector<int32_t> up = {1, 2, 3, 4}, down = {4, 3, 2, 1};
  EXPECT_EQ(RougeLScore(up, down).lcs, 1);
}

// ---- MRPC parsing ----

TEST(MrpcTest, ParsesBomHeaderCrlfAndTabs) {
  const std::string text =
      "\xEF\xBB\xBFQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n"
      "1\t11\t12\tThe cat sat , he said .\tA cat was sitting .\r\n"
      "0\t21\t22\tQuotes \"stay\" as they are\tOther\r\n"
      "1\t31\t32\tLast line\tno newline";
  auto pairs = ParseMrpc(text, "t.txt");
  ASSERT_TRUE(pairs.ok()) << pairs.status();
  ASSERT_EQ(pairs->size(), 3u);
  EXPECT_EQ((*pairs)[0].label, 1);
  EXPECT_EQ((*pairs)[0].sentence1, "The cat sat , he said .");
  EXPECT_EQ((*pairs)[0].sentence2, "A cat was sitting .");
  EXPECT_EQ((*pairs)[1].label, 0);
  EXPECT_EQ((*pairs)[1].sentence1, "Quotes \"stay\" as they are");  // no CSV unquoting
  EXPECT_EQ((*pairs)[2].sentence2, "no newline");
}

TEST(MrpcTest, MalformedLinesNameTheLine) {
  auto bad_label = ParseMrpc("Quality\tx\ty\tz\tw\n1\ta\tb\tc\td\n2\ta\tb\tc\td\n", "f.txt");
  ASSERT_FALSE(bad_label.ok());
  EXPECT_NE(bad_label.status().message().find("f.txt line 3"), std::string::npos)
      << bad_label.status();
  auto few_fields = ParseMrpc("1\ta\tb\tonly one sentence\n", "g.txt");
  ASSERT_FALSE(few_fields.ok());
  EXPECT_NE(few_fields.status().message().find("g.txt line 1"), std::string::npos);
  EXPECT_FALSE(ParseMrpc("", "e.txt").ok());
  EXPECT_FALSE(ParseMrpc("\xEF\xBB\xBFQuality\theader only\r\n", "h.txt").ok());
  EXPECT_EQ(LoadMrpc("/nonexistent/mrpc.txt").status().code(), absl::StatusCode::kNotFound);
}

// The corpus shipped in the repository (data/paraphrase/README.md gives these counts): every
// row parses, the counts match the README, sentences are distinct text with the README's word
// range, and no field keeps a carriage return, a tab or a BOM.
TEST(MrpcTest, ShippedCorpusHasTheDocumentedCounts) {
  const char* src = std::getenv("SEMSHARE_SOURCE_DIR");
  ASSERT_NE(src, nullptr) << "SEMSHARE_SOURCE_DIR is not set (ctest sets it)";
  const std::string path = absl::StrCat(src, "/data/paraphrase/paraphrase_pairs.txt");
  auto pairs = LoadMrpc(path);
  ASSERT_TRUE(pairs.ok()) << pairs.status();
  int positives = 0;
  std::set<std::string> sentences;
  for (const MrpcPair& p : *pairs) {
    positives += p.label;
    for (const std::string* s : {&p.sentence1, &p.sentence2}) {
      sentences.insert(*s);
      ASSERT_EQ(s->find_first_of("\r\t"), std::string::npos) << *s;
      ASSERT_EQ(s->find("\xEF\xBB\xBF"), std::string::npos) << *s;
      const size_t words = std::vector<absl::string_view>(absl::StrSplit(*s, ' ')).size();
      EXPECT_GE(words, 12u) << *s;
      EXPECT_LE(words, 40u) << *s;
    }
    EXPECT_NE(p.sentence1, p.sentence2);
  }
  EXPECT_EQ(pairs->size(), 775u);
  EXPECT_EQ(positives, 588);
  EXPECT_EQ(sentences.size(), 1526u);
}

// The benches read the shipped corpus by default; --data takes a file, or a data dir holding
// paraphrase/ (the shipped name, else MRPC's, as in a developer's MRPC data folder).
TEST(MrpcTest, CorpusPathDefaultsToTheShippedCorpus) {
  const char* src = std::getenv("SEMSHARE_SOURCE_DIR");
  ASSERT_NE(src, nullptr) << "SEMSHARE_SOURCE_DIR is not set (ctest sets it)";
  const std::filesystem::path shipped =
      std::filesystem::path(src) / "data" / "paraphrase" / "paraphrase_pairs.txt";
  EXPECT_EQ(std::filesystem::path(CorpusPath("")), shipped);
  EXPECT_EQ(CorpusPath("/x/mrpc.txt"), "/x/mrpc.txt");
  EXPECT_EQ(std::filesystem::path(CorpusPath(absl::StrCat(src, "/data"))), shipped);
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) / "corpus_path_test" / "paraphrase";
  std::filesystem::create_directories(dir);
  { std::ofstream(dir / "msr_paraphrase_train.txt") << "Quality\n"; }
  EXPECT_EQ(std::filesystem::path(CorpusPath(dir.parent_path().string())),
            dir / "msr_paraphrase_train.txt");
  std::filesystem::remove_all(dir.parent_path());
}

// ---- pair building ----

// Words separated by spaces or newlines: a stand-in tokenizer whose counts are easy to derive.
int64_t CountWords(std::string_view text) {
  std::vector<absl::string_view> w = absl::StrSplit(absl::string_view(text.data(), text.size()),
                                                    absl::ByAnyChar(" \n"), absl::SkipEmpty());
  return static_cast<int64_t>(w.size());
}

// 200 label-1 pairs "a<i> b<i> c<i>" / "x<i> y<i>" (3 and 2 words) and label-0 decoys.
std::vector<MrpcPair> ToyCorpus() {
  std::vector<MrpcPair> c;
  for (int i = 0; i < 200; ++i) {
    c.push_back({1, absl::StrCat("a", i, " b", i, " c", i), absl::StrCat("x", i, " y", i)});
    c.push_back({0, absl::StrCat("NEG", i), absl::StrCat("NEG", i)});
  }
  return c;
}

PairOptions ToyOptions(int64_t tokens, int64_t pairs, uint64_t seed) {
  PairOptions o;
  o.target_tokens = tokens;
  o.pairs = pairs;
  o.seed = seed;
  o.instruction = "Summarize:\n";  // 1 word
  o.question = "\nWhat now?";      // 2 words
  o.passage_sentences = 3;
  return o;
}

std::vector<std::string> BodyLines(const std::string& prompt, const PairOptions& o) {
  EXPECT_EQ(prompt.rfind(o.instruction, 0), 0u) << prompt;
  EXPECT_TRUE(absl::EndsWith(prompt, o.question)) << prompt;
  const std::string body =
      prompt.substr(o.instruction.size(), prompt.size() - o.instruction.size() - o.question.size());
  return absl::StrSplit(body, '\n', absl::SkipEmpty());
}

TEST(PairsTest, RepeatPairsSendTheParaphraseReferencesAgain) {
  const auto corpus = ToyCorpus();
  const PairOptions o = ToyOptions(/*tokens=*/103, /*pairs=*/2, /*seed=*/7);
  auto para = BuildParaphrasePairs(corpus, o, CountWords);
  auto rep = BuildRepeatPairs(corpus, o, CountWords);
  ASSERT_TRUE(para.ok() && rep.ok()) << rep.status();
  ASSERT_EQ(rep->size(), para->size());
  for (size_t i = 0; i < rep->size(); ++i) {
    EXPECT_EQ((*rep)[i].kind, PairKind::kRepeat);
    EXPECT_STREQ(PairKindName((*rep)[i].kind), "repeat");
    EXPECT_EQ((*rep)[i].reference, (*para)[i].reference);
    EXPECT_EQ((*rep)[i].target, (*para)[i].reference);
  }
}

TEST(PairsTest, ParaphraseTargetsAreTheSecondSentencesInOrderAtTheLength) {
  const auto corpus = ToyCorpus();
  const PairOptions o = ToyOptions(/*tokens=*/103, /*pairs=*/3, /*seed=*/7);
  auto pairs = BuildParaphrasePairs(corpus, o, CountWords);
  ASSERT_TRUE(pairs.ok()) << pairs.status();
  ASSERT_EQ(pairs->size(), 3u);
  std::set<std::string> seen;
  for (const PromptPair& p : *pairs) {
    EXPECT_EQ(p.kind, PairKind::kParaphrase);
    EXPECT_EQ(p.length, 103);
    // 3 wrapper words + 2 per sentence: 50 sentences make 103 words exactly.
    EXPECT_EQ(CountWords(p.target), 103);
    EXPECT_EQ(p.sentences, 50);
    const auto ref = BodyLines(p.reference, o), tgt = BodyLines(p.target, o);
    ASSERT_EQ(ref.size(), 50u);
    ASSERT_EQ(tgt.size(), 50u);
    for (size_t i = 0; i < ref.size(); ++i) {
      // "a17 b17 c17" pairs with "x17 y17": same corpus pair, same place.
      const std::string id = ref[i].substr(1, ref[i].find(' ') - 1);
      EXPECT_EQ(tgt[i], absl::StrCat("x", id, " y", id));
      EXPECT_TRUE(seen.insert(id).second) << "sentence " << id << " used twice";
    }
  }
  // Not the corpus order: the walk is shuffled.
  const auto first = BodyLines((*pairs)[0].reference, o);
  EXPECT_FALSE(first[0] == "a0 b0 c0" && first[1] == "a1 b1 c1");
}

TEST(PairsTest, LengthNeverPassedAndMaximal) {
  const auto corpus = ToyCorpus();
  for (int64_t tokens : {5, 6, 50, 51, 333}) {
    const PairOptions o = ToyOptions(tokens, 1, 3);
    auto pairs = BuildParaphrasePairs(corpus, o, CountWords);
    ASSERT_TRUE(pairs.ok()) << pairs.status();
    const int64_t n = CountWords((*pairs)[0].target);
    EXPECT_LE(n, tokens);
    EXPECT_GT(n + 2, tokens) << "one more 2-word sentence would still have fit";
  }
}

TEST(PairsTest, DeterministicBySeed) {
  const auto corpus = ToyCorpus();
  auto a = BuildParaphrasePairs(corpus, ToyOptions(60, 2, 11), CountWords);
  auto b = BuildParaphrasePairs(corpus, ToyOptions(60, 2, 11), CountWords);
  auto c = BuildParaphrasePairs(corpus, ToyOptions(60, 2, 12), CountWords);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ((*a)[1].target, (*b)[1].target);
  EXPECT_NE((*a)[0].target, (*c)[0].target);
}

TEST(PairsTest, ReorderShufflesWholePassages) {
  const auto corpus = ToyCorpus();
  const PairOptions o = ToyOptions(/*tokens=*/96, /*pairs=*/2, /*seed=*/5);
  auto pairs = BuildReorderPairs(corpus, o, CountWords);
  ASSERT_TRUE(pairs.ok()) << pairs.status();
  for (const PromptPair& p : *pairs) {
    EXPECT_EQ(p.kind, PairKind::kReorder);
    // Every sentence1 has 1 or 3 words; the fit stops at <= 96 words.
    EXPECT_LE(CountWords(p.target), 96);
    EXPECT_EQ(CountWords(p.target), CountWords(p.reference));
    auto strip = [&](const std::string& s) {
      return s.substr(o.instruction.size(), s.size() - o.instruction.size() - o.question.size());
    };
    std::vector<std::string> ref = absl::StrSplit(strip(p.reference), "\n\n");
    std::vector<std::string> tgt = absl::StrSplit(strip(p.target), "\n\n");
    ASSERT_EQ(static_cast<int64_t>(ref.size()), p.passages);
    ASSERT_GT(ref.size(), 2u);
    EXPECT_NE(ref, tgt) << "the passage order must change";
    std::multiset<std::string> a(ref.begin(), ref.end()), b(tgt.begin(), tgt.end());
    EXPECT_EQ(a, b) << "the same passages, moved whole";
    for (size_t i = 0; i + 1 < ref.size(); ++i) {
      EXPECT_EQ(std::vector<std::string>(absl::StrSplit(ref[i], '\n')).size(), 3u);
    }
  }
}

TEST(PairsTest, ImpossibleRequestsAreErrors) {
  const auto corpus = ToyCorpus();
  // The wrapper alone is 3 words; one sentence brings it to 5.
  EXPECT_FALSE(BuildParaphrasePairs(corpus, ToyOptions(3, 1, 1), CountWords).ok());
  EXPECT_FALSE(BuildParaphrasePairs(corpus, ToyOptions(4, 1, 1), CountWords).ok());
  // 200 positives x 2 words cannot make 3 pairs of 200 words.
  auto out = BuildParaphrasePairs(corpus, ToyOptions(200, 3, 1), CountWords);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("ran out"), std::string::npos) << out.status();
}

// ---- chat pairs ----

// A conversation's tokens for the toy tokenizer: per message its role and content words plus
// two markers (as a template's start and end tokens), plus two for the generation prompt.
absl::StatusOr<int64_t> CountChat(std::span<const engine::ChatMessage> messages) {
  if (messages.empty()) return absl::InvalidArgumentError("empty conversation");
  int64_t n = 2;
  for (const engine::ChatMessage& m : messages) n += 3 + CountWords(m.content);
  return n;
}

PairOptions ToyChatOptions(int64_t tokens, int64_t pairs, int64_t turns) {
  PairOptions o = ToyOptions(tokens, pairs, /*seed=*/9);
  o.chat_turns = turns;
  o.chat_system = "Be brief.";              // 2 words
  o.chat_questions = {"Q one?", "Q two?"};  // 2 words each
  return o;
}

// The ids <i> of "a<i> b<i> c<i>" body lines and "x<i> y<i>" answers in a text.
std::vector<std::string> ToyIds(const std::string& text, char first) {
  std::vector<std::string> ids;
  for (absl::string_view w : absl::StrSplit(text, absl::ByAnyChar(" \n"), absl::SkipEmpty())) {
    if (w.size() > 1 && w[0] == first) ids.emplace_back(w.substr(1));
  }
  return ids;
}

TEST(ChatPairsTest, NextTurnExtendsTheReferenceTurnAtTheLength) {
  const auto corpus = ToyCorpus();
  const PairOptions o = ToyChatOptions(/*tokens=*/150, /*pairs=*/2, /*turns=*/4);
  auto pairs = BuildChatPairs(corpus, o, CountChat);
  ASSERT_TRUE(pairs.ok()) << pairs.status();
  ASSERT_EQ(pairs->size(), 2u);
  std::set<std::string> seen;
  for (const PromptPair& p : *pairs) {
    EXPECT_EQ(p.kind, PairKind::kChat);
    EXPECT_STREQ(PairKindName(p.kind), "chat");
    EXPECT_EQ(p.length, 150);
    EXPECT_EQ(p.turns, 4);
    // Turn 3's conversation: system, then user / assistant alternating, ending with a user.
    const std::vector<engine::ChatMessage>& r = p.reference_messages;
    ASSERT_EQ(r.size(), 6u);
    const char* roles[] = {"system", "user", "assistant", "user", "assistant", "user"};
    for (size_t i = 0; i < r.size(); ++i) EXPECT_EQ(r[i].role, roles[i]) << i;
    EXPECT_EQ(r[0].content, "Be brief.");
    // Turn 4 = turn 3 + its answer + a question alone (the 4th question, round robin: "Q two?").
    const std::vector<engine::ChatMessage> t = ChatTargetMessages(p, "said so");
    ASSERT_EQ(t.size(), 8u);
    for (size_t i = 0; i < r.size(); ++i) EXPECT_EQ(t[i].content, r[i].content);
    EXPECT_EQ(t[6].role, "assistant");
    EXPECT_EQ(t[6].content, "said so");
    EXPECT_EQ(t[7].role, "user");
    EXPECT_EQ(t[7].content, "Q two?");
    EXPECT_EQ(p.next_user, "Q two?");
    EXPECT_EQ(ToyIds(p.answer, 'x').size(), 1u) << "the stand-in answer is one second sentence";
    // At the length, maximal: one more 3-word body sentence would pass it.
    const int64_t n = *CountChat(ChatTargetMessages(p, p.answer));
    EXPECT_LE(n, 150);
    EXPECT_GT(n + 3, 150);
    // Every body sentence and answer is used once in the call, the bodies split over the user
    // turns 1..3 in order of their sentences.
    std::string body;
    for (const engine::ChatMessage& m : r) {
      if (m.role == "user") body += m.content + "\n";
    }
    const std::vector<std::string> ids = ToyIds(body, 'a');
    EXPECT_EQ(static_cast<int64_t>(ids.size()), p.sentences);
    EXPECT_GT(p.sentences, 20);
    for (const std::string& id : ids) EXPECT_TRUE(seen.insert(id).second) << "body " << id;
    for (const engine::ChatMessage& m : t) {
      if (m.role != "assistant") continue;
      for (const std::string& id : ToyIds(m.content == "said so" ? p.answer : m.content, 'x'))
        EXPECT_TRUE(seen.insert(id).second) << "answer " << id;
    }
    for (size_t u : {1u, 3u, 5u}) {
      EXPECT_FALSE(ToyIds(r[u].content, 'a').empty()) << "user turn " << u << " has no body";
    }
  }
}

TEST(ChatPairsTest, BadRequestsAreErrors) {
  const auto corpus = ToyCorpus();
  EXPECT_FALSE(BuildChatPairs(corpus, ToyChatOptions(150, 1, /*turns=*/1), CountChat).ok());
  PairOptions no_questions = ToyChatOptions(150, 1, 3);
  no_questions.chat_questions.clear();
  EXPECT_FALSE(BuildChatPairs(corpus, no_questions, CountChat).ok());
  // Without a body, turn 4 is 59 toy tokens: 2 (generation prompt) + system 5 + users
  // 10 + 11 + 11 + 5 ("Here is a news report." / "Here is more of the report." and a question)
  // + three 2-word answers 3 x 5.
  auto tiny = BuildChatPairs(corpus, ToyChatOptions(59, 1, 4), CountChat);
  ASSERT_FALSE(tiny.ok());
  EXPECT_NE(tiny.status().message().find("chat pair 0"), std::string::npos) << tiny.status();
  EXPECT_FALSE(BuildChatPairs(corpus, ToyChatOptions(5000, 1, 4), CountChat).ok());
  // A counter's error stops the build.
  auto failing = [](std::span<const engine::ChatMessage>) -> absl::StatusOr<int64_t> {
    return absl::UnimplementedError("no template");
  };
  auto err = BuildChatPairs(corpus, ToyChatOptions(150, 1, 4), failing);
  ASSERT_FALSE(err.ok());
  EXPECT_EQ(err.status().code(), absl::StatusCode::kUnimplemented);
}

// ---- user pairs ----

TEST(UserPairsTest, ParsesJsonLines) {
  auto p = ParseUserPairs(
      "{\"reference\": \"r one\", \"target\": \"t one\", \"note\": 3}\n\n  \r\n"
      "{\"target\": \"t two\", \"reference\": \"r \\u00e9\"}",
      "u.jsonl");
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->size(), 2u);
  EXPECT_EQ((*p)[0].reference, "r one");
  EXPECT_EQ((*p)[1].target, "t two");
  EXPECT_EQ((*p)[1].reference, "r \xC3\xA9");
  EXPECT_EQ((*p)[1].index, 1);
  EXPECT_EQ((*p)[1].kind, PairKind::kUser);
}

TEST(UserPairsTest, BadLinesNameTheLine) {
  const char* cases[] = {
      "{\"reference\": \"r\", \"target\": \"t\"}\n{not json\n",
      "{\"reference\": \"r\", \"target\": \"t\"}\n[1, 2]\n",
      "{\"reference\": \"r\", \"target\": \"t\"}\n{\"reference\": \"r\"}\n",
      "{\"reference\": \"r\", \"target\": \"t\"}\n{\"reference\": \"r\", \"target\": 5}\n",
      "{\"reference\": \"r\", \"target\": \"t\"}\n{\"reference\": \"\", \"target\": \"t\"}\n",
  };
  for (const char* text : cases) {
    auto p = ParseUserPairs(text, "u.jsonl");
    ASSERT_FALSE(p.ok()) << text;
    EXPECT_NE(p.status().message().find("u.jsonl line 2"), std::string::npos) << p.status();
  }
  EXPECT_FALSE(ParseUserPairs("\n\n", "u.jsonl").ok());
  EXPECT_EQ(LoadUserPairs("/nonexistent/p.jsonl").status().code(), absl::StatusCode::kNotFound);
}

TEST(PermutationTest, IsASeededPermutation) {
  const auto p = SeededPermutation(100, 42);
  std::set<int64_t> s(p.begin(), p.end());
  EXPECT_EQ(s.size(), 100u);
  EXPECT_EQ(*s.begin(), 0);
  EXPECT_EQ(*s.rbegin(), 99);
  EXPECT_EQ(p, SeededPermutation(100, 42));
  EXPECT_NE(p, SeededPermutation(100, 43));
}

}  // namespace
}  // namespace semshare::tools
