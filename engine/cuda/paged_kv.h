// A paged KV pool on the device for continuous batching (engine/cuda/batch_forward.h): one
// allocation of fixed-size pages (kBlockRows rows each) shared by every running sequence, so
// sequences of any length share it without fragmentation (vLLM's PagedAttention layout).
//
// Memory, made once by Create and never grown:
//   k, v: [n_layers, num_blocks, kBlockRows, kv_dim] bf16 (K post-RoPE);
//   pos:  [n_layers, num_blocks, kBlockRows] int32, the position of each row.
// A page index b names the same slots in every layer. A PagedSeq holds a block table (its pages,
// in row order) shared by all its layers, and per layer its row count: layer l's logical row j
// lives in page blocks[j / kBlockRows], slot j % kBlockRows. Layers may hold different counts
// (retention after a selective prefill keeps fewer rows in deeper layers); the table is sized
// for the layer with the most.
//
// Pages come from a host free list: Reserve is all or nothing (RESOURCE_EXHAUSTED leaves every
// sequence as it was), and a sequence's pages return to the list when it is destroyed or
// cleared. Not thread-safe: the engine loop's thread is its only user. The pool must outlive its
// sequences.
#ifndef SEMSHARE_ENGINE_CUDA_PAGED_KV_H_
#define SEMSHARE_ENGINE_CUDA_PAGED_KV_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/cuda/cuda_context.h"

namespace semshare::engine::cuda {

class PagedKvPool;

class PagedSeq {
 public:
  explicit PagedSeq(PagedKvPool& pool);
  ~PagedSeq();  // its pages go back to the pool
  PagedSeq(const PagedSeq&) = delete;
  PagedSeq& operator=(const PagedSeq&) = delete;

  // Rows of the layer with the most.
  int64_t rows() const;
  int64_t layer_rows(int64_t l) const { return layer_rows_[l]; }
  // Bytes of K and V rows held, over every layer (bf16: the figure DeviceKvCache reports).
  int64_t bytes() const;
  // Position after the last row (0 when empty).
  int32_t next_position() const { return next_position_; }
  const std::vector<int32_t>& blocks() const { return blocks_; }
  // Slot of layer-local row j in a layer's page arrays: blocks()[j / kBlockRows] * kBlockRows +
  // j % kBlockRows (the row must be covered by the table).
  int64_t Slot(int64_t j) const;
  // Drops every row and returns the pages.
  void Clear();

 private:
  friend class PagedKvPool;
  friend class BatchForward;
  PagedKvPool& pool_;
  std::vector<int32_t> blocks_;
  std::vector<int64_t> layer_rows_;  // [n_layers]
  int32_t next_position_ = 0;
};

class PagedKvPool {
 public:
  static constexpr int64_t kBlockRows = 16;

  // Pages for `bytes` of K and V over every layer (rounded down to whole pages; at least one).
  // RESOURCE_EXHAUSTED when the device cannot hold them. Borrows ctx (outlives the pool).
  static absl::StatusOr<std::unique_ptr<PagedKvPool>> Create(CudaContext& ctx, int64_t n_layers,
                                                             int64_t kv_dim, int64_t bytes);
  // The most pages whose buffers (K and V rounded to the device pool's size classes, plus the
  // positions) fit in `bytes`; 0 when not even one does.
  static int64_t BlocksWithin(int64_t n_layers, int64_t kv_dim, int64_t bytes);
  PagedKvPool(const PagedKvPool&) = delete;
  PagedKvPool& operator=(const PagedKvPool&) = delete;

  int64_t n_layers() const { return n_layers_; }
  int64_t kv_dim() const { return kv_dim_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
  // K and V bytes of one page over every layer.
  int64_t block_bytes() const { return 2 * n_layers_ * kBlockRows * kv_dim_ * 2; }
  // Bytes of the pages in use (block_bytes() each): 0 when every sequence is gone.
  int64_t used_bytes() const { return (num_blocks_ - free_blocks()) * block_bytes(); }
  int64_t capacity_bytes() const { return num_blocks_ * block_bytes(); }

  // Layer l's page arrays (see the file comment).
  void* k(int64_t l) const;
  void* v(int64_t l) const;
  int32_t* pos(int64_t l) const;

  // Grows the sequences' tables so that seqs[i] covers rows[i] rows; all or nothing:
  // RESOURCE_EXHAUSTED (naming the pages wanted and free) changes nothing.
  absl::Status Reserve(std::span<PagedSeq* const> seqs, std::span<const int64_t> rows);
  absl::Status Reserve(PagedSeq& seq, int64_t rows);

  CudaContext& context() const { return ctx_; }

 private:
  friend class PagedSeq;
  PagedKvPool(CudaContext& ctx, int64_t n_layers, int64_t kv_dim, int64_t num_blocks)
      : ctx_(ctx), n_layers_(n_layers), kv_dim_(kv_dim), num_blocks_(num_blocks) {}
  void Release(std::vector<int32_t>& blocks);

  CudaContext& ctx_;
  const int64_t n_layers_, kv_dim_, num_blocks_;
  DeviceBuffer k_, v_, pos_;
  std::vector<int32_t> free_;  // free page indices, popped from the back
};

// Bytes free on ctx's device now (cudaMemGetInfo), for a default KV budget.
absl::StatusOr<int64_t> DeviceFreeBytes(const CudaContext& ctx);

}  // namespace semshare::engine::cuda

#endif  // SEMSHARE_ENGINE_CUDA_PAGED_KV_H_
