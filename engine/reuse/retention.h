// KV retention (DESIGN.md 4.7): per-layer row budgets by a depth schedule, rows scored by the
// attention mass they receive from the last-window queries, protected rows never evicted, and
// compaction that keeps rows in ascending position order.
#ifndef SEMSHARE_ENGINE_REUSE_RETENTION_H_
#define SEMSHARE_ENGINE_REUSE_RETENTION_H_

#include <cstdint>
#include <vector>

#include "engine/backend.h"
#include "engine/kv_cache.h"
#include "engine/llama_forward.h"
#include "engine/reuse/reuse_config.h"

namespace semshare::engine {

// Rows layer l of an n-token prompt may keep: exponential max(b_min, ceil(n rho gamma^l)),
// constant max(b_min, ceil(n rho)), increasing max(b_min, ceil(n rho gamma^(L-1-l))), capped
// at n; n for kNone.
int64_t RetentionBudget(const ReuseConfig& config, int64_t n, int64_t layer, int64_t n_layers);

// Evicts the lowest-scoring unprotected rows of `kv` until it has at most `budget` rows (or
// only protected rows remain) and compacts it. Scores: attention mass from q_window [w, q_dim]
// at positions q_pos[w] over the layer's rows. protect is indexed by row position.
// Returns the rows evicted.
int64_t RetainRows(Backend& backend, const LlamaForward& forward, const float* q_window,
                   const int32_t* q_pos, int64_t w, int64_t budget,
                   const std::vector<uint8_t>& protect, LayerKv& kv);

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_REUSE_RETENTION_H_
