// LoadHfDirectory: a Hugging Face model directory (config.json, model.safetensors or
// model.safetensors.index.json + shards, tokenizer.json, optional tokenizer_config.json) of the
// llama, qwen2 or mistral families into a Model.
//
// Weights are converted to float32 one tensor at a time straight from the memory-mapped
// safetensors files, so peak memory is the float32 model plus the (page-cache backed, not
// anonymous) mapping; no second float copy is ever held. Hugging Face checkpoints pair RoPE
// dimensions as halves (k, k + d/2), so rope_style is kHalfSplit. The fingerprint covers the
// config and every tensor used, by HF name, shape and stored bytes (so an F16 and a BF16 copy
// of the same model differ, as their float32 weights do).
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/model/fingerprint.h"
#include "engine/model/model.h"
#include "engine/model/safetensors.h"

namespace semshare::engine {
namespace {

using Json = nlohmann::json;
namespace fs = std::filesystem;

// Config and index files are small; anything bigger is not what we expect.
constexpr uintmax_t kMaxJsonFileBytes = 256u << 20;

absl::StatusOr<std::string> ReadTextFile(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    return absl::NotFoundError(
        absl::StrCat("'", path.string(), "' does not exist or is not a file"));
  }
  uintmax_t size = fs::file_size(path, ec);
  if (ec || size > kMaxJsonFileBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", path.string(), "' is unreadable or larger than ", kMaxJsonFileBytes, " bytes"));
  }
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (!in.good() && !in.eof()) {
    return absl::InvalidArgumentError(absl::StrCat("cannot read '", path.string(), "'"));
  }
  return ss.str();
}

absl::StatusOr<Json> ReadJsonFile(const fs::path& path) {
  absl::StatusOr<std::string> text = ReadTextFile(path);
  if (!text.ok()) return text.status();
  try {
    Json j = Json::parse(*text);
    if (!j.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat("'", path.string(), "' is not a JSON object"));
    }
    return j;
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", path.string(), "' is not valid JSON: ", e.what()));
  }
}

// Typed access to config.json fields; absent and null are the same (HF writes null for
// "use the default").
class ConfigReader {
 public:
  ConfigReader(const Json& j, std::string file) : j_(j), file_(std::move(file)) {}

  const Json* Get(const Json& obj, const std::string& key) const {
    auto it = obj.find(key);
    return it == obj.end() || it->is_null() ? nullptr : &*it;
  }
  absl::Status Bad(absl::string_view key, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(file_, ": \"", key, "\" ", what));
  }
  absl::StatusOr<int64_t> Int(const Json& obj, const std::string& key,
                              std::optional<int64_t> def) const {
    const Json* v = Get(obj, key);
    if (v == nullptr) {
      if (def) return *def;
      return Bad(key, "is required");
    }
    if (!v->is_number_integer())
      return Bad(key, absl::StrCat("must be an integer, got ", v->dump()));
    if (v->is_number_unsigned() && v->get<uint64_t>() > (uint64_t{1} << 40)) {
      return Bad(key, "is out of range");
    }
    return v->get<int64_t>();
  }
  absl::StatusOr<double> Float(const Json& obj, const std::string& key,
                               std::optional<double> def) const {
    const Json* v = Get(obj, key);
    if (v == nullptr) {
      if (def) return *def;
      return Bad(key, "is required");
    }
    if (!v->is_number()) return Bad(key, absl::StrCat("must be a number, got ", v->dump()));
    return v->get<double>();
  }
  absl::StatusOr<bool> Bool(const Json& obj, const std::string& key, bool def) const {
    const Json* v = Get(obj, key);
    if (v == nullptr) return def;
    if (!v->is_boolean()) return Bad(key, absl::StrCat("must be true or false, got ", v->dump()));
    return v->get<bool>();
  }
  const Json& root() const { return j_; }
  const std::string& file() const { return file_; }

 private:
  const Json& j_;
  std::string file_;
};

#define SEMSHARE_ASSIGN(lhs, expr)         \
  do {                                     \
    auto _v = (expr);                      \
    if (!_v.ok()) return _v.status();      \
    lhs = static_cast<decltype(lhs)>(*_v); \
  } while (0)

