// The Llama-family decoder forward pass (llama, qwen2, mistral), written once against the
// Backend interface:
//   x = embed(ids)
//   per layer: h = rmsnorm(x); q,k,v = h Wq,Wk,Wv (+bias); rope(q,k); kv_cache += (k,v);
//              x += attn(q, cache) Wo;  h = rmsnorm(x); x += (silu(h Wg) * h Wu) Wd
//   logits = rmsnorm(x_last) W_out
// Long inputs are processed in chunks of `max_chunk` tokens so scratch memory stays bounded;
// the result does not depend on the chunk size beyond float summation order.
#ifndef SEMSHARE_ENGINE_LLAMA_FORWARD_H_
#define SEMSHARE_ENGINE_LLAMA_FORWARD_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "engine/backend.h"
#include "engine/kv_cache.h"
#include "engine/model.h"

namespace semshare::engine {

class LlamaForward {
 public:
  // Borrows model and backend; both must outlive this object. Not thread-safe: one per
  // request (it owns scratch buffers).
  LlamaForward(const Model& model, Backend& backend, int64_t max_chunk = 512);

  // Runs tokens ids[n] at positions pos[n] (ascending, all after the cache's positions),
  // appends their K/V to `cache`, and writes the logits of the last token to logits[vocab]
  // when logits is non-null. InvalidArgument for out-of-range ids or positions.
  absl::Status Forward(std::span<const int32_t> ids, std::span<const int32_t> pos, KvCache& cache,
                       float* logits);

  // An empty cache shaped for this model.
  KvCache NewCache() const;
  const Model& model() const { return model_; }

 private:
  void ForwardChunk(const int32_t* ids, const int32_t* pos, int64_t n, KvCache& cache);

  const Model& model_;
  Backend& backend_;
  const int64_t max_chunk_;
  std::vector<float> inv_freq_;  // [rope_dim / 2]
  // Scratch, sized for max_chunk tokens.
  std::vector<float> x_, h_, q_, k_, v_, att_, gate_, up_;
};

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_LLAMA_FORWARD_H_
