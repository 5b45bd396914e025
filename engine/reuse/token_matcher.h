// Token-level matching of a target prompt against a reference prompt (DESIGN.md 4.1-4.3):
// E-cache rows (input embeddings, RoPE-rotated over the embedding dimension at each token's
// position), SimHash codes banded into tables, per-token best candidate by cosine, and the
// prompt similarity. Cost O((n + m) * d * bits) for the codes plus O(n * candidates * d) for
// the cosines; vectorised.
#ifndef SEMSHARE_ENGINE_REUSE_TOKEN_MATCHER_H_
#define SEMSHARE_ENGINE_REUSE_TOKEN_MATCHER_H_

#include <cstdint>
#include <span>
#include <vector>

#include "engine/model/weights.h"
#include "engine/reuse/reuse_config.h"

namespace semshare::engine {

// E-cache of a prompt plus its LSH codes. Computable from token ids alone, so a reference
// stores only its ids (and, for speed, its codes).
struct TokenSketch {
  int64_t n = 0;                // tokens
  int64_t dim = 0;              // embedding dimension
  std::vector<float> ecache;    // [n, dim] rotated embeddings, each row L2-normalised
  std::vector<uint32_t> codes;  // [n, lsh_bands] bucket key of each token in each band
};

struct TokenMatch {
  std::vector<int32_t> ref_index;  // [n] matched reference token index, -1 if unmatched
  std::vector<float> cosine;       // [n] cosine of the matched pair (0 if unmatched)
  float similarity = 0.0f;         // mean of cosine over all n target tokens
  int64_t matched = 0;             // tokens with a match
};

class TokenMatcher {
 public:
  // Borrows the token-embedding table [vocab, dim]; it must outlive the matcher. The random
  // hyperplanes are drawn once from config.lsh_seed.
  TokenMatcher(const Matrix& embeddings, const ReuseConfig& config);

  TokenSketch Sketch(std::span<const int32_t> ids) const;
  TokenMatch Match(const TokenSketch& target, const TokenSketch& reference) const;

 private:
  const Matrix& embeddings_;
  ReuseConfig config_;
  std::vector<float> hyperplanes_;  // [lsh_bands * lsh_bits_per_band, dim]
  std::vector<float> inv_freq_;     // [dim / 2] E-cache RoPE frequencies
};

// Exact runs first: re-aligns `match` (of ids[n] against ref_ids[m]) so that every stretch of
// at least `min_run` tokens that the target shares verbatim with the reference maps onto one
// verbatim occurrence of it, token for token (ref_index[i + j] = r + j), instead of each token
// to whichever occurrence of its id the LSH preferred. A greedy left-to-right parse (as LZ77):
// at each position the occurrence with the longest common run wins (ties: the one closest to
// where the previous run would continue, else to the LSH's choice; of a stretch that occurs
// more than 64 times, the 64 occurrences nearest that point are compared, which bounds the
// parse at 64 * n token comparisons); shorter stretches keep the LSH's match. Why: a token's
// reference KV carries its reference context from layer 1 on; the same token id after other tokens
// is a different row (the bench's ablation measures ~5x the KV deviation for tokens whose previous
// token differs). Cosines are kept (the matched token is the same id); `matched` and `similarity`
// are recomputed. min_run <= 0: unchanged.
void AlignExactRuns(std::span<const int32_t> ids, std::span<const int32_t> ref_ids, int64_t min_run,
                    TokenMatch* match);

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_REUSE_TOKEN_MATCHER_H_