absl::StatusOr<Arch> ParseArch(const ConfigReader& r) {
  const Json& j = r.root();
  std::string model_type;
  if (const Json* mt = r.Get(j, "model_type"); mt != nullptr && mt->is_string()) {
    model_type = mt->get<std::string>();
  }
  std::vector<std::string> archs;
  if (const Json* a = r.Get(j, "architectures"); a != nullptr) {
    if (!a->is_array()) return r.Bad("architectures", "must be an array of strings");
    for (const Json& s : *a) {
      if (!s.is_string()) return r.Bad("architectures", "must be an array of strings");
      archs.push_back(s.get<std::string>());
    }
  }
  static const std::pair<std::string_view, Arch> kTypes[] = {
      {"llama", Arch::kLlama}, {"qwen2", Arch::kQwen2}, {"mistral", Arch::kMistral}};
  static const std::pair<std::string_view, Arch> kArchs[] = {
      {"LlamaForCausalLM", Arch::kLlama},
      {"Qwen2ForCausalLM", Arch::kQwen2},
      {"MistralForCausalLM", Arch::kMistral}};
  std::optional<Arch> arch;
  if (!model_type.empty()) {
    for (const auto& [name, a] : kTypes) {
      if (model_type == name) arch = a;
    }
    if (!arch) {
      return absl::UnimplementedError(absl::StrCat(r.file(), ": model_type \"", model_type,
                                                   "\" is not supported (llama, qwen2, mistral)"));
    }
  }
  if (!archs.empty()) {
    // The weights must be a causal LM of the same family (a *ForSequenceClassification has no
    // lm_head, a different family has different tensors).
    std::optional<Arch> from_archs;
    for (const std::string& name : archs) {
      for (const auto& [n, a] : kArchs) {
        if (name == n) from_archs = a;
      }
    }
    if (!from_archs || (arch && *from_archs != *arch)) {
      return absl::UnimplementedError(absl::StrCat(
          r.file(), ": architectures [", absl::StrJoin(archs, ", "),
          "] is not a supported causal LM", model_type.empty() ? "" : " for ", model_type));
    }
    arch = from_archs;
  }
  if (!arch) {
    return absl::InvalidArgumentError(
        absl::StrCat(r.file(), ": neither \"model_type\" nor \"architectures\" is given"));
  }
  return *arch;
}

absl::Status ParseRopeScaling(const ConfigReader& r, RopeScaling* out) {
  const Json* rs = r.Get(r.root(), "rope_scaling");
  if (rs == nullptr) return absl::OkStatus();
  if (!rs->is_object()) return r.Bad("rope_scaling", "must be an object or null");
  std::string type;
  for (const char* key : {"rope_type", "type"}) {
    if (const Json* t = r.Get(*rs, key); t != nullptr && t->is_string() && type.empty()) {
      type = t->get<std::string>();
    }
  }
  if (type == "default") return absl::OkStatus();
  if (type == "linear") {
    out->type = RopeScaling::Type::kLinear;
    SEMSHARE_ASSIGN(out->factor, r.Float(*rs, "factor", std::nullopt));
    return absl::OkStatus();
  }
  if (type == "llama3") {
    out->type = RopeScaling::Type::kLlama3;
    SEMSHARE_ASSIGN(out->factor, r.Float(*rs, "factor", std::nullopt));
    SEMSHARE_ASSIGN(out->low_freq_factor, r.Float(*rs, "low_freq_factor", 1.0));
    SEMSHARE_ASSIGN(out->high_freq_factor, r.Float(*rs, "high_freq_factor", 4.0));
    SEMSHARE_ASSIGN(out->original_context, r.Int(*rs, "original_max_position_embeddings", 8192));
    if (!(out->high_freq_factor > out->low_freq_factor) || out->original_context <= 0) {
      return r.Bad("rope_scaling",
                   "llama3 needs high_freq_factor > low_freq_factor and a "
                   "positive original_max_position_embeddings");
    }
    return absl::OkStatus();
  }
  return absl::UnimplementedError(absl::StrCat(r.file(), ": rope_scaling type \"", type,
                                               "\" is not supported (linear, llama3)"));
}

