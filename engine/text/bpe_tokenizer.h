// The byte-level BPE tokenizer behind Tokenizer::FromGguf / FromHfJson: a vocabulary in the
// GPT-2 byte alphabet (unicode_utf8.h), merges ranked by their order, special tokens split out
// before pre-tokenization (bpe_pretokenizer.h), and BPE over token ids.
//
// Encoding one pre-tokenized word: its bytes become the ids of their one-byte tokens; a heap of
// adjacent pairs ordered by (merge rank, position) merges the best pair, as Hugging Face
// tokenizers and llama.cpp do, in O(n log n) per word of n bytes. Cost is dominated by the
// regex: about 0.5 ms per 1k tokens of ordinary text on one core (118k tokens of the oracle
// corpus: ~60 ms). A pathological single word of n bytes (1M spaces) costs O(n log n), ~2 s.
// No word cache: nothing mutable, so no locks.
#ifndef SEMSHARE_ENGINE_TEXT_BPE_TOKENIZER_H_
#define SEMSHARE_ENGINE_TEXT_BPE_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/text/tokenizer.h"

namespace semshare::engine {

// GGUF `tokenizer.ggml.token_type` values.
enum class TokenType : int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,      // special: split out of text only with parse_special
  kUserDefined = 4,  // added token: always split out of text
  kUnused = 5,
  kByte = 6,  // "<0xAB>": one raw byte
};

// Everything a loader extracts; BuildBpeTokenizer validates it.
struct BpeVocab {
  std::vector<std::string> tokens;  // [n_vocab] text: byte alphabet for kNormal, raw otherwise
  std::vector<TokenType> types;     // [n_vocab]
  std::vector<std::pair<std::string, std::string>> merges;  // rank = index
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t unk_id = -1;
  int32_t pad_id = -1;
  std::vector<int32_t> extra_eog_ids;  // e.g. GGUF eot/eom ids, added to eog_ids()
  bool add_bos = false;
  // When the whole word is a token, take it without merging (Llama-3's `ignore_merges`).
  bool ignore_merges = false;
  std::string pre;  // rule name for PreTokenizer::Create
  std::string chat_template;
};

// InvalidArgument when ids are out of range, sizes disagree or a merge names a token that is
// not in the vocabulary; Unimplemented for an unknown pre-tokenizer rule.
absl::StatusOr<std::unique_ptr<Tokenizer>> BuildBpeTokenizer(BpeVocab vocab);

// The vocabulary of a Hugging Face tokenizer.json (+ optional tokenizer_config.json text);
// see Tokenizer::FromHfJson. InvalidArgument for malformed JSON or fields of the wrong type,
// Unimplemented for a model/pre-tokenizer/normalizer this tokenizer does not reproduce.
absl::StatusOr<BpeVocab> ParseHfTokenizerJson(std::string_view tokenizer_json,
                                              std::string_view tokenizer_config);

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_TEXT_BPE_TOKENIZER_H_
