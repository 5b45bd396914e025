// Hugging Face tokenizer.json (+ tokenizer_config.json) -> BpeVocab.
//
// We reproduce only what byte-level BPE models use; anything that would change the ids and
// that we do not implement (another model type, a prefix space, subword prefixes, dropout, an
// unknown pre-tokenizer or normalizer) is Unimplemented rather than silently ignored.
// Accepted but not applied: `byte_fallback` (a byte-level vocabulary never falls back) and an
// NFC normalizer (Qwen2; llama.cpp does not apply it either, so non-NFC input may tokenize
// differently from HF), and the lstrip/rstrip/single_word/normalized flags of added tokens
// (all false in the byte-level models we serve; a token is matched as its exact content).
// nlohmann::json exceptions are caught here and become InvalidArgument.
#include <algorithm>
#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/text/bpe_pretokenizer.h"
#include "engine/text/bpe_tokenizer.h"
#include "nlohmann/json.hpp"

namespace semshare::engine {
namespace {

using nlohmann::json;

// Refuses vocabularies whose ids would make us allocate absurd tables.
constexpr int64_t kMaxVocab = int64_t{1} << 24;

absl::Status Invalid(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: ", what));
}

std::string Abbrev(const json& j) {
  std::string text = j.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 200) text = text.substr(0, 200) + "...";
  return text;
}

bool IsByteLevel(const json& p, bool use_regex) {
  if (!p.is_object() || p.value("type", "") != "ByteLevel") return false;
  // ByteLevel defaults: add_prefix_space true, use_regex true.
  const bool prefix = p.contains("add_prefix_space") && !p["add_prefix_space"].is_null()
                          ? p["add_prefix_space"].get<bool>()
                          : true;
  const bool regex = p.contains("use_regex") ? p["use_regex"].get<bool>() : true;
  return !prefix && regex == use_regex;
}

// The rule a pre_tokenizer object stands for, or "" when we do not implement it.
std::string RuleOf(const json& p) {
  if (IsByteLevel(p, /*use_regex=*/true)) return "gpt2";
  if (!p.is_object() || p.value("type", "") != "Sequence") return "";
  const json& list = p.at("pretokenizers");
  if (!list.is_array() || list.size() != 2) return "";
  const json& first = list[0];
  if (first.value("type", "") == "Digits" && first.value("individual_digits", false) &&
      IsByteLevel(list[1], /*use_regex=*/true)) {
    return "smollm";
  }
  if (first.value("type", "") == "Split" && IsByteLevel(list[1], /*use_regex=*/false) &&
      first.value("behavior", "") == "Isolated" && !first.value("invert", false) &&
      first.contains("pattern") && first["pattern"].contains("Regex")) {
    const std::string pattern = first["pattern"]["Regex"].get<std::string>();
    for (std::string_view rule : {"llama3", "qwen2"}) {
      if (pattern == PreTokenizer::HfPattern(rule)) return std::string(rule);
    }
  }
  return "";
}

absl::Status CheckNormalizer(const json& n) {
  if (n.is_null()) return absl::OkStatus();
  const std::string type = n.value("type", "");
  if (type == "NFC") return absl::OkStatus();  // see the file comment
  if (type == "Sequence" && n.contains("normalizers") && n["normalizers"].empty()) {
    return absl::OkStatus();
  }
  return absl::UnimplementedError(
      absl::StrCat("tokenizer.json: normalizer ", Abbrev(n), " is not supported"));
}

// A token named in tokenizer_config.json: a string, {"content": ...} or null.
std::string TokenName(const json& config, const char* key) {
  if (!config.is_object() || !config.contains(key)) return "";
  const json& v = config[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content")) return v["content"].get<std::string>();
  return "";
}

// Whether a post_processor prepends `bos` to single sequences (Llama-3 style).
bool PostProcessorAddsBos(const json& p, const std::string& bos) {
  if (!p.is_object() || bos.empty()) return false;
  const std::string type = p.value("type", "");
  if (type == "Sequence" && p.contains("processors")) {
    for (const json& q : p["processors"]) {
      if (PostProcessorAddsBos(q, bos)) return true;
    }
    return false;
  }
  if (type != "TemplateProcessing" || !p.contains("single") || p["single"].empty()) return false;
  const json& first = p["single"][0];
  return first.contains("SpecialToken") && first["SpecialToken"].value("id", "") == bos;
}

absl::StatusOr<BpeVocab> Parse(const json& tok, const json& config) {
  if (!tok.is_object()) return Invalid("top level is not an object");
  const json& model = tok.at("model");
  if (model.contains("type") && model["type"] != "BPE") {
    return absl::UnimplementedError(absl::StrCat(
        "tokenizer.json: model type ", Abbrev(model["type"]), " is not supported (only BPE)"));
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && !model[key].is_null() && !model[key].get<std::string>().empty()) {
      return absl::UnimplementedError(
          absl::StrCat("tokenizer.json: model.", key, " is not supported"));
    }
  }
  if (model.contains("dropout") && !model["dropout"].is_null() &&
      model["dropout"].get<double>() != 0.0) {
    return absl::UnimplementedError("tokenizer.json: BPE dropout is not supported");
  }

  BpeVocab vocab;
  const std::string rule = tok.contains("pre_tokenizer") ? RuleOf(tok["pre_tokenizer"]) : "";
  if (rule.empty()) {
    return absl::UnimplementedError(absl::StrCat(
        "tokenizer.json: pre_tokenizer ",
        tok.contains("pre_tokenizer") ? Abbrev(tok["pre_tokenizer"]) : std::string("(none)"),
        " is not one of gpt2, llama3, qwen2, smollm"));
  }
  vocab.pre = rule;
  if (tok.contains("normalizer")) {
    if (absl::Status s = CheckNormalizer(tok["normalizer"]); !s.ok()) return s;
  }

  // Tokens by id: model.vocab, then added_tokens (which win for their ids).
  const json& model_vocab = model.at("vocab");
  if (!model_vocab.is_object()) return Invalid("model.vocab is not an object");
  const json empty_array = json::array();
  const json& added = tok.contains("added_tokens") && !tok["added_tokens"].is_null()
                          ? tok["added_tokens"]
                          : empty_array;
  if (!added.is_array()) return Invalid("added_tokens is not an array");
  int64_t size = 0;
  const auto check_id = [&](int64_t id, const std::string& token) -> absl::Status {
    if (id < 0 || id >= kMaxVocab) {
      return Invalid(absl::StrCat("token '", token, "' has id ", id, " outside [0, 2^24)"));
    }
    size = std::max(size, id + 1);
    return absl::OkStatus();
  };
  for (const auto& [text, id] : model_vocab.items()) {
    if (absl::Status s = check_id(id.get<int64_t>(), text); !s.ok()) return s;
  }
  for (const json& a : added) {
    if (absl::Status s = check_id(a.at("id").get<int64_t>(), a.at("content").get<std::string>());
        !s.ok()) {
      return s;
    }
  }
  vocab.tokens.assign(size, "");
  vocab.types.assign(size, TokenType::kUnused);  // ids that nothing names
  for (const auto& [text, id] : model_vocab.items()) {
    vocab.tokens[id.get<int64_t>()] = text;
    vocab.types[id.get<int64_t>()] = TokenType::kNormal;
  }
  for (const json& a : added) {
    const int64_t id = a["id"].get<int64_t>();
    vocab.tokens[id] = a["content"].get<std::string>();
    vocab.types[id] = a.value("special", false) ? TokenType::kControl : TokenType::kUserDefined;
  }

  const json& merges = model.at("merges");
  if (!merges.is_array()) return Invalid("model.merges is not an array");
  vocab.merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const json& m = merges[i];
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ', 1);
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        return Invalid(absl::StrCat("merge ", i, " ('", s, "') is not 'left right'"));
      }
      vocab.merges.emplace_back(s.substr(0, space), s.substr(space + 1));
    } else if (m.is_array() && m.size() == 2) {
      vocab.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      return Invalid(absl::StrCat("merge ", i, " is ", Abbrev(m)));
    }
  }
  vocab.ignore_merges = model.value("ignore_merges", false);

  // Ids of named tokens; a name that is not in the vocabulary is an error.
  std::map<std::string, int32_t> ids;
  for (size_t i = 0; i < vocab.tokens.size(); ++i) {
    ids.try_emplace(vocab.tokens[i], static_cast<int32_t>(i));
  }
  const auto lookup = [&](const std::string& name, const std::string& what,
                          int32_t* out) -> absl::Status {
    if (name.empty()) return absl::OkStatus();
    const auto it = ids.find(name);
    if (it == ids.end()) {
      return Invalid(absl::StrCat(what, " '", name, "' is not in the vocabulary"));
    }
    *out = it->second;
    return absl::OkStatus();
  };
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    if (auto s = lookup(model["unk_token"].get<std::string>(), "model.unk_token", &vocab.unk_id);
        !s.ok()) {
      return s;
    }
  }
  const std::string bos = TokenName(config, "bos_token");
  for (auto [key, field] :
       {std::pair{"bos_token", &vocab.bos_id}, std::pair{"eos_token", &vocab.eos_id},
        std::pair{"unk_token", &vocab.unk_id}, std::pair{"pad_token", &vocab.pad_id}}) {
    if (auto s = lookup(TokenName(config, key), absl::StrCat("tokenizer_config ", key), field);
        !s.ok()) {
      return s;
    }
  }
  if (config.is_object() && config.contains("add_bos_token") &&
      !config["add_bos_token"].is_null()) {
    vocab.add_bos = config["add_bos_token"].get<bool>();
  } else {
    vocab.add_bos =
        tok.contains("post_processor") && PostProcessorAddsBos(tok["post_processor"], bos);
  }
  if (config.is_object() && config.contains("chat_template")) {
    const json& t = config["chat_template"];
    if (t.is_string()) {
      vocab.chat_template = t.get<std::string>();
    } else if (t.is_array()) {
      // Named templates: [{"name": "default", "template": "..."}, ...].
      for (const json& entry : t) {
        if (entry.value("name", "") == "default" || vocab.chat_template.empty()) {
          vocab.chat_template = entry.at("template").get<std::string>();
        }
      }
    }
  }
  return vocab;
}

}  // namespace

absl::StatusOr<BpeVocab> ParseHfTokenizerJson(std::string_view tokenizer_json,
                                              std::string_view tokenizer_config) {
  const json tok = json::parse(tokenizer_json, nullptr, /*allow_exceptions=*/false);
  if (tok.is_discarded()) return Invalid("not valid JSON");
  json config = json::object();
  if (!tokenizer_config.empty()) {
    config = json::parse(tokenizer_config, nullptr, /*allow_exceptions=*/false);
    if (config.is_discarded() || !config.is_object()) {
      return absl::InvalidArgumentError("tokenizer_config.json: not a valid JSON object");
    }
  }
  try {
    return Parse(tok, config);
  } catch (const json::exception& e) {
    // Missing keys (at) and wrong types (get) land here.
    return Invalid(absl::StrCat("malformed: ", e.what()));
  }
}

}  // namespace semshare::engine