absl::StatusOr<ModelConfig> ParseConfig(const Json& j, const std::string& file,
                                        const std::string& default_name) {
  ConfigReader r(j, file);
  ModelConfig c;
  SEMSHARE_ASSIGN(c.arch, ParseArch(r));
  c.name = default_name;
  if (const Json* n = r.Get(j, "_name_or_path");
      n != nullptr && n->is_string() && !n->get<std::string>().empty()) {
    c.name = n->get<std::string>();
  }
  if (const Json* act = r.Get(j, "hidden_act"); act != nullptr && *act != "silu") {
    return absl::UnimplementedError(
        absl::StrCat(file, ": hidden_act ", act->dump(), " is not supported (silu)"));
  }
  SEMSHARE_ASSIGN(c.d_model, r.Int(j, "hidden_size", std::nullopt));
  SEMSHARE_ASSIGN(c.d_ff, r.Int(j, "intermediate_size", std::nullopt));
  SEMSHARE_ASSIGN(c.n_layers, r.Int(j, "num_hidden_layers", std::nullopt));
  SEMSHARE_ASSIGN(c.n_heads, r.Int(j, "num_attention_heads", std::nullopt));
  SEMSHARE_ASSIGN(c.vocab_size, r.Int(j, "vocab_size", std::nullopt));
  if (c.n_heads <= 0) return r.Bad("num_attention_heads", "must be positive");
  SEMSHARE_ASSIGN(c.n_kv_heads, r.Int(j, "num_key_value_heads", c.n_heads));
  SEMSHARE_ASSIGN(c.head_dim, r.Int(j, "head_dim", c.d_model / c.n_heads));
  SEMSHARE_ASSIGN(c.rms_eps, r.Float(j, "rms_norm_eps", 1e-6));
  SEMSHARE_ASSIGN(c.rope_base, r.Float(j, "rope_theta", 10000.0));
  const int64_t default_context = c.arch == Arch::kQwen2     ? 32768
                                  : c.arch == Arch::kMistral ? 131072
                                                             : 2048;
  SEMSHARE_ASSIGN(c.max_context, r.Int(j, "max_position_embeddings", default_context));
  SEMSHARE_ASSIGN(c.tied_embeddings, r.Bool(j, "tie_word_embeddings", false));
  if (auto s = ParseRopeScaling(r, &c.rope_scaling); !s.ok()) return s;
  double partial_rotary = 1.0;
  SEMSHARE_ASSIGN(partial_rotary, r.Float(j, "partial_rotary_factor", 1.0));
  if (partial_rotary != 1.0) {
    return absl::UnimplementedError(absl::StrCat(file, ": partial_rotary_factor is not supported"));
  }
  c.rope_style = RopeStyle::kHalfSplit;
  c.rope_dim = c.head_dim;

  bool attention_bias = false, mlp_bias = false;
  SEMSHARE_ASSIGN(attention_bias, r.Bool(j, "attention_bias", false));
  SEMSHARE_ASSIGN(mlp_bias, r.Bool(j, "mlp_bias", false));
  if (mlp_bias) return absl::UnimplementedError(absl::StrCat(file, ": mlp_bias is not supported"));
  switch (c.arch) {
    case Arch::kQwen2: {
      c.qkv_bias = true;  // Qwen2 always has Q/K/V biases and no o_proj bias.
      bool use_sw = false;
      SEMSHARE_ASSIGN(use_sw, r.Bool(j, "use_sliding_window", false));
      if (use_sw) {
        return absl::UnimplementedError(
            absl::StrCat(file, ": qwen2 use_sliding_window (per-layer windows) is not supported"));
      }
      break;
    }
    case Arch::kMistral:
      SEMSHARE_ASSIGN(c.sliding_window, r.Int(j, "sliding_window", 0));
      if (c.sliding_window < 0) return r.Bad("sliding_window", "must be non-negative");
      [[fallthrough]];
    case Arch::kLlama:
      // Llama's attention_bias also puts a bias on o_proj, which the weights cannot hold.
      if (attention_bias) {
        return absl::UnimplementedError(absl::StrCat(file, ": attention_bias is not supported"));
      }
      break;
  }
  if (auto s = c.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": ", s.message()));
  }
  return c;
}

