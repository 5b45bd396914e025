// Fused ("flash") CPU attention: softmax(q k^T * scale, masked) v without materialising the
// [rows, m] score matrix. The GEMM path (two OpenBLAS sgemm calls per kv group and query block)
// runs at a third of the projection GEMMs' speed on attention shapes (QK^T reduces over only
// head_dim = 64, PV has N = 64) and streams the score matrix through memory twice; here the
// scores of a tile of query rows x 16 keys live in AVX-512 registers, the softmax is computed
// online (running max and sum, the output rows rescaled when the max grows) and the PV products
// accumulate in an L1-resident [rows, head_dim] buffer.
//
// Query rows of one tile are (token, head) pairs of heads sharing one kv head (GQA), so every
// key tile loaded serves all of them. K is transposed once per call into [kv head][key tile]
// [head_dim][16] blocks and V repacked to [kv head][key][head_dim], both zero padded to a whole
// number of 16-key tiles (pad positions INT32_MAX, never visible).
#ifndef SEMSHARE_ENGINE_CPU_FLASH_ATTENTION_H_
#define SEMSHARE_ENGINE_CPU_FLASH_ATTENTION_H_

#include <cstdint>
#include <vector>

#include "engine/backend.h"

namespace semshare::engine {

// Packed K/V of one call, kept by the caller so that repeated calls reuse the allocation.
struct FlashAttentionScratch {
  std::vector<float> k_tiles;  // [n_kv_heads][tiles][head_dim][16] (+64-byte alignment slack)
  std::vector<float> v_rows;   // [n_kv_heads][tiles * 16][head_dim] (+ slack)
  std::vector<int32_t> k_pos;  // [tiles * 16], pads INT32_MAX
};

// Whether this build has the kernel (compiled for AVX-512); without it FlashAttention always
// returns false.
bool FlashAttentionAvailable();

// Computes exactly Backend::Attention's contract (engine/backend.h) into out and returns true,
// or returns false without touching out when this build or these parameters are not supported
// (no AVX-512, head_dim not a multiple of 16 or above 256, n_heads not a multiple of
// n_kv_heads); the caller then uses another implementation. Runs on ThreadPool::Default(), so
// it must not be called from inside one of its jobs.
bool FlashAttention(const float* q, const int32_t* q_pos, int64_t n, const float* k, const float* v,
                    const int32_t* k_pos, int64_t m, const AttentionParams& p, float* out,
                    FlashAttentionScratch* scratch);

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_CPU_FLASH_ATTENTION_H_
