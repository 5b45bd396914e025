#include "engine/model/model_config.h"

#include "absl/strings/str_cat.h"

namespace semshare::engine {

const char* ArchName(Arch arch) {
  switch (arch) {
    case Arch::kLlama:
      return "llama";
    case Arch::kQwen2:
      return "qwen2";
    case Arch::kMistral:
      return "mistral";
  }
  return "unknown";
}

absl::Status ModelConfig::Validate() const {
  auto bad = [](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("model config: ", what));
  };
  constexpr int64_t kMax = int64_t{1} << 20;
  for (auto [v, name] : {std::pair{n_layers, "n_layers"},
                         {d_model, "d_model"},
                         {n_heads, "n_heads"},
                         {n_kv_heads, "n_kv_heads"},
                         {head_dim, "head_dim"},
                         {d_ff, "d_ff"},
                         {vocab_size, "vocab_size"}}) {
    if (v <= 0 || v > kMax * 16) return bad(absl::StrCat(name, " = ", v, " is out of range"));
  }
  if (n_heads % n_kv_heads != 0) {
    return bad(absl::StrCat("n_heads ", n_heads, " is not a multiple of n_kv_heads ", n_kv_heads));
  }
  if (head_dim > 1024) return bad(absl::StrCat("head_dim ", head_dim, " exceeds 1024"));
  if (head_dim % 2 != 0 || rope_dim <= 0 || rope_dim > head_dim || rope_dim % 2 != 0) {
    return bad(absl::StrCat("head_dim ", head_dim, " / rope_dim ", rope_dim, " must be even"));
  }
  if (!(rms_eps > 0) || !(rope_base > 1)) return bad("rms_eps and rope_base must be positive");
  if (rope_scaling.type != RopeScaling::Type::kNone && !(rope_scaling.factor > 0)) {
    return bad("rope scaling factor must be positive");
  }
  if (sliding_window < 0) {
    return bad(absl::StrCat("sliding_window = ", sliding_window,
                            " is negative (0 = full attention, N > 0 = the last N positions)"));
  }
  return absl::OkStatus();
}

}  // namespace semshare::engine
