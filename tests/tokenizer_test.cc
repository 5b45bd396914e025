// Tokenizer tests: the default model against ids taken from Hugging Face, special-token
// parsing, streaming decode, byte round trips (invalid UTF-8 included), the tokenizer.json
// loader on small hand-written files, and Status errors for bad input (also under ASan+UBSan).
// The full oracle comparison lives in tests/oracle/tokenizer_oracle_test.py.
#include "engine/text/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/model/default_model.h"
#include "engine/model/gguf.h"
#include "engine/text/bpe_pretokenizer.h"
#include "engine/text/unicode_utf8.h"
#include "gguf_writer.h"
#include "nlohmann/json.hpp"

namespace semshare::engine {
namespace {

using nlohmann::json;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

// ---- the default model (SmolLM2-135M-Instruct, pre-tokenizer "smollm") ----

class ModelTokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string path = ResolveModelPath("");  // $SEMSHARE_MODEL or the installed model
    auto gguf = GgufFile::Open(path);
    if (!gguf.ok()) {
      load_error_ = new std::string(path + ": " + gguf.status().ToString() +
                                    " (run scripts/setup or set SEMSHARE_MODEL)");
      return;
    }
    auto tok = Tokenizer::FromGguf(**gguf);
    if (!tok.ok()) {
      load_error_ = new std::string(tok.status().ToString());
      return;
    }
    tokenizer_ = tok->release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete load_error_;
    tokenizer_ = nullptr;
    load_error_ = nullptr;
  }
  void SetUp() override { ASSERT_EQ(load_error_, nullptr) << *load_error_; }
  const Tokenizer& tok() const { return *tokenizer_; }

  static Tokenizer* tokenizer_;
  static std::string* load_error_;
};
Tokenizer* ModelTokenizerTest::tokenizer_ = nullptr;
std::string* ModelTokenizerTest::load_error_ = nullptr;

TEST_F(ModelTokenizerTest, Metadata) {
  EXPECT_EQ(tok().vocab_size(), 49152);
  EXPECT_EQ(tok().pre_tokenizer(), "smollm");
  EXPECT_EQ(tok().bos_id(), 1);
  EXPECT_EQ(tok().eos_id(), 2);
  EXPECT_FALSE(tok().add_bos());
  EXPECT_EQ(tok().TokenId("<|im_start|>"), 1);
  EXPECT_EQ(tok().TokenId("<|im_end|>"), 2);
  EXPECT_EQ(tok().TokenId("no such token"), -1);
  EXPECT_THAT(tok().eog_ids(), ElementsAre(0, 2));  // <|endoftext|>, <|im_end|> (= eos)
  EXPECT_TRUE(tok().IsEog(0));
  EXPECT_TRUE(tok().IsEog(2));
  EXPECT_FALSE(tok().IsEog(1));
  EXPECT_THAT(tok().chat_template(), HasSubstr("<|im_start|>"));
  EXPECT_EQ(tok().TokenBytes(-1), "");
  EXPECT_EQ(tok().TokenBytes(49152), "");
}

// Expected ids computed once with Hugging Face transformers 4.46.3 / tokenizers 0.20.3:
// AutoTokenizer.from_pretrained(dir, gguf_file=SmolLM2-135M-Instruct.Q4_1.gguf) with its
// pre-tokenizer set to SmolLM2's own Sequence([Digits(individual_digits=True), ByteLevel()]),
// tok(text, add_special_tokens=False)["input_ids"].
TEST_F(ModelTokenizerTest, KnownIdsFromHuggingFace) {
  struct Case {
    std::string text;
    std::vector<int32_t> ids;
  };
  const std::vector<Case> cases = {
      {"Hello world!", {19556, 905, 17}},
      {"The quick brown fox jumps over the lazy dog.",
       {504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 30}},
      {"I'm 42 years old, aren't you?", {57, 5248, 216, 36, 34, 929, 1573, 28, 4775, 982, 346, 47}},
      {"你好，世界！", {18645, 250, 48392, 138, 12831, 7906, 240, 178, 239, 230, 8083, 219}},
      {"🎉👍🏽", {10813, 232, 227, 10813, 235, 231, 10813, 233, 138}},
      {" \n\tx  y", {3717, 197, 104, 216, 329}},
      {"a  1", {81, 256, 33}},  // smollm splits the digit first; plain gpt2 would not
  };
  for (const Case& c : cases) {
    EXPECT_THAT(tok().Encode(c.text, /*parse_special=*/true), ElementsAreArray(c.ids)) << c.text;
    EXPECT_EQ(tok().Decode(c.ids), c.text);
  }
  EXPECT_TRUE(tok().Encode("", true).empty());
}