// The safetensors files of a directory and where each tensor lives.
class TensorSource {
 public:
  static absl::StatusOr<TensorSource> Open(const fs::path& dir) {
    TensorSource src;
    std::error_code ec;
    const fs::path single = dir / "model.safetensors";
    const fs::path index = dir / "model.safetensors.index.json";
    if (fs::exists(single, ec)) {
      auto f = SafetensorsFile::Open(single.string());
      if (!f.ok()) return f.status();
      for (const SafetensorsTensor& t : (*f)->tensors()) src.where_[t.name] = 0;
      src.files_.push_back(std::move(*f));
      src.description_ = single.string();
      return src;
    }
    if (!fs::exists(index, ec)) {
      return absl::NotFoundError(absl::StrCat(
          "no model.safetensors or model.safetensors.index.json in '", dir.string(), "'"));
    }
    auto j = ReadJsonFile(index);
    if (!j.ok()) return j.status();
    auto wm = j->find("weight_map");
    if (wm == j->end() || !wm->is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", index.string(), "' has no \"weight_map\" object"));
    }
    absl::flat_hash_map<std::string, size_t> shard_ids;
    for (const auto& [name, shard] : wm->items()) {
      if (!shard.is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat("'", index.string(), "': weight_map[\"", name, "\"] is not a file name"));
      }
      const std::string file = shard.get<std::string>();
      // Shards live beside the index; a path could reach outside the model directory.
      if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..") {
        return absl::InvalidArgumentError(absl::StrCat("'", index.string(), "': shard name \"",
                                                       file, "\" is not a plain file name"));
      }
      auto [it, inserted] = shard_ids.try_emplace(file, src.files_.size());
      if (inserted) {
        auto f = SafetensorsFile::Open((dir / file).string());
        if (!f.ok()) {
          return absl::Status(f.status().code(), absl::StrCat(f.status().message(), " (shard of '",
                                                              index.string(), "')"));
        }
        src.files_.push_back(std::move(*f));
      }
      src.where_[name] = it->second;
    }
    src.description_ = index.string();
    return src;
  }

  absl::StatusOr<const SafetensorsTensor*> Find(const std::string& name) const {
    auto it = where_.find(name);
    const SafetensorsTensor* t = it == where_.end() ? nullptr : files_[it->second]->Find(name);
    if (t == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("tensor '", name, "' is missing from ",
                       it == where_.end() ? description_ : files_[it->second]->path()));
    }
    return t;
  }
  bool Has(const std::string& name) const { return where_.contains(name); }
  std::string FileOf(const std::string& name) const {
    auto it = where_.find(name);
    return it == where_.end() ? description_ : files_[it->second]->path();
  }

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  absl::flat_hash_map<std::string, size_t> where_;
  std::string description_;
};

std::string ShapeString(std::span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Converts tensor `name` to float32 into *out after checking its numpy shape against `expected`
// ([n] becomes a [1, n] Matrix, [r, c] a [r, c] one), and adds it to the fingerprint.
absl::Status LoadMatrix(const TensorSource& src, const std::string& name,
                        const std::vector<int64_t>& expected, FingerprintBuilder* fp, Matrix* out) {
  absl::StatusOr<const SafetensorsTensor*> found = src.Find(name);
  if (!found.ok()) return found.status();
  const SafetensorsTensor& t = **found;
  if (!std::equal(t.shape.begin(), t.shape.end(), expected.begin(), expected.end())) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", name, "' in ", src.FileOf(name), " has shape ",
                     ShapeString(t.shape), ", config.json implies ", ShapeString(expected)));
  }
  out->rows = t.shape.size() == 1 ? 1 : t.shape[0];
  out->cols = t.shape.back();
  out->data.assign(static_cast<size_t>(t.n_elements), 0.0f);
  if (auto s = SafetensorsToFloat32(t, out->data); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat(s.message(), " (in ", src.FileOf(name), ")"));
  }
  fp->AddTensor(name, t.shape, t.bytes.data(), t.bytes.size());
  return absl::OkStatus();
}

