// LoadGgufModel: a GGUF file of architecture llama, qwen2 or mistral into a Model.
// Linear weights and the embedding table stay in the file's block formats, read in place from
// the mapping, which every such Matrix keeps alive (Matrix::owner): loading touches no weight
// bytes except to fingerprint them. Norms, biases and rope_freqs (1-D, small) are converted to
// float32 copies, as are 2-D tensors the file stores as F32.
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "engine/model/dequant.h"
#include "engine/model/fingerprint.h"
#include "engine/model/gguf.h"
#include "engine/model/model.h"

namespace semshare::engine {
namespace {

absl::StatusOr<ModelConfig> ConfigFromGguf(const GgufFile& f) {
  ModelConfig c;
  auto arch = f.GetString("general.architecture");
  if (!arch.ok()) return arch.status();
  if (*arch == "llama") {
    c.arch = Arch::kLlama;
    c.rope_style = RopeStyle::kAdjacent;  // llama.cpp permuted Q/K rows for adjacent pairs
  } else if (*arch == "mistral") {
    c.arch = Arch::kMistral;
    c.rope_style = RopeStyle::kAdjacent;
  } else if (*arch == "qwen2") {
    c.arch = Arch::kQwen2;
    c.rope_style = RopeStyle::kHalfSplit;  // ggml "neox" rope, rows not permuted
    c.qkv_bias = true;
  } else {
    return absl::UnimplementedError(absl::StrCat("GGUF architecture '", *arch,
                                                 "' is not supported (llama, qwen2, mistral are)"));
  }
  const std::string& a = *arch;
  auto get_int = [&](const std::string& key, int64_t* out) -> absl::Status {
    auto v = f.GetInt(absl::StrCat(a, ".", key));
    if (!v.ok()) return v.status();
    *out = *v;
    return absl::OkStatus();
  };
  if (auto s = get_int("block_count", &c.n_layers); !s.ok()) return s;
  if (auto s = get_int("embedding_length", &c.d_model); !s.ok()) return s;
  if (auto s = get_int("feed_forward_length", &c.d_ff); !s.ok()) return s;
  if (auto s = get_int("attention.head_count", &c.n_heads); !s.ok()) return s;
  c.n_kv_heads = c.n_heads;
  if (f.Has(a + ".attention.head_count_kv")) {
    if (auto s = get_int("attention.head_count_kv", &c.n_kv_heads); !s.ok()) return s;
  }
  c.head_dim = c.n_heads > 0 ? c.d_model / c.n_heads : 0;
  if (f.Has(a + ".attention.key_length")) {
    if (auto s = get_int("attention.key_length", &c.head_dim); !s.ok()) return s;
  }
  c.rope_dim = c.head_dim;
  if (f.Has(a + ".rope.dimension_count")) {
    if (auto s = get_int("rope.dimension_count", &c.rope_dim); !s.ok()) return s;
  }
  if (f.Has(a + ".context_length")) {
    if (auto s = get_int("context_length", &c.max_context); !s.ok()) return s;
  }
  if (auto v = f.GetFloat(a + ".attention.layer_norm_rms_epsilon"); v.ok()) {
    c.rms_eps = static_cast<float>(*v);
  } else {
    return v.status();
  }
  if (auto v = f.GetFloat(a + ".rope.freq_base"); v.ok()) c.rope_base = static_cast<float>(*v);
  if (auto t = f.GetString(a + ".rope.scaling.type"); t.ok() && *t == "linear") {
    c.rope_scaling.type = RopeScaling::Type::kLinear;
    if (auto v = f.GetFloat(a + ".rope.scaling.factor"); v.ok()) {
      c.rope_scaling.factor = static_cast<float>(*v);
    }
  }
  if (f.Has(a + ".attention.sliding_window")) {
    if (auto s = get_int("attention.sliding_window", &c.sliding_window); !s.ok()) return s;
  }
  const GgufTensor* emb = f.FindTensor("token_embd.weight");
  if (emb == nullptr || emb->ne.size() != 2) {
    return absl::InvalidArgumentError("GGUF: tensor 'token_embd.weight' is missing or not 2-D");
  }
  c.vocab_size = emb->ne[1];
  c.tied_embeddings = f.FindTensor("output.weight") == nullptr;
  if (auto n = f.GetString("general.name"); n.ok()) c.name = *n;
  if (auto s = c.Validate(); !s.ok()) return s;
  return c;
}

struct TensorJob {
  const GgufTensor* tensor;
  Matrix* dst;
  bool as_float;  // convert to float32 (norms, biases, rope_freqs) instead of viewing blocks
};

absl::Status AddJob(const GgufFile& f, const std::string& name, bool required, bool as_float,
                    Matrix* dst, std::vector<TensorJob>& jobs) {
  const GgufTensor* t = f.FindTensor(name);
  if (t == nullptr) {
    if (!required) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("GGUF: tensor '", name, "' is missing"));
  }
  if (t->ne.size() > 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("GGUF: tensor '", name, "' has ", t->ne.size(), " dims, expected 1 or 2"));
  }
  if (!GetGgmlTypeTraits(static_cast<uint32_t>(t->type))->can_dequantize) {
    return absl::UnimplementedError(
        absl::StrCat("GGUF: tensor '", name, "' has type ",
                     std::string(GetGgmlTypeTraits(static_cast<uint32_t>(t->type))->name),
                     ", which this build cannot dequantise"));
  }
  dst->cols = t->ne[0];
  dst->rows = t->ne.size() == 2 ? t->ne[1] : 1;
  jobs.push_back({t, dst, as_float || t->ne.size() == 1});
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> LoadGgufModel(const std::string& path) {
  auto opened = GgufFile::Open(path);
  if (!opened.ok()) return opened.status();
  // Shared by every block Matrix: the mapping lives as long as the last weight that reads it.
  std::shared_ptr<const GgufFile> file = std::move(*opened);
  const GgufFile& f = *file;
  auto config = ConfigFromGguf(f);
  if (!config.ok()) {
    return absl::Status(config.status().code(),
                        absl::StrCat(config.status().message(), " (file '", path, "')"));
  }
  auto model = std::make_unique<Model>();
  model->config = *config;
  model->source = path;
  const ModelConfig& c = model->config;
  ModelWeights& w = model->weights;

  std::vector<TensorJob> jobs;
  absl::Status s;
  auto add = [&](const std::string& name, bool required, Matrix* dst, bool as_float = false) {
    if (s.ok()) s = AddJob(f, name, required, as_float, dst, jobs);
  };
  add("token_embd.weight", true, &w.tok_embd);
  add("output_norm.weight", true, &w.out_norm, true);
  add("output.weight", false, &w.lm_head);
  add("rope_freqs.weight", false, &w.rope_freqs, true);
  w.layers.resize(c.n_layers);
  for (int64_t i = 0; i < c.n_layers; ++i) {
    LayerWeights& l = w.layers[i];
    const std::string p = absl::StrCat("blk.", i, ".");
    add(p + "attn_norm.weight", true, &l.attn_norm, true);
    add(p + "attn_q.weight", true, &l.wq);
    add(p + "attn_k.weight", true, &l.wk);
    add(p + "attn_v.weight", true, &l.wv);
    add(p + "attn_output.weight", true, &l.wo);
    add(p + "ffn_norm.weight", true, &l.ffn_norm, true);
    add(p + "ffn_gate.weight", true, &l.w_gate);
    add(p + "ffn_up.weight", true, &l.w_up);
    add(p + "ffn_down.weight", true, &l.w_down);
    add(p + "attn_q.bias", c.qkv_bias, &l.bq, true);
    add(p + "attn_k.bias", c.qkv_bias, &l.bk, true);
    add(p + "attn_v.bias", c.qkv_bias, &l.bv, true);
  }
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat(s.message(), " (file '", path, "')"));

