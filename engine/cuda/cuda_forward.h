// The device-resident forward pass: LlamaForward's steps (engine/llama_forward.h) with weights,
// activations and KV on the GPU, and the selective (semshare / snapkv) prefill of
// engine/reuse/reuse_prefill.cc on top of them. Per layer:
//   h = rmsnorm(x) (bf16); qkv = h Wqkv^T (+b) (one GEMM, float out); q = rope(q) (bf16);
//   K = rope(k), V = v written straight into the layer's KV rows (bf16);
//   att = attention(q, KV) (flash kernel, bf16); x += att Wo^T (GEMM epilogue, beta = 1);
//   h = rmsnorm(x); gu = h Wgu^T (bf16); a = silu(g) * u; x += a Wdown^T (beta = 1).
// The residual stream x stays float. Host work per layer is launches only, except in the
// selective prefill, which copies the chosen index lists back (a few KB, through pinned memory)
// to size the next launches: one stream synchronisation per layer that shrinks the recompute
// set, none else before the logits (retention's kept rows come back without waiting). Not
// thread-safe: one per request stream.
#ifndef SEMSHARE_ENGINE_CUDA_CUDA_FORWARD_H_
#define SEMSHARE_ENGINE_CUDA_CUDA_FORWARD_H_

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "engine/cuda/cuda_context.h"
#include "engine/cuda/device_kv.h"
#include "engine/cuda/device_model.h"
#include "engine/reuse/reuse_config.h"
#include "engine/reuse/reuse_plan.h"
#include "engine/reuse/reuse_prefill.h"
#include "engine/reuse/token_matcher.h"
#include "kernels/attention.cuh"

namespace semshare::engine::cuda {

class CudaForward {
 public:
  // Borrows ctx and model. Scratch is sized for max_chunk tokens on first use.
  CudaForward(CudaContext& ctx, const DeviceModel& model, int64_t max_chunk = 8192);
  ~CudaForward();
  CudaForward(const CudaForward&) = delete;
  CudaForward& operator=(const CudaForward&) = delete;

  // As LlamaForward::Forward: tokens ids[n] at positions pos[n] (ascending, after the cache's),
  // appended to `cache`; logits of the last token to host logits[vocab] when non-null.
  absl::Status Forward(std::span<const int32_t> ids, std::span<const int32_t> pos,
                       DeviceKvCache& cache, float* logits);

  // Forward of one or more tokens, then the next token drawn on the device from the last
  // token's logits (nothing but the token id crosses PCIe): greedy (argmax, lowest index on
  // ties) when temperature <= 0, else top-k / top-p with the caller's uniform u in [0, 1)
  // (kernels/sampling.cuh; top_k 0 means the 1024 best candidates).
  absl::StatusOr<int32_t> ForwardSample(std::span<const int32_t> ids, std::span<const int32_t> pos,
                                        DeviceKvCache& cache, float temperature, int top_k,
                                        float top_p, float u);

  // As ReusePrefiller's snapkv/semshare path (positions 0..n-1, empty cache): executes `plan`
  // (engine/reuse/reuse_plan.h: PlanReuse of a hit's match, or PlanNoReuse; its rows,
  // schedule, guard and retention; its config) for ids[plan.n]: kSelective with `reference`
  // (device KV of the reference prompt, positions 0..m-1 in every layer): layer 0 is computed
  // for all tokens and deeper layers for a shrinking set chosen by KV deviation;
  // kHybridSelective the same for rows [copy_rows, n), after rows [0, copy_rows) copied from
  // the reference (never recomputed nor evicted); kNone without one, every token at every
  // layer. Fills st like ReusePrefiller (timings excluded). InvalidArgument when the plan does
  // not cover the prompt, names a row past the reference or copies rows without one. With a
  // reference uploaded by StartUpload, waits for each of its layers before reading it.
  // kCopyPrefix plans are Unimplemented here: the session copies exact prefixes itself.
  absl::Status SelectivePrefill(std::span<const int32_t> ids, const ReusePlan& plan,
                                DeviceKvCache* reference, DeviceKvCache& cache, float* logits,
                                PrefillStats* st);

