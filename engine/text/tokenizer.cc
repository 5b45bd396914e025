// Tokenizer loaders (GGUF metadata here, tokenizer.json in bpe_hf_json.cc), IsEog and the
// streaming decoder. The BPE itself is in bpe_tokenizer.cc.
#include "engine/text/tokenizer.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/text/bpe_pretokenizer.h"
#include "engine/text/bpe_tokenizer.h"
#include "engine/text/unicode_utf8.h"

namespace semshare::engine {
namespace {

// Adds the key's name to an error so that a bad file says which field is wrong.
absl::Status WithKey(const absl::Status& status, std::string_view key) {
  return absl::Status(status.code(), absl::StrCat("GGUF tokenizer metadata '", std::string(key),
                                                  "': ", status.message()));
}

// Optional token id: -1 when absent.
absl::StatusOr<int32_t> OptionalId(const GgufFile& gguf, std::string_view key) {
  if (!gguf.Has(key)) return -1;
  auto id = gguf.GetInt(key);
  if (!id.ok()) return WithKey(id.status(), key);
  if (*id < 0 || *id > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("GGUF tokenizer metadata '", std::string(key),
                                                   "': id ", *id, " out of range"));
  }
  return static_cast<int32_t>(*id);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(const GgufFile& gguf) {
  constexpr std::string_view kModel = "tokenizer.ggml.model";
  auto model = gguf.GetString(kModel);
  if (!model.ok()) return WithKey(model.status(), kModel);
  if (*model != "gpt2") {
    return absl::UnimplementedError(absl::StrCat(
        "GGUF tokenizer model '", *model, "' is not supported (only byte-level BPE, 'gpt2')"));
  }
  BpeVocab vocab;
  auto tokens = gguf.GetStringArray("tokenizer.ggml.tokens");
  if (!tokens.ok()) return WithKey(tokens.status(), "tokenizer.ggml.tokens");
  vocab.tokens = *std::move(tokens);

  if (gguf.Has("tokenizer.ggml.token_type")) {
    auto types = gguf.GetIntArray("tokenizer.ggml.token_type");
    if (!types.ok()) return WithKey(types.status(), "tokenizer.ggml.token_type");
    vocab.types.reserve(types->size());
    for (int64_t t : *types) {
      if (t < 0 || t > 6) {
        return absl::InvalidArgumentError(
            absl::StrCat("GGUF tokenizer metadata 'tokenizer.ggml.token_type': value ", t,
                         " is not a token type (0..6)"));
      }
      // 0 (undefined) is treated as normal, as llama.cpp does.
      vocab.types.push_back(t == 0 ? TokenType::kNormal : static_cast<TokenType>(t));
    }
  }

  auto merges = gguf.GetStringArray("tokenizer.ggml.merges");
  if (!merges.ok()) return WithKey(merges.status(), "tokenizer.ggml.merges");
  vocab.merges.reserve(merges->size());
  for (size_t i = 0; i < merges->size(); ++i) {
    const std::string& merge = (*merges)[i];
    // Byte-level tokens never contain a raw space (it is "Ġ"), so one space separates them.
    const size_t space = merge.find(' ', 1);
    if (space == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("GGUF tokenizer metadata 'tokenizer.ggml.merges': entry ", i, " ('", merge,
                       "') is not 'left right'"));
    }
    vocab.merges.emplace_back(merge.substr(0, space), merge.substr(space + 1));
  }

  constexpr std::string_view kPre = "tokenizer.ggml.pre";
  if (!gguf.Has(kPre)) {
    // llama.cpp guesses a "default" regex here; a wrong guess gives silently wrong ids.
    return absl::UnimplementedError(
        "GGUF has no 'tokenizer.ggml.pre': cannot tell which pre-tokenizer the model uses");
  }
  auto pre = gguf.GetString(kPre);
  if (!pre.ok()) return WithKey(pre.status(), kPre);
  vocab.pre = *pre;
  // llama.cpp sets this for Llama-3 vocabularies, matching `ignore_merges` in their
  // tokenizer.json: a word that is itself a token is taken whole.
  vocab.ignore_merges = PreTokenizer::CanonicalRule(*pre) == "llama3";

  for (auto [key, field] : {std::pair{"tokenizer.ggml.bos_token_id", &vocab.bos_id},
                            std::pair{"tokenizer.ggml.eos_token_id", &vocab.eos_id},
                            std::pair{"tokenizer.ggml.unknown_token_id", &vocab.unk_id},
                            std::pair{"tokenizer.ggml.padding_token_id", &vocab.pad_id}}) {
    auto id = OptionalId(gguf, key);
    if (!id.ok()) return id.status();
    *field = *id;
  }
  for (std::string_view key : {"tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"}) {
    auto id = OptionalId(gguf, key);
    if (!id.ok()) return id.status();
    if (*id >= 0) vocab.extra_eog_ids.push_back(*id);
  }
  constexpr std::string_view kAddBos = "tokenizer.ggml.add_bos_token";
  if (gguf.Has(kAddBos)) {
    auto add_bos = gguf.GetBool(kAddBos);
    if (!add_bos.ok()) return WithKey(add_bos.status(), kAddBos);
    vocab.add_bos = *add_bos;
  }
  constexpr std::string_view kTemplate = "tokenizer.chat_template";
  if (gguf.Has(kTemplate)) {
    auto chat_template = gguf.GetString(kTemplate);
    if (!chat_template.ok()) return WithKey(chat_template.status(), kTemplate);
    vocab.chat_template = *std::move(chat_template);
  }
  auto tokenizer = BuildBpeTokenizer(std::move(vocab));
  if (!tokenizer.ok()) {
    return absl::Status(tokenizer.status().code(),
                        absl::StrCat("GGUF ", tokenizer.status().message()));
  }
  return tokenizer;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromHfJson(
    std::string_view tokenizer_json, std::string_view tokenizer_config) {
  auto vocab = ParseHfTokenizerJson(tokenizer_json, tokenizer_config);
  if (!vocab.ok()) return vocab.status();
  return BuildBpeTokenizer(*std::move(vocab));
}

bool Tokenizer::IsEog(int32_t id) const {
  const auto& ids = eog_ids();  // a handful of ids: a linear scan is fastest
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

std::string StreamDecoder::Push(int32_t id) {
  pending_ += tokenizer_.TokenBytes(id);
  // Emit everything except a tail that is a valid but unfinished character; ill-formed bytes
  // can never complete, so they go out at once as U+FFFD.
  std::string out;
  size_t pos = 0;
  while (pos < pending_.size()) {
    const utf8::Seq seq = utf8::DecodeAt(pending_, pos);
    if (seq.status == utf8::SeqStatus::kIncomplete) break;
    if (seq.status == utf8::SeqStatus::kOk) {
      out.append(pending_, pos, seq.length);
    } else {
      out.append(utf8::kReplacementChar);
    }
    pos += seq.length;
  }
  pending_.erase(0, pos);
  return out;
}

std::string StreamDecoder::Flush() {
  std::string out = utf8::ToValidLossy(pending_);
  pending_.clear();
  return out;
}

}  // namespace semshare::engine