  std::vector<absl::Status> results(jobs.size());
  for (size_t j = 0; j < jobs.size(); ++j) {
    const TensorJob& job = jobs[j];
    Matrix& m = *job.dst;
    if (job.as_float) {
      m.data.resize(static_cast<size_t>(m.rows * m.cols));
      results[j] = Dequantize(job.tensor->type, job.tensor->data, m.rows * m.cols, m.data.data());
    } else {
      // Block tensors borrow the mapping; F32 ones are copied into `data` (MakeBlockMatrix).
      results[j] = MakeBlockMatrix(job.tensor->type, m.rows, m.cols, job.tensor->data, file, &m);
    }
  }
  for (size_t j = 0; j < jobs.size(); ++j) {
    if (!results[j].ok()) {
      return absl::Status(results[j].code(), absl::StrCat("GGUF: tensor '", jobs[j].tensor->name,
                                                          "': ", results[j].message()));
    }
  }
  if (auto vs = ValidateWeights(c, w); !vs.ok()) {
    return absl::Status(vs.code(), absl::StrCat(vs.message(), " (file '", path, "')"));
  }

  FingerprintBuilder fp;
  fp.AddConfig(c);
  for (const GgufTensor& t : f.tensors()) fp.AddTensor(t.name, t.ne, t.data, t.n_bytes);
  model->fingerprint = fp.Finish();

  auto tok = Tokenizer::FromGguf(f);
  if (!tok.ok()) {
    return absl::Status(tok.status().code(),
                        absl::StrCat(tok.status().message(), " (file '", path, "')"));
  }
  model->tokenizer = std::move(*tok);
  return model;
}

absl::StatusOr<std::unique_ptr<Model>> LoadModel(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return LoadHfDirectory(path);
  if (!std::filesystem::exists(path, ec)) {
    return absl::NotFoundError(absl::StrCat("model '", path,
                                            "' does not exist (expected a .gguf file or a "
                                            "Hugging Face model directory)"));
  }
  return LoadGgufModel(path);
}

}  // namespace semshare::engine
