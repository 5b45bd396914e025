// Pre-tokenizer of byte-level BPE: splits text into the "words" that BPE merges never cross.
//
// Rules (the regexes are those of llama.cpp's llama-vocab.cpp, which copies them from each
// model's Hugging Face tokenizer.json):
//   gpt2    's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   llama3  (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}
//           | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//   qwen2   as llama3 with \p{N} instead of \p{N}{1,3}
//   smollm  first every \p{N} character on its own (HF `Digits(individual_digits=true)`),
//           then gpt2 on each piece
// Text between matches is kept as a piece of its own, so the pieces always concatenate to the
// input, byte for byte, even when it is not valid UTF-8 (ill-formed bytes match nothing and
// become their own pieces); byte-level BPE can then encode anything.
//
// Two deliberate details, both so that we agree with Hugging Face tokenizers (our oracle):
// - The case-insensitive contractions keep HF's `(?i:...)`; llama.cpp spells them
//   `'[sS]|...` only because its own regex engine lacks `(?i:`; under Unicode case folding
//   `(?i:'s)` also matches "'ſ" (U+017F), as HF does.
// - `\s` is the Unicode White_Space property (what Oniguruma and Python's `regex` use), not
//   PCRE2's `\p{Z}|\h|\v`, which also counts U+180E MONGOLIAN VOWEL SEPARATOR.
//
// PCRE2 (UTF + UCP, MATCH_INVALID_UTF, JIT when available) compiles each rule once; a Split
// call allocates its own match data, so one PreTokenizer serves any number of threads.
#ifndef SEMSHARE_ENGINE_TEXT_BPE_PRETOKENIZER_H_
#define SEMSHARE_ENGINE_TEXT_BPE_PRETOKENIZER_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace semshare::engine {

class PreTokenizer {
 public:
  // `rule`: one of gpt2, llama3, qwen2, smollm (names as in pre_tokenizer()), or a GGUF
  // `tokenizer.ggml.pre` alias (llama-bpe). Unimplemented for anything else: guessing a rule
  // would silently give wrong token ids.
  static absl::StatusOr<std::unique_ptr<PreTokenizer>> Create(std::string_view rule);
  // Canonical rule name for `name` ("llama-bpe" -> "llama3"), or "" if unknown.
  static std::string CanonicalRule(std::string_view name);
  // The word-splitting regex of a canonical rule as Hugging Face writes it (smollm: its gpt2
  // stage), "" if unknown. The tokenizer.json loader recognises Split pre-tokenizers by it.
  static std::string_view HfPattern(std::string_view canonical_rule);

  ~PreTokenizer();
  PreTokenizer(const PreTokenizer&) = delete;
  PreTokenizer& operator=(const PreTokenizer&) = delete;

  // Appends the pieces of `text` (views into it, none empty) to `pieces`.
  void Split(std::string_view text, std::vector<std::string_view>* pieces) const;

  const std::string& rule() const { return rule_; }

 private:
  struct Stage;
  PreTokenizer() = default;

  std::string rule_;
  std::vector<std::unique_ptr<Stage>> stages_;  // applied in order, each to every piece
};

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_TEXT_BPE_PRETOKENIZER_H_
