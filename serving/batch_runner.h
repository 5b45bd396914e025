// BatchRunner: what the engine loop (serving/engine_loop.h) needs from a backend to run one
// iteration over many sequences, each with its own KV wherever the backend keeps it.
//
//   CpuBatchRunner: LlamaForward::ForwardBatch over host KvCaches: projections and MLP as one
//     GEMM over every row of the iteration, attention per sequence (varlen), one logits GEMM;
//     prefill chunks of any size continue a sequence's cache (chunked prefill).
//   CudaBatchRunner: engine/cuda/batch_forward.h over a paged device KV pool
//     (engine/cuda/paged_kv.h): the same iteration as the CPU's on the GPU, ONE batched forward
//     per iteration (one GEMM per projection over every row, varlen paged attention, one logits
//     GEMM over the rows that need logits, one download); prefill chunks of any size; a hit's
//     selective prefill runs on a device session (CudaServingSession) and its rows are adopted
//     into the pool; an exact prefix is uploaded from the reference's host KV.
//
// Not thread-safe: the engine loop's thread is its only user.
#ifndef SEMSHARE_SERVING_BATCH_RUNNER_H_
#define SEMSHARE_SERVING_BATCH_RUNNER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/backend_factory.h"
#include "engine/kv_cache.h"
#include "engine/model/model.h"
#include "engine/reuse/reuse_config.h"
#include "engine/reuse/reuse_plan.h"
#include "engine/reuse/reuse_prefill.h"

namespace semshare::serving {

// One sequence's KV, owned by the loop, made and read by its runner.
class SeqKv {
 public:
  virtual ~SeqKv() = default;
  // Rows held in the layer with the most (retention may leave deeper layers shorter).
  virtual int64_t rows() const = 0;
  // Bytes of K and V held.
  virtual int64_t bytes() const = 0;
  // Position after the last row (0 when empty).
  virtual int32_t next_position() const = 0;
};

class BatchRunner {
 public:
  // One sequence's share of an iteration: ids at positions pos appended to its KV; the last
  // token's logits to logits[vocab] when non-null.
  struct Item {
    SeqKv* seq = nullptr;
    std::span<const int32_t> ids;
    std::span<const int32_t> pos;
    float* logits = nullptr;
  };

  virtual ~BatchRunner() = default;
  virtual std::string_view backend() const = 0;
  virtual const engine::Model& model() const = 0;
  // An empty sequence with room for `rows` rows (a hint: prompt + max_tokens).
  virtual absl::StatusOr<std::unique_ptr<SeqKv>> NewSeq(int64_t rows) = 0;
  // Runs every item in one iteration. RESOURCE_EXHAUSTED (the runner's own KV memory ran out)
  // must change no sequence: the loop then preempts the newest request and retries. Any other
  // error fails the whole iteration: the loop fails each request in it (their KV is in an
  // unknown state).
  virtual absl::Status Forward(std::span<const Item> items) = 0;
  // A reuse hit as the sequence's whole prefill: `plan` (engine/reuse/reuse_plan.h, made once
  // by serving::PlanHit: the selective path, or the hybrid: an exact prefix copied and the
  // selective path on the remainder; a kCopyPrefix plan runs here in one piece too) executed
  // against the reference; `interrupt` may stop it between layers (CANCELLED).
  virtual absl::StatusOr<engine::PrefillStats> PrefillHit(SeqKv& seq, std::span<const int32_t> ids,
                                                          std::span<const int32_t> ref_ids,
                                                          const engine::KvCache& ref_kv,
                                                          const engine::ReusePlan& plan,
                                                          float* logits,
                                                          std::function<bool()> interrupt) = 0;
  // An exact prefix (an engine::ReusePlan kCopyPrefix's copy; the loop then computes the rest
  // in chunks): the empty sequence takes rows [0, rows) of `src` (a full reference: every
  // layer holds one row per token) as its own. Unimplemented where the backend cannot (the
  // loop then prefills the whole prompt).
  virtual absl::Status CopyPrefix(SeqKv& seq, const engine::KvCache& src, int64_t rows) = 0;
  // The sequence's KV as a host cache (moved out on the host, copied from a device); the
  // sequence is empty after it.
  virtual absl::StatusOr<engine::KvCache> TakeKv(SeqKv& seq) = 0;
  // Most prompt tokens one prefill item may carry; 0 when a prompt must come in one piece.
  virtual int64_t max_chunk() const = 0;
  // KV bytes of one token's row over every layer (for the loop's budget).
  virtual int64_t row_bytes() const = 0;
};

// The CPU runner. Borrows model (outlives it); owns its backend's ops.
std::unique_ptr<BatchRunner> NewCpuBatchRunner(const engine::Model& model,
                                               std::unique_ptr<engine::Backend> backend,
                                               const engine::ReuseConfig& reuse);

// The CUDA runner on `runtime` (borrowed; outlives it; made by MakeServingRuntime("cuda")). It
// takes one device session of the runtime (its own stream, cuBLAS handle and memory pool, so
// the runtime's Memory() counts the pages) and runs every iteration and hit on it.
// *kv_cache_bytes is the loop's KV budget. When <= 0 it is set from the device: the pool takes
// the pages that fit in 90% of the memory free now (after the weights) less the scratch of an
// iteration of max_batch_tokens rows, and the budget is their rows less one partial page per
// sequence (max_num_seqs). When given, the pool holds that budget plus one partial page per
// sequence. Either way a loop that keeps within its budget in rows never runs out of pages.
// Unimplemented in a build without CUDA; ResourceExhausted when the pool does not fit.
absl::StatusOr<std::unique_ptr<BatchRunner>> NewCudaBatchRunner(const engine::Model& model,
                                                                engine::ServingRuntime& runtime,
                                                                int64_t* kv_cache_bytes,
                                                                int64_t max_batch_tokens,
                                                                int32_t max_num_seqs);

}  // namespace semshare::serving

#endif  // SEMSHARE_SERVING_BATCH_RUNNER_H_