TEST_F(ModelTokenizerTest, SpecialTokensParseOnlyWhenAsked) {
  const std::string text = "<|im_start|>user\nHi<|im_end|>\n";
  // Same HF source as above; the second list is split_special_tokens=True.
  EXPECT_THAT(tok().Encode(text, true), ElementsAre(1, 4093, 198, 26843, 2, 198));
  EXPECT_THAT(tok().Encode(text, false), ElementsAre(44, 108, 306, 79, 3738, 108, 46, 4093, 198,
                                                     26843, 44, 108, 306, 79, 486, 108, 46, 198));
  EXPECT_EQ(tok().Decode(tok().Encode(text, true)), text);
  EXPECT_EQ(tok().Decode(tok().Encode(text, false)), text);
  // A near miss is plain text either way.
  EXPECT_EQ(tok().Encode("<|im_start|", true), tok().Encode("<|im_start|", false));
}

// Text from the pieces the decoder streams; every piece must be valid UTF-8.
std::string StreamAll(const Tokenizer& tok, const std::vector<int32_t>& ids, int* empty_pushes) {
  StreamDecoder decoder(tok);
  std::string text;
  *empty_pushes = 0;
  for (int32_t id : ids) {
    const std::string piece = decoder.Push(id);
    EXPECT_TRUE(utf8::IsValid(piece)) << "id " << id;
    if (piece.empty()) ++*empty_pushes;
    text += piece;
  }
  const std::string tail = decoder.Flush();
  EXPECT_TRUE(utf8::IsValid(tail));
  return text + tail;
}

TEST_F(ModelTokenizerTest, StreamDecoderJoinsSplitCharacters) {
  for (const std::string text :
       {"你好，世界！", "🎉👍🏽 family 👨‍👩‍👧 done", "混合 text ✓ ½ 𝄞 end"}) {
    const std::vector<int32_t> ids = tok().Encode(text, true);
    int empty_pushes = 0;
    EXPECT_EQ(StreamAll(tok(), ids, &empty_pushes), text);
    // Non-trivial: these strings do split characters across tokens.
    EXPECT_GT(empty_pushes, 0) << text;
  }
}

// Byte-level BPE encodes any bytes, valid UTF-8 or not, as long as the vocabulary has a token
// for each byte. SmolLM2's lacks 21 (0x04 0x06 0x13 0x14 0x16 0x1D, and C0 C1 F1 F2 F5..FF,
// which never or almost never occur in UTF-8): those become the unknown token, as in HF.
TEST_F(ModelTokenizerTest, RoundTripsArbitraryBytes) {
  std::vector<uint8_t> present;
  for (int b = 0; b < 256; ++b) {
    const std::string s(1, static_cast<char>(b));
    const std::vector<int32_t> ids = tok().Encode(s, false);
    ASSERT_EQ(ids.size(), 1u);
    if (tok().Decode(ids) == s) {
      present.push_back(static_cast<uint8_t>(b));
    } else {
      EXPECT_EQ(ids[0], 0) << "byte " << b << " should be the unknown token";
    }
  }
  EXPECT_EQ(present.size(), 256u - 21u);
  // Ill-formed UTF-8: stray continuation, truncated 3-byte, surrogate, overlong.
  for (const std::string& s : {std::string("\x80"), std::string("ab\xE4\xB8"),
                               std::string("\xED\xA0\x80x"), std::string("\xE0\x80\x80"),
                               std::string("\xF0\x9F\x8E"), std::string("x\xE4\xB8\xAD\x80y")}) {
    EXPECT_EQ(tok().Decode(tok().Encode(s, true)), s);
  }
  std::mt19937 rng(7);
  for (int round = 0; round < 300; ++round) {
    std::string s(rng() % 64, '\0');
    for (char& c : s) c = static_cast<char>(present[rng() % present.size()]);
    ASSERT_EQ(tok().Decode(tok().Encode(s, true)), s) << "round " << round;
  }
}

