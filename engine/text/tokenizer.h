// Byte-level BPE tokenizer (the GPT-2 family: SmolLM2, Llama-3, Qwen2, Mistral-Nemo style
// vocabularies) with the pre-tokenizer rules of gpt2, llama3, qwen2 and smollm, special and
// control tokens, and streaming decode. Loaded from GGUF metadata or a Hugging Face
// tokenizer.json. Immutable after construction; thread-safe for concurrent Encode/Decode.
#ifndef SEMSHARE_ENGINE_TEXT_TOKENIZER_H_
#define SEMSHARE_ENGINE_TEXT_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/gguf.h"

namespace semshare::engine {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // From GGUF `tokenizer.ggml.*` metadata (model "gpt2"; pre "gpt2", "llama-bpe"/"llama3",
  // "qwen2", "smollm", ...). Unimplemented for other tokenizer models.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(const GgufFile& gguf);
  // From the text of a Hugging Face tokenizer.json and (optional, may be empty) the text of
  // tokenizer_config.json (bos/eos names, add_bos_token, chat_template).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromHfJson(std::string_view tokenizer_json,
                                                               std::string_view tokenizer_config);

  // Token ids of `text`. With parse_special, occurrences of special/control token strings
  // (e.g. "<|im_start|>") become their ids; otherwise they are tokenized as plain text.
  // Never adds BOS; callers add it when add_bos() says so.
  virtual std::vector<int32_t> Encode(std::string_view text, bool parse_special) const = 0;
  // Bytes of the tokens concatenated (special tokens included as their text). The result may
  // hold invalid UTF-8 if the tokens split a character; StreamDecoder handles streaming.
  virtual std::string Decode(std::span<const int32_t> ids) const = 0;
  // Raw bytes of one token ("" for out-of-range ids).
  virtual std::string TokenBytes(int32_t id) const = 0;

  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;  // -1 if none
  virtual int32_t eos_id() const = 0;  // -1 if none
  // End-of-generation ids: eos plus e.g. <|im_end|>, <|eot_id|>, <|end_of_text|>.
  virtual const std::vector<int32_t>& eog_ids() const = 0;
  bool IsEog(int32_t id) const;
  virtual bool add_bos() const = 0;
  // Id of an exact special/normal token string, -1 if absent.
  virtual int32_t TokenId(std::string_view token_text) const = 0;
  // The Jinja chat template shipped with the model ("" if none); chat_template.h picks a
  // renderer from it.
  virtual const std::string& chat_template() const = 0;
  // Pre-tokenizer rule in use ("gpt2", "llama3", "qwen2", "smollm").
  virtual const std::string& pre_tokenizer() const = 0;
};

// Turns a stream of token ids into text pieces that are always whole UTF-8 characters: bytes
// of a character split across tokens are held until it completes. Not thread-safe.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}
  // Text that became complete with this token (may be empty).
  std::string Push(int32_t id);
  // Whatever is held at the end (an incomplete character is replaced by U+FFFD).
  std::string Flush();

 private:
  const Tokenizer& tokenizer_;
  std::string pending_;
};

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_TEXT_TOKENIZER_H_
