// CpuBackend: the portable reference backend. Every op runs on the backend's ThreadPool
// (thread_pool.h); GEMMs (projections and the attention products) are single-threaded OpenBLAS
// calls split over that pool (gemm.h). Attention over 16 or more queries runs the fused AVX-512
// kernel (flash_attention.h) when the build and shapes allow, up to 4 queries (decode) a kernel
// per (row, GQA group of heads) on tile_matmul.h's small products (one pass over the group's
// key rows, one over its value rows), the sgemm pair otherwise; AttentionVarlen schedules those
// kernels for every sequence of a batched forward in one pool job. Weights held in ggml blocks go
// through BlockMatMul (quant_matmul.h): int8 dot kernels for 1-4 rows, the tile kernel for
// 5-64, dequantised tiles + sgemm for more.
#ifndef SEMSHARE_ENGINE_CPU_CPU_BACKEND_H_
#define SEMSHARE_ENGINE_CPU_CPU_BACKEND_H_

#include <vector>

#include "engine/backend.h"
#include "engine/cpu/flash_attention.h"
#include "engine/cpu/gemm.h"
#include "engine/cpu/quant_matmul.h"

namespace semshare::engine {

class CpuBackend final : public Backend {
 public:
  CpuBackend() { PinBlasToOneThread(); }
  // kFloat: float32 arithmetic on exactly dequantised weights for every row count (the float32
  // oracles' mode); the default quantizes few-row activations (quant_dot.h).
  explicit CpuBackend(MatMulPrecision precision) : precision_(precision) { PinBlasToOneThread(); }
  std::string_view name() const override { return "cpu"; }

  void MatMul(const float* x, int64_t n, const Matrix& w, const Matrix& bias, float* y) override;
  void RmsNorm(const float* x, const float* gamma, int64_t n, int64_t d, float eps,
               float* y) override;
  void Rope(float* x, const int32_t* pos, int64_t n, int64_t heads, int64_t head_dim,
            const RopeParams& rope) override;
  void Attention(const float* q, const int32_t* q_pos, int64_t n, const float* k, const float* v,
                 const int32_t* k_pos, int64_t m, const AttentionParams& p, float* out) override;
  // Every sequence's work in one pool job (see the .cc): the flash kernel's K/V packing and
  // query tiles of prefill-sized sequences and the per-(row, head) decode kernel of the others,
  // scheduled dynamically, costliest first. Sequences of 5..15 rows (or of 16+ where the flash
  // kernel declines the shape) take Attention's GEMM path after that job, one call each.
  void AttentionVarlen(const float* q, const int32_t* q_pos, std::span<const AttentionSeq> seqs,
                       const AttentionParams& p, float* out) override;
  void RopeQk(float* q, int64_t q_heads, float* k, int64_t k_heads, const int32_t* pos, int64_t n,
              int64_t head_dim, const RopeParams& rope) override;
  void AddRmsNorm(float* x, const float* y, const float* gamma, int64_t n, int64_t d, float eps,
                  float* out) override;
  void SwiGlu(const float* gate, const float* up, int64_t count, float* out) override;
  void Embed(const Matrix& table, const int32_t* ids, int64_t n, float* out) override;
  void GatherRows(const float* src, int64_t row_len, const int32_t* idx, int64_t n,
                  float* dst) override;
  void Add(float* x, const float* y, int64_t count) override;
  void AttentionMass(const float* q, const int32_t* q_pos, int64_t n, const float* k,
                     const int32_t* k_pos, int64_t m, const AttentionParams& p,
                     float* mass) override;
  void RowDistance(const float* a, const float* b, int64_t n, int64_t dim, float* out) override;

 private:
  // Attention for a few queries (decode) as dot products per (query, head), threaded over them.
  void DirectAttention(const float* q, const int32_t* q_pos, int64_t n, const float* k,
                       const float* v, const int32_t* k_pos, int64_t m, const AttentionParams& p,
                       float* out);
  // Masked softmax of one block's scores rows[nb, mm] in place (rows for queries q_pos[nb] over
  // kv rows k_pos[mm], ascending); invisible entries become 0. With inv_sums, rows stay
  // unnormalised (exp(s - max)) and inv_sums[nb] gets 1/sum per row (0 if nothing visible).
  void SoftmaxRows(float* rows, const int32_t* q_pos, int64_t nb, const int32_t* k_pos, int64_t mm,
                   int64_t window, float* inv_sums);

  MatMulPrecision precision_ = MatMulPrecision::kQuantizedActivations;
  std::vector<float> scores_;      // attention scratch [group * block, m]
  std::vector<float> q_pack_;      // [group * block, head_dim] queries of one kv group
  std::vector<float> o_pack_;      // [group * block, head_dim] their outputs
  std::vector<int32_t> pos_pack_;  // [group * block] their positions
  std::vector<float> inv_sum_;     // [group * block] softmax normalisers
  // Packed K/V of the fused attention kernel: [0] for Attention, one per flash-sized sequence
  // for AttentionVarlen (it grows to the most such sequences of one call and keeps them).
  std::vector<FlashAttentionScratch> flash_scratch_;
  // AttentionVarlen's per-call state: the flash work of each flash-sized sequence, the decode
  // work items, and the sequences left to the GEMM path.
  struct DecodeItem {
    const AttentionSeq* seq;
    int64_t row;     // query row within the sequence
    int64_t h0, h1;  // query heads [h0, h1)
  };
  std::vector<FlashAttentionWork> varlen_flash_;
  std::vector<DecodeItem> varlen_decode_;
  std::vector<const AttentionSeq*> varlen_decode_seqs_, varlen_gemm_seqs_;
};

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_CPU_CPU_BACKEND_H_