absl::Status LoadWeights(const ModelConfig& c, const TensorSource& src, FingerprintBuilder* fp,
                         ModelWeights* w) {
  const int64_t d = c.d_model, q = c.n_heads * c.head_dim, kv = c.n_kv_heads * c.head_dim;
  absl::Status s;
  if (!(s = LoadMatrix(src, "model.embed_tokens.weight", {c.vocab_size, d}, fp, &w->tok_embd))
           .ok()) {
    return s;
  }
  if (!(s = LoadMatrix(src, "model.norm.weight", {d}, fp, &w->out_norm)).ok()) return s;
  // Tied checkpoints sometimes still store lm_head.weight (a copy of the embedding); the
  // config decides, as in transformers.
  if (!c.tied_embeddings) {
    if (!(s = LoadMatrix(src, "lm_head.weight", {c.vocab_size, d}, fp, &w->lm_head)).ok()) {
      return s;
    }
  }
  w->layers.resize(c.n_layers);
  for (int64_t i = 0; i < c.n_layers; ++i) {
    LayerWeights& l = w->layers[i];
    const std::string p = absl::StrCat("model.layers.", i, ".");
    struct Item {
      const char* suffix;
      std::vector<int64_t> shape;  // numpy order
      Matrix* m;
    };
    const Item items[] = {
        {"input_layernorm.weight", {d}, &l.attn_norm},
        {"self_attn.q_proj.weight", {q, d}, &l.wq},
        {"self_attn.k_proj.weight", {kv, d}, &l.wk},
        {"self_attn.v_proj.weight", {kv, d}, &l.wv},
        {"self_attn.o_proj.weight", {d, q}, &l.wo},
        {"post_attention_layernorm.weight", {d}, &l.ffn_norm},
        {"mlp.gate_proj.weight", {c.d_ff, d}, &l.w_gate},
        {"mlp.up_proj.weight", {c.d_ff, d}, &l.w_up},
        {"mlp.down_proj.weight", {d, c.d_ff}, &l.w_down},
    };
    for (const Item& it : items) {
      if (!(s = LoadMatrix(src, p + it.suffix, it.shape, fp, it.m)).ok()) return s;
    }
    if (c.qkv_bias) {
      const Item biases[] = {{"self_attn.q_proj.bias", {q}, &l.bq},
                             {"self_attn.k_proj.bias", {kv}, &l.bk},
                             {"self_attn.v_proj.bias", {kv}, &l.bv}};
      for (const Item& it : biases) {
        if (!(s = LoadMatrix(src, p + it.suffix, it.shape, fp, it.m)).ok()) return s;
      }
    } else if (src.Has(p + "self_attn.q_proj.bias") || src.Has(p + "self_attn.o_proj.bias")) {
      // Silently dropping a bias would give wrong outputs.
      return absl::UnimplementedError(absl::StrCat("layer ", i, " has attention biases that ",
                                                   ArchName(c.arch), " does not use (",
                                                   src.FileOf(p + "self_attn.q_proj.bias"), ")"));
    }
  }
  return ValidateWeights(c, *w);
}

#undef SEMSHARE_ASSIGN

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> LoadHfDirectory(const std::string& dir_string) {
  const fs::path dir(dir_string);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("model directory '", dir_string, "' does not exist"));
  }
  const fs::path config_path = dir / "config.json";
  absl::StatusOr<Json> config_json = ReadJsonFile(config_path);
  if (!config_json.ok()) return config_json.status();
  fs::path name_path = dir;
  if (!name_path.has_filename()) name_path = name_path.parent_path();  // "dir/" spelling
  absl::StatusOr<ModelConfig> config =
      ParseConfig(*config_json, config_path.string(), name_path.filename().string());
  if (!config.ok()) return config.status();

  auto model = std::make_unique<Model>();
  model->config = *std::move(config);
  model->source = dir_string;

  absl::StatusOr<std::string> tok_json = ReadTextFile(dir / "tokenizer.json");
  if (!tok_json.ok()) return tok_json.status();
  std::string tok_config;
  if (fs::exists(dir / "tokenizer_config.json", ec)) {
    absl::StatusOr<std::string> t = ReadTextFile(dir / "tokenizer_config.json");
    if (!t.ok()) return t.status();
    tok_config = *std::move(t);
  }
  auto tokenizer = Tokenizer::FromHfJson(*tok_json, tok_config);
  if (!tokenizer.ok()) {
    return absl::Status(
        tokenizer.status().code(),
        absl::StrCat((dir / "tokenizer.json").string(), ": ", tokenizer.status().message()));
  }
  model->tokenizer = *std::move(tokenizer);
  // Token ids index the embedding; a tokenizer larger than the model would read past it.
  if (model->tokenizer->vocab_size() > model->config.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        (dir / "tokenizer.json").string(), ": tokenizer has ", model->tokenizer->vocab_size(),
        " tokens but the model's vocab_size is ", model->config.vocab_size));
  }

  absl::StatusOr<TensorSource> src = TensorSource::Open(dir);
  if (!src.ok()) return src.status();
  FingerprintBuilder fp;
  fp.AddConfig(model->config);
  if (auto s = LoadWeights(model->config, *src, &fp, &model->weights); !s.ok()) return s;
  model->fingerprint = fp.Finish();
  return model;
}

}  // namespace semshare::engine