TEST_F(ModelTokenizerTest, ConcurrentEncodeAgrees) {
  std::string text;
  for (int i = 0; i < 200; ++i) text += "Sentence " + std::to_string(i) + " with 日本語 and 🎉! ";
  const std::vector<int32_t> want = tok().Encode(text, true);
  ASSERT_GT(want.size(), 2000u);
  std::vector<std::vector<int32_t>> got(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] { got[t] = tok().Encode(text, true); });
  }
  for (auto& th : threads) th.join();
  for (const auto& g : got) EXPECT_EQ(g, want);
}

// ---- small hand-written tokenizer.json files ----

// Vocabulary: the 256 byte-level characters (ids 0..255 in byte order), then `extra` tokens.
json ByteVocab(const std::vector<std::string>& extra) {
  json vocab = json::object();
  const auto& alphabet = utf8::ByteLevelAlphabet::Get();
  for (int b = 0; b < 256; ++b) vocab[std::string(alphabet.CharOf(static_cast<uint8_t>(b)))] = b;
  int id = 256;
  for (const std::string& t : extra) vocab[t] = id++;
  return vocab;
}

json TinyTokenizerJson(json merges) {
  return {
      {"version", "1.0"},
      {"added_tokens",
       {{{"id", 300}, {"content", "<|end|>"}, {"special", true}},
        {{"id", 301}, {"content", "<tag>"}, {"special", false}},
        {{"id", 302}, {"content", "<|begin|>"}, {"special", true}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "ByteLevel"},
        {"add_prefix_space", false},
        {"trim_offsets", true},
        {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"vocab", ByteVocab({"ab", "bc", "abc", "Ġab", "Ġabc"})},
        {"merges", std::move(merges)}}},
  };
}

std::unique_ptr<Tokenizer> Load(const json& tokenizer, const json& config = json()) {
  auto tok = Tokenizer::FromHfJson(tokenizer.dump(), config.is_null() ? "" : config.dump());
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? *std::move(tok) : nullptr;
}

TEST(HfJsonTokenizerTest, MergesApplyInRankOrder) {
  // ids: "ab" 256, "bc" 257, "abc" 258, "Ġab" 259, "Ġabc" 260; 'a' 97, 'c' 99 (= bytes).
  auto tok = Load(TinyTokenizerJson({"a b", "Ġ ab", "ab c", "Ġab c"}));
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(tok->Encode("abc", false), ElementsAre(258));
  // " abc": "Ġ ab" outranks "ab c", so Ġab, then Ġabc.
  EXPECT_THAT(tok->Encode("abc abc", false), ElementsAre(258, 260));
  // Ranked the other way, " abc" becomes Ġ + abc (no "Ġ abc" merge).
  auto swapped = Load(TinyTokenizerJson({"a b", "ab c", "Ġ ab", "Ġab c"}));
  ASSERT_NE(swapped, nullptr);
  EXPECT_THAT(swapped->Encode("abc abc", false), ElementsAre(258, 32, 258));
  EXPECT_THAT(tok->Encode("cab", false), ElementsAre(99, 256));
  // With "b c" ranked first, "abc" can no longer become "ab" + "c".
  auto other = Load(TinyTokenizerJson(json::array({{"b", "c"}, {"a", "b"}, {"ab", "c"}})));
  ASSERT_NE(other, nullptr);
  EXPECT_THAT(other->Encode("abc", false), ElementsAre(97, 257));
  // ignore_merges takes a word that is a token whole, whatever the merges would make.
  json whole = TinyTokenizerJson(json::array({{"b", "c"}, {"a", "b"}, {"ab", "c"}}));
  whole["model"]["ignore_merges"] = true;
  auto ignoring = Load(whole);
  ASSERT_NE(ignoring, nullptr);
  EXPECT_THAT(ignoring->Encode("abc", false), ElementsAre(258));
  EXPECT_THAT(ignoring->Encode("abcc", false), ElementsAre(97, 257, 99));
  EXPECT_EQ(tok->pre_tokenizer(), "gpt2");
}

