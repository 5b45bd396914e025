// The batched device forward of continuous batching (issue 14): one forward pass over every row
// of an iteration (decode rows of running sequences and prefill chunks of admitted ones), each
// sequence's KV in a shared paged pool (engine/cuda/paged_kv.h). Per iteration:
//   ids, positions, per-row sequence, block tables, per-layer row counts and KV slots: one
//     upload of int32 metadata;
//   x = embed(ids) for all R rows (float residual stream);
//   per layer: h = rmsnorm(x) (bf16); qkv = h Wqkv^T (+b): ONE GEMM over all R rows; q = rope(q)
//     at each row's own position; K = rope(k), V = v written straight into each row's page slot;
//     att = PagedAttention (kernels/paged_attention.cuh: each sequence's rows over its own KV
//     rows, causal by position, through its block table; varlen, no padding); x += att Wo^T
//     (one GEMM, epilogue beta = 1); the MLP as two GEMMs over all rows (gate|up, down);
//   the final norm and ONE logits GEMM over only the rows that need logits, downloaded to the
//     host in one copy (or reduced to greedy token ids on the device: ForwardGreedy).
// The same kernels and GEMM calls as CudaForward (engine/cuda/cuda_forward.h); only attention
// differs (paged, varlen). Errors are statuses (never aborts): InvalidArgument for a malformed
// batch, ResourceExhausted when the pool has too few free pages for the batch's new rows (then
// nothing changed) or scratch memory runs out; a device error part way leaves the batch's
// sequences with pages but unchanged row counts (their KV past those rows is undefined; the
// engine loop fails those requests). Not thread-safe: one engine loop's thread.
#ifndef SEMSHARE_ENGINE_CUDA_BATCH_FORWARD_H_
#define SEMSHARE_ENGINE_CUDA_BATCH_FORWARD_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "engine/cuda/cuda_context.h"
#include "engine/cuda/device_kv.h"
#include "engine/cuda/device_model.h"
#include "engine/cuda/paged_kv.h"
#include "engine/kv_cache.h"

namespace semshare::engine::cuda {

class BatchForward {
 public:
  // One sequence's share of an iteration: ids at positions pos (ascending, after the
  // sequence's next_position()) appended to its KV; the last row's logits to the host
  // logits[vocab] when non-null.
  struct Item {
    PagedSeq* seq = nullptr;
    std::span<const int32_t> ids;
    std::span<const int32_t> pos;
    float* logits = nullptr;
  };

  // Borrows ctx, model and pool (all outlive it; pool made on ctx's device).
  BatchForward(CudaContext& ctx, const DeviceModel& model, PagedKvPool& pool);
  ~BatchForward();  // frees the pinned logits buffer once the stream is idle
  BatchForward(const BatchForward&) = delete;
  BatchForward& operator=(const BatchForward&) = delete;

  // The iteration (see the file comment). Each sequence at most once per call.
  absl::Status Forward(std::span<const Item> items);
  // As Forward, but every item's next token is its last row's argmax (greedy, lowest index on
  // ties), computed on the device: only tokens[items.size()] cross PCIe; Item::logits ignored.
  absl::Status ForwardGreedy(std::span<const Item> items, std::span<int32_t> tokens);

  // The empty `seq` := every row of every layer of `src` (a device cache on the same device,
  // any context, whose work is complete), positions included: a selective prefill's result.
  absl::Status AdoptDevice(PagedSeq& seq, const DeviceKvCache& src);
  // The empty `seq` := rows [0, rows) of every layer of the host cache `src` (float -> bf16):
  // an exact prefix. InvalidArgument when a layer has fewer rows or the shape differs.
  absl::Status CopyFromHost(PagedSeq& seq, const KvCache& src, int64_t rows);
  // Every row of `seq` as a host cache (bf16 -> float); `seq` keeps its rows.
  absl::Status ToHost(const PagedSeq& seq, KvCache* out);

  // Device scratch of one iteration of `rows` rows of which `logit_rows` need logits (the
  // budget left to the KV pool is what the device has free minus this).
  static int64_t ScratchBytes(const ModelConfig& c, int64_t rows, int64_t logit_rows);

  PagedKvPool& pool() const { return pool_; }

 private:
  absl::Status Run(std::span<const Item> items, int32_t* tokens);
  absl::Status Layer(int64_t l, int64_t r, int64_t n_items);

  CudaContext& ctx_;
  const DeviceModel& model_;
  PagedKvPool& pool_;
  int64_t d_, qd_, kvd_, qkvd_, ff_;
  // Host views of the metadata upload (int32 offsets into meta_): see Run.
  std::vector<int32_t> meta_h_;
  int64_t off_pos_ = 0, off_seq_ = 0, off_toff_ = 0, off_table_ = 0, off_rows_ = 0, off_slot_ = 0,
          off_lrow_ = 0;
  std::vector<int64_t> max_rows_;  // [n_layers]: most rows of any item's sequence, per layer
  // Pinned host memory for the logits download ([logit rows, vocab] float; at 64 streams of a
  // 128k vocabulary 32 MB per iteration, which pageable memory would copy at a fraction of the
  // link's rate). Grown, never shrunk.
  float* logits_h_ = nullptr;
  int64_t logits_h_bytes_ = 0;
  // Scratch (rows R of the iteration, NL rows with logits): x [R, d] f32; h [R, d] bf16; qkv
  // [R, qkvd] f32; q [R, qd] bf16; att [R, qd] bf16; gu [R, 2ff] bf16; act [R, ff] bf16; meta
  // int32; attention workspace; xl [NL, d] f32; logits [NL, vocab] f32; tok [NL] int32; tmp
  // (copies in and out of the pages).
  DeviceBuffer x_, h_, qkv_, q_, att_, gu_, act_, meta_, ws_, xl_, logits_, tok_, tmp_, tmp_idx_;
};

}  // namespace semshare::engine::cuda

#endif  // SEMSHARE_ENGINE_CUDA_BATCH_FORWARD_H_