  DeviceKvCache NewCache() const;

  // As LlamaForward::set_interrupt: checked on the host before each chunk of Forward and each
  // layer of SelectivePrefill; true stops the pass with CANCELLED. Null: never.
  void set_interrupt(std::function<bool()> interrupt) { interrupt_ = std::move(interrupt); }
  bool interrupted() const { return interrupt_ && interrupt_(); }

 private:
  absl::Status Reserve(int64_t s);
  absl::Status Qkv(int64_t l, const float* x, const int32_t* pos_d, int64_t s);
  // K/V of the s tokens from qkv_ into rows [row0, row0 + s) of kv, or into kcur_/vcur_ when kv
  // is null.
  absl::Status StoreKv(const int32_t* pos_d, int64_t s, DeviceLayerKv* kv, int64_t row0);
  absl::Status Attend(int64_t l, float* x, const int32_t* pos_d, int64_t s,
                      const DeviceLayerKv& kv);
  absl::Status Mlp(int64_t l, float* x, int64_t s);
  // The attention shape of n query rows of q_ over m KV rows (strides of this model).
  kernels::AttnShape Shape(int64_t n, int64_t m) const;
  // Final norm + output projection of one residual row into logits_ (device); copied to
  // logits_host when non-null.
  absl::Status Logits(const float* x_row, float* logits_host);
  int64_t last_rows_ = 0;  // rows of the last chunk of the last Forward (its x_ holds them)
  // Retention of one layer's rows: scores from the window queries q_window [w, q_dim] (bf16,
  // device) at positions qpos_d [w]; protect is indexed by position.
  // prot_h and idx_h: this layer's pinned host scratch of kv.rows bytes and int32s (stage_).
  // When it evicts: kv's rows and buffers are the kept ones, *kept their count, and idx_h
  // receives (asynchronously) their indices into the old rows; kv.host_pos still lists the old
  // rows, for the caller to map through idx_h after a stream synchronisation.
  absl::Status Retain(const void* q_window, const int32_t* qpos_d, int64_t w, int64_t budget,
                      const std::vector<uint8_t>& protect, DeviceLayerKv& kv, uint8_t* prot_h,
                      int32_t* idx_h, int64_t* kept);
  // stage_ of at least `bytes` (contents not kept).
  absl::Status EnsureStage(int64_t bytes);

  CudaContext& ctx_;
  const DeviceModel& model_;
  const int64_t max_chunk_;
  std::function<bool()> interrupt_;
  int64_t reserved_ = 0;
  int64_t d_, qd_, kvd_, qkvd_, ff_;
  // Scratch: x [S, d] f32; h [S, d] bf16; qkv [S, qkvd] f32; q [S, qd] bf16; kcur/vcur
  // [S, kvd] bf16; att [S, qd] bf16; gu [S, 2ff] bf16; act [S, ff] bf16; ids/pos int32 [S];
  // logits [vocab] f32; attention workspace; selective-prefill scratch.
  DeviceBuffer x_, h_, qkv_, q_, kcur_, vcur_, att_, gu_, act_, ids_, pos_, logits_, ws_;
  DeviceBuffer xs_, set_, src_, delta_, iota_, dev_, tmp_rows_, flags_, sel_idx_, sel_count_, mass_,
      mass_ws_, kv_spare_k_, kv_spare_v_, kv_spare_pos_;
  // Pinned host memory for the selective prefill's small transfers (ids, index lists, flags,
  // deviations): a copy from or to pageable memory drains the stream (a download returns only
  // when it is done, an upload may wait to be staged), one from pinned memory is queued like a
  // kernel. Grown, never shrunk; freed only after the stream is idle.
  void* stage_ = nullptr;
  int64_t stage_bytes_ = 0;
};

}  // namespace semshare::engine::cuda

#endif  // SEMSHARE_ENGINE_CUDA_CUDA_FORWARD_H_
