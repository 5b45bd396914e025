#include "engine/model/fingerprint.h"

#include <xxhash.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace semshare::engine {

FingerprintBuilder::FingerprintBuilder() = default;
FingerprintBuilder::~FingerprintBuilder() = default;

void FingerprintBuilder::AddConfig(const ModelConfig& c) {
  // Every field that changes the computation, in a fixed textual form.
  std::string s = absl::StrCat(
      ArchName(c.arch), "|", c.n_layers, "|", c.d_model, "|", c.n_heads, "|", c.n_kv_heads, "|",
      c.head_dim, "|", c.d_ff, "|", c.vocab_size, "|", absl::StrFormat("%.9g", c.rms_eps), "|",
      absl::StrFormat("%.9g", c.rope_base), "|", c.rope_dim, "|", static_cast<int>(c.rope_style),
      "|", static_cast<int>(c.rope_scaling.type), "|",
      absl::StrFormat("%.9g|%.9g|%.9g", c.rope_scaling.factor, c.rope_scaling.low_freq_factor,
                      c.rope_scaling.high_freq_factor),
      "|", c.rope_scaling.original_context, "|", c.qkv_bias, "|", c.tied_embeddings, "|",
      c.sliding_window);
  config_hash_ = XXH3_64bits(s.data(), s.size());
}

void FingerprintBuilder::AddTensor(std::string_view name, std::span<const int64_t> shape,
                                   const void* bytes, size_t n_bytes) {
  XXH3_state_t* st = XXH3_createState();
  XXH3_64bits_reset(st);
  XXH3_64bits_update(st, name.data(), name.size());
  XXH3_64bits_update(st, shape.data(), shape.size_bytes());
  XXH3_64bits_update(st, bytes, n_bytes);
  uint64_t h = XXH3_64bits_digest(st);
  XXH3_freeState(st);
  // Sum of a mixed hash: commutative, so tensor order does not matter.
  tensor_sum_ += h * 0x9E3779B97F4A7C15ull + (h >> 29);
}

std::string FingerprintBuilder::Finish() const {
  uint64_t parts[2] = {config_hash_, tensor_sum_};
  return absl::StrFormat("%016x", XXH3_64bits(parts, sizeof(parts)));
}

}  // namespace semshare::engine
