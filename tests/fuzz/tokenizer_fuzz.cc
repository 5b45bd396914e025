// Fuzz target: tokenizer encode/decode (engine/text/tokenizer.h) on arbitrary bytes, with the real
// default model's vocabulary ($SEMSHARE_MODEL, SmolLM2-135M-Instruct).
//
// Tokenizers under test, all built once in LLVMFuzzerInitialize:
//   - Tokenizer::FromGguf on the model file (pre-tokenizer "smollm"), on every input;
//   - Tokenizer::FromHfJson on a tokenizer.json written in memory from the same vocabulary and
//     merges with each of the four pre-tokenizer rules (gpt2, llama3, qwen2, smollm), so the
//     tokenizer.json loader and every pre-tokenizer regex see the input too; input byte 0
//     picks one rule per input.
// Properties checked (abort = a crash libFuzzer records):
//   - every id is in [0, vocab_size);
//   - Decode(Encode(text)) == text byte for byte, with and without parse_special, whenever
//     the vocabulary has a token for every byte of text (invalid UTF-8 included);
//   - StreamDecoder over those ids yields utf8::ToValidLossy(Decode(ids)) (streamed and whole
//     decodes agree), which is text itself for valid UTF-8 text;
//   - Decode, TokenBytes and StreamDecoder accept the input reinterpreted as arbitrary int32
//     ids (negative and out of range included) without crashing.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/model/default_model.h"
#include "engine/model/gguf.h"
#include "engine/text/bpe_pretokenizer.h"
#include "engine/text/tokenizer.h"
#include "engine/text/unicode_utf8.h"
#include "nlohmann/json.hpp"
#include "tests/fuzz/fuzz_check.h"