TEST(HfJsonTokenizerTest, AddedTokensAndConfig) {
  const json config = {{"bos_token", "<|begin|>"},
                       {"eos_token", {{"content", "<|end|>"}}},
                       {"add_bos_token", true},
                       {"chat_template", "{{ messages }}"}};
  auto tok = Load(TinyTokenizerJson({"a b"}), config);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->vocab_size(), 303);
  EXPECT_EQ(tok->bos_id(), 302);
  EXPECT_EQ(tok->eos_id(), 300);
  EXPECT_TRUE(tok->add_bos());
  EXPECT_EQ(tok->chat_template(), "{{ messages }}");
  EXPECT_THAT(tok->eog_ids(), ElementsAre(300));
  // Special tokens split out only with parse_special; non-special added tokens always.
  EXPECT_THAT(tok->Encode("ab<|end|>", true), ElementsAre(256, 300));
  EXPECT_THAT(tok->Encode("x<tag>y", false), ElementsAre(120, 301, 121));
  const std::vector<int32_t> plain = tok->Encode("ab<|end|>", false);
  EXPECT_EQ(plain.size(), 8u);  // "ab" + 7 single bytes
  EXPECT_EQ(tok->Decode(plain), "ab<|end|>");
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{302, 256, 300}), "<|begin|>ab<|end|>");
  // Ids nothing names (303 would be past the end; 257..299 exist) decode to nothing extra.
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{-5, 99999, 256}), "ab");
}

TEST(HfJsonTokenizerTest, RoundTripsEveryByteString) {
  auto tok = Load(TinyTokenizerJson({"a b", "ab c", "Ġ ab", "Ġab c"}));
  ASSERT_NE(tok, nullptr);
  std::mt19937 rng(11);
  for (int round = 0; round < 500; ++round) {
    std::string s(rng() % 48, '\0');
    for (char& c : s) c = static_cast<char>(rng() % 256);
    ASSERT_EQ(tok->Decode(tok->Encode(s, true)), s) << "round " << round;
  }
}

TEST(HfJsonTokenizerTest, StreamDecoderHoldsIncompleteCharacters) {
  auto tok = Load(TinyTokenizerJson({"a b"}));  // no merges of multi-byte characters
  ASSERT_NE(tok, nullptr);
  StreamDecoder decoder(*tok);
  // "🎉" is F0 9F 8E 89: one token per byte.
  const std::vector<int32_t> ids = tok->Encode("🎉", false);
  ASSERT_EQ(ids.size(), 4u);
  EXPECT_EQ(decoder.Push(ids[0]), "");
  EXPECT_EQ(decoder.Push(ids[1]), "");
  EXPECT_EQ(decoder.Push(ids[2]), "");
  EXPECT_EQ(decoder.Push(ids[3]), "🎉");
  // CJK (E4 B8 AD) cut short, then flushed: U+FFFD.
  const std::vector<int32_t> cjk = tok->Encode("中", false);
  ASSERT_EQ(cjk.size(), 3u);
  EXPECT_EQ(decoder.Push(cjk[0]), "");
  EXPECT_EQ(decoder.Push(cjk[1]), "");
  EXPECT_EQ(decoder.Flush(), "\xEF\xBF\xBD");
  EXPECT_EQ(decoder.Flush(), "");
  // A byte that can never start a character is replaced at once, and the text goes on.
  EXPECT_EQ(decoder.Push(tok->Encode("\xFF", false)[0]), "\xEF\xBF\xBD");
  EXPECT_EQ(decoder.Push(tok->TokenId("<|end|>")), "<|end|>");
  // An interrupted sequence: E4 then 'a'. The E4 is bad, the 'a' survives.
  EXPECT_EQ(decoder.Push(cjk[0]), "");
  EXPECT_EQ(decoder.Push(tok->Encode("a", false)[0]),
            "\xEF\xBF\xBD"
            "a");
}

