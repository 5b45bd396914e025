#include "engine/cuda/paged_kv.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/cuda/cuda_status.h"

namespace semshare::engine::cuda {

PagedSeq::PagedSeq(PagedKvPool& pool) : pool_(pool), layer_rows_(pool.n_layers(), 0) {}

PagedSeq::~PagedSeq() { pool_.Release(blocks_); }

int64_t PagedSeq::rows() const {
  int64_t r = 0;
  for (int64_t x : layer_rows_) r = std::max(r, x);
  return r;
}

int64_t PagedSeq::bytes() const {
  int64_t r = 0;
  for (int64_t x : layer_rows_) r += x;
  return r * pool_.kv_dim() * 2 * 2;
}

int64_t PagedSeq::Slot(int64_t j) const {
  return static_cast<int64_t>(blocks_[j / PagedKvPool::kBlockRows]) * PagedKvPool::kBlockRows +
         j % PagedKvPool::kBlockRows;
}

void PagedSeq::Clear() {
  pool_.Release(blocks_);
  std::fill(layer_rows_.begin(), layer_rows_.end(), 0);
  next_position_ = 0;
}

absl::StatusOr<std::unique_ptr<PagedKvPool>> PagedKvPool::Create(CudaContext& ctx, int64_t n_layers,
                                                                 int64_t kv_dim, int64_t bytes) {
  if (n_layers <= 0 || kv_dim <= 0) {
    return absl::InvalidArgumentError("paged KV pool: the model has no layers or no KV width");
  }
  const int64_t page = 2 * n_layers * kBlockRows * kv_dim * 2;
  const int64_t blocks = std::max<int64_t>(1, bytes / page);
  if (blocks > INT32_MAX / kBlockRows) {
    return absl::InvalidArgumentError(
        absl::StrCat("paged KV pool: ", bytes, " bytes is more pages than int32 slots address"));
  }
  std::unique_ptr<PagedKvPool> p(new PagedKvPool(ctx, n_layers, kv_dim, blocks));
  const ScopedDevice on = ctx.Activate();
  const int64_t kv_bytes = n_layers * blocks * kBlockRows * kv_dim * 2;
  auto fail = [&](const absl::Status& s) {
    return absl::Status(s.code(), absl::StrCat("paged KV pool of ", blocks * page,
                                               " bytes (--kv-cache-bytes): ", s.message(),
                                               "; give a smaller --kv-cache-bytes"));
  };
  for (DeviceBuffer* b : {&p->k_, &p->v_}) {
    absl::StatusOr<DeviceBuffer> buf = ctx.pool().Allocate(kv_bytes);
    if (!buf.ok()) return fail(buf.status());
    *b = *std::move(buf);
  }
  absl::StatusOr<DeviceBuffer> pos = ctx.pool().Allocate(n_layers * blocks * kBlockRows * 4);
  if (!pos.ok()) return fail(pos.status());
  p->pos_ = *std::move(pos);
  p->free_.resize(blocks);
  // Popped from the back: page 0 first (no meaning, but a predictable layout to debug).
  for (int64_t b = 0; b < blocks; ++b) p->free_[b] = static_cast<int32_t>(blocks - 1 - b);
  return p;
}

int64_t PagedKvPool::BlocksWithin(int64_t n_layers, int64_t kv_dim, int64_t bytes) {
  const int64_t half = n_layers * kBlockRows * kv_dim * 2;  // K (or V) bytes of one page
  const int64_t pos = n_layers * kBlockRows * 4;
  auto fits = [&](int64_t b) {
    return 2 * DevicePool::RoundUp(b * half) + DevicePool::RoundUp(b * pos) <= bytes;
  };
  // The size is monotone in the page count: binary search below the unrounded count.
  int64_t lo = 0, hi = std::max<int64_t>(bytes / (2 * half + pos), 0);
  while (lo < hi) {
    const int64_t mid = hi - (hi - lo) / 2;
    if (fits(mid)) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

void* PagedKvPool::k(int64_t l) const {
  return k_.as<char>() + l * num_blocks_ * kBlockRows * kv_dim_ * 2;
}

void* PagedKvPool::v(int64_t l) const {
  return v_.as<char>() + l * num_blocks_ * kBlockRows * kv_dim_ * 2;
}

int32_t* PagedKvPool::pos(int64_t l) const {
  return pos_.as<int32_t>() + l * num_blocks_ * kBlockRows;
}

absl::Status PagedKvPool::Reserve(std::span<PagedSeq* const> seqs, std::span<const int64_t> rows) {
  if (seqs.size() != rows.size()) {
    return absl::InvalidArgumentError("paged KV reserve: one row count per sequence");
  }
  int64_t want = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const int64_t need = (rows[i] + kBlockRows - 1) / kBlockRows;
    want += std::max<int64_t>(0, need - static_cast<int64_t>(seqs[i]->blocks_.size()));
  }
  if (want > free_blocks()) {
    return absl::ResourceExhaustedError(absl::StrCat("paged KV pool: the batch needs ", want,
                                                     " more pages of ", kBlockRows, " rows, ",
                                                     free_blocks(), " of ", num_blocks_,
                                                     " are free (raise --kv-cache-bytes or lower "
                                                     "--max-num-seqs / --max-batch-tokens)"));
  }
  for (size_t i = 0; i < seqs.size(); ++i) {
    const int64_t need = (rows[i] + kBlockRows - 1) / kBlockRows;
    while (static_cast<int64_t>(seqs[i]->blocks_.size()) < need) {
      seqs[i]->blocks_.push_back(free_.back());
      free_.pop_back();
    }
  }
  return absl::OkStatus();
}

absl::Status PagedKvPool::Reserve(PagedSeq& seq, int64_t rows) {
  PagedSeq* s = &seq;
  return Reserve(std::span<PagedSeq* const>(&s, 1), std::span<const int64_t>(&rows, 1));
}

absl::StatusOr<int64_t> DeviceFreeBytes(const CudaContext& ctx) {
  const ScopedDevice on = ctx.Activate();
  size_t free_b = 0, total_b = 0;
  SEMSHARE_CUDA_RETURN(cudaMemGetInfo(&free_b, &total_b));
  return static_cast<int64_t>(free_b);
}

void PagedKvPool::Release(std::vector<int32_t>& blocks) {
  free_.insert(free_.end(), blocks.rbegin(), blocks.rend());
  blocks.clear();
}

}  // namespace semshare::engine::cuda