namespace {

using semshare::engine::GgufFile;
using semshare::engine::StreamDecoder;
using semshare::engine::Tokenizer;
namespace utf8 = semshare::engine::utf8;

std::unique_ptr<Tokenizer> g_gguf_tokenizer;
std::vector<std::unique_ptr<Tokenizer>> g_json_tokenizers;  // gpt2, llama3, qwen2, smollm

[[noreturn]] void Die(const std::string& why) {
  std::fprintf(stderr, "tokenizer_fuzz: %s\n", why.c_str());
  std::exit(1);
}

// The pre_tokenizer object Hugging Face writes for each rule (what bpe_hf_json.cc recognises).
nlohmann::json PreTokenizerJson(std::string_view rule) {
  using nlohmann::json;
  json byte_level = {{"type", "ByteLevel"},
                     {"add_prefix_space", false},
                     {"trim_offsets", true},
                     {"use_regex", true}};
  if (rule == "gpt2") return byte_level;
  if (rule == "smollm") {
    return {{"type", "Sequence"},
            {"pretokenizers",
             {{{"type", "Digits"}, {"individual_digits", true}}, std::move(byte_level)}}};
  }
  // llama3 / qwen2: a Split on the rule's regex, then ByteLevel without its own regex.
  byte_level["use_regex"] = false;
  const std::string pattern(semshare::engine::PreTokenizer::HfPattern(rule));
  return {{"type", "Sequence"},
          {"pretokenizers",
           {{{"type", "Split"},
             {"pattern", {{"Regex", pattern}}},
             {"behavior", "Isolated"},
             {"invert", false}},
            std::move(byte_level)}}};
}

// tokenizer.json text for the GGUF vocabulary: control tokens (type 3) become special added
// tokens, user-defined ones (4) plain added tokens, the rest model.vocab.
std::string TokenizerJson(const GgufFile& gguf, std::string_view rule) {
  using nlohmann::json;
  auto tokens = gguf.GetStringArray("tokenizer.ggml.tokens");
  auto types = gguf.GetIntArray("tokenizer.ggml.token_type");
  auto merges = gguf.GetStringArray("tokenizer.ggml.merges");
  if (!tokens.ok() || !types.ok() || !merges.ok() || types->size() != tokens->size()) {
    Die("the model's tokenizer metadata is incomplete");
  }
  json vocab = json::object();
  json added = json::array();
  for (size_t i = 0; i < tokens->size(); ++i) {
    const int64_t t = (*types)[i];
    if (t == 3 || t == 4) {
      added.push_back({{"id", i}, {"content", (*tokens)[i]}, {"special", t == 3}});
    } else {
      vocab[(*tokens)[i]] = i;
    }
  }
  json tok = {{"version", "1.0"},
              {"added_tokens", std::move(added)},
              {"normalizer", nullptr},
              {"pre_tokenizer", PreTokenizerJson(rule)},
              {"model", {{"type", "BPE"}, {"vocab", std::move(vocab)}, {"merges", *merges}}}};
  return tok.dump();
}

// Whether every byte of `text` has a one-byte token in `tok`'s vocabulary. Byte-level BPE
// round-trips only such text: the default model (like its Hugging Face original) has no token
// for the bytes that never occur in UTF-8 (0xC0, 0xC1, 0xF5..0xFF), which encode as its
// unknown token, as Hugging Face tokenizers does.
bool AllBytesRepresentable(const Tokenizer& tok, std::string_view text) {
  const auto& alphabet = utf8::ByteLevelAlphabet::Get();
  bool seen[256] = {};
  for (unsigned char c : text) {
    if (seen[c]) continue;
    seen[c] = true;
    if (tok.TokenId(alphabet.CharOf(c)) < 0) return false;
  }
  return true;
}

void CheckRoundTrip(const Tokenizer& tok, std::string_view text, bool parse_special) {
  const std::vector<int32_t> ids = tok.Encode(text, parse_special);
  for (int32_t id : ids) FUZZ_CHECK(id >= 0 && id < tok.vocab_size());
  const std::string decoded = tok.Decode(ids);
  StreamDecoder stream(tok);
  std::string streamed;
  for (int32_t id : ids) streamed += stream.Push(id);
  streamed += stream.Flush();
  FUZZ_CHECK(streamed == utf8::ToValidLossy(decoded));
  if (!AllBytesRepresentable(tok, text)) return;
  FUZZ_CHECK(decoded == text);
  if (utf8::IsValid(text)) FUZZ_CHECK(streamed == text);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  const std::string path = semshare::engine::ResolveModelPath("");  // or $SEMSHARE_MODEL
  auto gguf = GgufFile::Open(path);
  if (!gguf.ok()) Die(path + ": " + std::string(gguf.status().message()));
  auto tok = Tokenizer::FromGguf(**gguf);
  if (!tok.ok()) Die(std::string(tok.status().message()));
  g_gguf_tokenizer = *std::move(tok);
  for (std::string_view rule : {"gpt2", "llama3", "qwen2", "smollm"}) {
    auto t = Tokenizer::FromHfJson(TokenizerJson(**gguf, rule), "");
    if (!t.ok()) Die(std::string(t.status().message()));
    if ((*t)->pre_tokenizer() != rule)
      Die("tokenizer.json rule not recognised: " + std::string(rule));
    g_json_tokenizers.push_back(*std::move(t));
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  CheckRoundTrip(*g_gguf_tokenizer, text, /*parse_special=*/false);
  CheckRoundTrip(*g_gguf_tokenizer, text, /*parse_special=*/true);
  if (size > 0) {
    const Tokenizer& json_tok = *g_json_tokenizers[data[0] % g_json_tokenizers.size()];
    CheckRoundTrip(json_tok, text, /*parse_special=*/false);
    CheckRoundTrip(json_tok, text, /*parse_special=*/true);
  }
  // The bytes as arbitrary ids.
  std::vector<int32_t> ids(size / 4);
  if (!ids.empty()) std::memcpy(ids.data(), data, ids.size() * 4);
  (void)g_gguf_tokenizer->Decode(ids);
  StreamDecoder stream(*g_gguf_tokenizer);
  for (int32_t id : ids) {
    (void)g_gguf_tokenizer->TokenBytes(id);
    (void)g_gguf_tokenizer->IsEog(id);
    (void)stream.Push(id);
  }
  (void)stream.Flush();
  return 0;
}