TEST(HfJsonTokenizerTest, RecognisesPreTokenizers) {
  json t = TinyTokenizerJson({"a b"});
  t["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       {{{"type", "Digits"}, {"individual_digits", true}},
        {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}}}};
  EXPECT_EQ(Load(t)->pre_tokenizer(), "smollm");
  for (std::string rule : {"llama3", "qwen2"}) {
    t["pre_tokenizer"] = {
        {"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"},
           {"pattern", {{"Regex", std::string(PreTokenizer::HfPattern(rule))}}},
           {"behavior", "Isolated"},
           {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
    auto tok = Load(t);
    ASSERT_NE(tok, nullptr);
    EXPECT_EQ(tok->pre_tokenizer(), rule);
  }
}

// ---- errors ----

TEST(HfJsonTokenizerTest, BadFilesGiveStatusErrors) {
  const auto code = [](const json& t, const json& config = json()) {
    return Tokenizer::FromHfJson(t.dump(), config.is_null() ? "" : config.dump()).status().code();
  };
  EXPECT_EQ(Tokenizer::FromHfJson("{not json", "").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Tokenizer::FromHfJson("[]", "").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Tokenizer::FromHfJson(TinyTokenizerJson({"a b"}).dump(), "[1").status().code(),
            absl::StatusCode::kInvalidArgument);
  json t = TinyTokenizerJson({"a b"});
  t.erase("model");
  EXPECT_EQ(code(t), absl::StatusCode::kInvalidArgument);
  t = TinyTokenizerJson({"a b"});
  t["model"]["vocab"] = json::array();
  EXPECT_EQ(code(t), absl::StatusCode::kInvalidArgument);
  t = TinyTokenizerJson({"a zz"});  // merge of a token that does not exist
  EXPECT_EQ(code(t), absl::StatusCode::kInvalidArgument);
  t = TinyTokenizerJson({"a c"});  // "ac" is not in the vocabulary
  EXPECT_EQ(code(t), absl::StatusCode::kInvalidArgument);
  t = TinyTokenizerJson({"abc"});  // not "left right"
  EXPECT_EQ(code(t), absl::StatusCode::kInvalidArgument);
  t = TinyTokenizerJson({"a b"});
  t["model"]["vocab"]["neg"] = -3;
  EXPECT_EQ(code(t), absl::StatusCode::kInvalidArgument);
  t = TinyTokenizerJson({"a b"});
  t["model"]["vocab"]["huge"] = int64_t{1} << 40;
  EXPECT_EQ(code(t), absl::StatusCode::kInvalidArgument);
  t = TinyTokenizerJson({"a b"});
  t["model"]["vocab"]["ab"] = "not a number";
  EXPECT_EQ(code(t), absl::StatusCode::kInvalidArgument);
  t = TinyTokenizerJson({"a b"});
  t["added_tokens"][0].erase("content");
  EXPECT_EQ(code(t), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(TinyTokenizerJson({"a b"}), {{"bos_token", "<|missing|>"}}),
            absl::StatusCode::kInvalidArgument);
  // Valid JSON that describes something we do not implement.
  t = TinyTokenizerJson({"a b"});
  t["model"]["type"] = "WordPiece";
  EXPECT_EQ(code(t), absl::StatusCode::kUnimplemented);
  t = TinyTokenizerJson({"a b"});
  t["pre_tokenizer"] = {{"type", "Whitespace"}};
  EXPECT_EQ(code(t), absl::StatusCode::kUnimplemented);
  t["pre_tokenizer"] = nullptr;
  EXPECT_EQ(code(t), absl::StatusCode::kUnimplemented);
  t = TinyTokenizerJson({"a b"});
  t["pre_tokenizer"]["add_prefix_space"] = true;
  EXPECT_EQ(code(t), absl::StatusCode::kUnimplemented);
  t = TinyTokenizerJson({"a b"});
  t["normalizer"] = {{"type", "Lowercase"}};
  EXPECT_EQ(code(t), absl::StatusCode::kUnimplemented);
}

TEST(HfJsonTokenizerTest, TruncatedAndMutatedFilesNeverCrash) {
  const std::string good = TinyTokenizerJson({"a b", "ab c"}).dump();
  for (size_t n = 0; n < good.size(); n += 7) {
    EXPECT_FALSE(Tokenizer::FromHfJson(good.substr(0, n), "").ok()) << n;
  }
  std::mt19937 rng(3);
  int accepted = 0;
  for (int round = 0; round < 400; ++round) {
    std::string s = good;
    for (int k = 0; k < 3; ++k) s[rng() % s.size()] = static_cast<char>(rng() % 256);
    auto tok = Tokenizer::FromHfJson(s, "");
    if (tok.ok()) {
      ++accepted;
      // Whatever was accepted must still work.
      const std::vector<int32_t> ids = (*tok)->Encode("abc <|end|> xyz", true);
      (*tok)->Decode(ids);
    }
  }
  EXPECT_LT(accepted, 400);
}

// A GGUF holding only tokenizer metadata, built in memory.
testutil::GgufSpec TinyGgufSpec() {
  std::vector<GgufValue> tokens, types, merges;
  const auto& alphabet = utf8::ByteLevelAlphabet::Get();
  for (int b = 0; b < 256; ++b) {
    tokens.push_back(testutil::StringValue(std::string(alphabet.CharOf(static_cast<uint8_t>(b)))));
    types.push_back(testutil::IntValue(GgufValueType::kInt32, 1));
  }
  tokens.push_back(testutil::StringValue("ab"));
  types.push_back(testutil::IntValue(GgufValueType::kInt32, 1));
  tokens.push_back(testutil::StringValue("<|eot_id|>"));
  types.push_back(testutil::IntValue(GgufValueType::kInt32, 3));
  tokens.push_back(testutil::StringValue("xyz"));  // no merges make it
  types.push_back(testutil::IntValue(GgufValueType::kInt32, 1));
  merges.push_back(testutil::StringValue("a b"));
  testutil::GgufSpec spec;
  spec.Add("tokenizer.ggml.model", testutil::StringValue("gpt2"))
      .Add("tokenizer.ggml.pre", testutil::StringValue("llama-bpe"))
      .Add("tokenizer.ggml.tokens", testutil::ArrayValue(GgufValueType::kString, tokens))
      .Add("tokenizer.ggml.token_type", testutil::ArrayValue(GgufValueType::kInt32, types))
      .Add("tokenizer.ggml.merges", testutil::ArrayValue(GgufValueType::kString, merges))
      .Add("tokenizer.ggml.eos_token_id", testutil::IntValue(GgufValueType::kUint32, 257))
      .Add("tokenizer.ggml.add_bos_token", testutil::BoolValue(true));
  return spec;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> FromSpec(const testutil::GgufSpec& spec) {
  auto gguf = GgufFile::FromBytes(testutil::WriteGguf(spec));
  if (!gguf.ok()) return gguf.status();
  return Tokenizer::FromGguf(**gguf);
}

TEST(GgufTokenizerTest, TinyGgufLoads) {
  auto tok = FromSpec(TinyGgufSpec());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->pre_tokenizer(), "llama3");
  EXPECT_TRUE((*tok)->add_bos());
  EXPECT_THAT((*tok)->Encode("ab<|eot_id|>", true), ElementsAre(256, 257));
  EXPECT_THAT((*tok)->eog_ids(), ElementsAre(257));
  // Llama-3 vocabularies ignore merges for words that are tokens (llama.cpp, HF alike).
  EXPECT_THAT((*tok)->Encode("xyz", true), ElementsAre(258));
  EXPECT_THAT((*tok)->Encode("xy", true), ElementsAre('x', 'y'));
}

TEST(GgufTokenizerTest, MissingOrBadMetadataGivesStatusErrors) {
  const auto without = [](std::string_view key) {
    testutil::GgufSpec spec = TinyGgufSpec();
    std::erase_if(spec.kvs, [&](const testutil::KeyValue& kv) { return kv.key == key; });
    return FromSpec(spec).status();
  };
  for (std::string_view key :
       {"tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.merges"}) {
    const absl::Status s = without(key);
    EXPECT_FALSE(s.ok()) << key;
    EXPECT_THAT(std::string(s.message()), HasSubstr(std::string(key)));
  }
  EXPECT_EQ(without("tokenizer.ggml.pre").code(), absl::StatusCode::kUnimplemented);

  const auto with = [](std::string key, GgufValue v) {
    testutil::GgufSpec spec = TinyGgufSpec();
    for (auto& kv : spec.kvs) {
      if (kv.key == key) kv.value = v;
    }
    return FromSpec(spec).status().code();
  };
  EXPECT_EQ(with("tokenizer.ggml.model", testutil::StringValue("llama")),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(with("tokenizer.ggml.pre", testutil::StringValue("deepseek-coder")),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(with("tokenizer.ggml.eos_token_id", testutil::IntValue(GgufValueType::kUint32, 9999)),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(with("tokenizer.ggml.tokens", testutil::StringValue("not an array")),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(with("tokenizer.ggml.token_type",
                 testutil::ArrayValue(GgufValueType::kInt32,
                                      {testutil::IntValue(GgufValueType::kInt32, 1)})),
            absl::StatusCode::kInvalidArgument);  // 1 type for 259 tokens
  EXPECT_EQ(with("tokenizer.ggml.merges",
                 testutil::ArrayValue(GgufValueType::kString, {testutil::StringValue("a q")})),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(with("tokenizer.ggml.add_bos_token", testutil::StringValue("yes")),
            absl::StatusCode::kInvalidArgument);
}

// ---- pre-tokenizer rules (the oracle test compares whole corpora) ----

std::vector<std::string> Pieces(std::string_view rule, std::string_view text) {
  auto pre = PreTokenizer::Create(rule);
  EXPECT_TRUE(pre.ok()) << pre.status();
  std::vector<std::string_view> views;
  (*pre)->Split(text, &views);
  return {views.begin(), views.end()};
}

TEST(PreTokenizerTest, RulesSplitAsTheirRegexes) {
  EXPECT_THAT(Pieces("gpt2", "Hello world's 12345!!"),
              ElementsAre("Hello", " world", "'s", " 12345", "!!"));
  EXPECT_THAT(Pieces("smollm", "a  12"), ElementsAre("a", "  ", "1", "2"));
  EXPECT_THAT(Pieces("llama3", "I'M 12345\n\n x"),
              ElementsAre("I", "'M", " ", "123", "45", "\n\n", " x"));
  EXPECT_THAT(Pieces("qwen2", "x 123"), ElementsAre("x", " ", "1", "2", "3"));
  // U+180E is not White_Space (unlike PCRE2's own \s); U+0085 is.
  EXPECT_THAT(Pieces("gpt2", "a\xE1\xA0\x8E b\xC2\x85"),
              ElementsAre("a", "\xE1\xA0\x8E", " b", "\xC2\x85"));
  // Ill-formed UTF-8 becomes pieces of its own; nothing is lost.
  EXPECT_THAT(Pieces("gpt2", "ab\xFF\xFE cd"), ElementsAre("ab", "\xFF\xFE", " cd"));
  EXPECT_EQ(PreTokenizer::Create("nope").status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(PreTokenizer::CanonicalRule("llama-bpe"), "llama3");
}

}  // namespace
}  // namespace semshare::engine
