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

// Whether FlashAttention takes these parameters in this build: AVX-512, head_dim a multiple of
// 16 and at most 256, n_heads a multiple of n_kv_heads.
bool FlashAttentionSupports(const AttentionParams& p);

// Computes exactly Backend::Attention's contract (engine/backend.h) into out and returns true,
// or returns false without touching out when this build or these parameters are not supported
// (FlashAttentionSupports); the caller then uses another implementation. Runs on
// ThreadPool::Default(), so it must not be called from inside one of its jobs.
bool FlashAttention(const float* q, const int32_t* q_pos, int64_t n, const float* k, const float* v,
                    const int32_t* k_pos, int64_t m, const AttentionParams& p, float* out,
                    FlashAttentionScratch* scratch);

// One FlashAttention call cut into work items that a caller schedules itself, among other work
// (CpuBackend::AttentionVarlen runs the items of several sequences in one pool job). FlashAttention
// is exactly PrepareFlashAttention, PackFlashKv over [0, pack_items), then RunFlashTile over
// [0, tile_items): a caller that runs the same items gets the same bits. Every pack item must be
// complete before any tile item starts; items of each kind are independent of each other and
// may run on any thread. The fields are set by PrepareFlashAttention; the pointers borrow the
// call's arguments and the scratch, which must outlive the items.
struct FlashAttentionWork {
  int64_t pack_items = 0;  // PackFlashKv items: (kv head, 16-key tile)
  int64_t tile_items = 0;  // RunFlashTile items: (query-row tile, kv head), costliest first
  int64_t tile_rows = 0;   // query rows per tile item (rows are (token, head of the group) pairs)
  // The call, as passed (q, out: [n, n_heads, head_dim]; k, v: [m, n_kv_heads, head_dim]).
  const float* q = nullptr;
  const int32_t* q_pos = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  float* out = nullptr;
  int64_t n = 0, m = 0, head_dim = 0, n_kv_heads = 0, group = 0, window = 0;
  float scale = 1.0f;
  // The packed K/V in the scratch: [n_kv_heads][tiles][head_dim][16] and
  // [n_kv_heads][tiles * 16][head_dim], positions [tiles * 16] padded with INT32_MAX.
  float* k_tiles = nullptr;
  float* v_rows = nullptr;
  const int32_t* k_pos_padded = nullptr;
  int64_t tiles = 0;
};

// Sizes the scratch for the call and fills *work; false (nothing touched) when FlashAttention
// would decline the call. n == 0 gives a work of no items.
bool PrepareFlashAttention(const float* q, const int32_t* q_pos, int64_t n, const float* k,
                           const float* v, const int32_t* k_pos, int64_t m,
                           const AttentionParams& p, float* out, FlashAttentionScratch* scratch,
                           FlashAttentionWork* work);
// Packs K/V tiles for the pack items [i0, i1).
void PackFlashKv(const FlashAttentionWork& work, int64_t i0, int64_t i1);
// Computes the output rows of tile item i; reads only packed tiles.
void RunFlashTile(const FlashAttentionWork& work, int64_t i);

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_CPU_FLASH_ATTENTION_H_
