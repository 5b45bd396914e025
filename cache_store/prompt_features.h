// Position-free features of a prompt for the prompt-level index (DESIGN.md section 5): the set
// of its token ids. A set does not depend on where a token sits, so a reordered or shifted
// passage yields the same features, and paraphrases collide through the words they share.
//
// Why not also the SimHash bucket keys of the un-rotated embeddings (the first design: each
// distinct token added its 16 keys of 8 bits, tagged by band)? Those keys saturate: a 2,048-token
// prompt has ~950 distinct tokens and so covers most of the 16 x 256 possible keys, whatever it
// says. On 2k-token prompts of MRPC news sentences, two unrelated prompts then had a Jaccard
// similarity of 0.62 (paraphrased ones 0.82), 80% of all stored records collided with every
// query and a memory-tier lookup at 100,000 references took ~100 ms. With token ids alone the
// figures are 0.175 (unrelated) and 0.58 (paraphrased), and a query collides with ~0.2% of
// the records. Finer keys (pairs of bands as 16-bit keys) gave 0.23 / 0.61: more noise than
// signal, and 8x the features to hash; the recall on MRPC paraphrase groups was no better than
// with ids alone (lsh_index.h has the figures). The token matcher, not the index, is where
// embedding similarity counts: it ranks the candidates the index returns.
#ifndef SEMSHARE_CACHE_STORE_PROMPT_FEATURES_H_
#define SEMSHARE_CACHE_STORE_PROMPT_FEATURES_H_

#include <cstdint>
#include <span>
#include <vector>

namespace semshare::store {

// Sorted, unique features of `ids`: the non-negative token ids (a negative id is not a token
// and is skipped). Cost: a sort of n values (~20 us for 2,048 tokens). Thread-safe.
std::vector<uint64_t> PromptFeatures(std::span<const int32_t> ids);

}  // namespace semshare::store

#endif  // SEMSHARE_CACHE_STORE_PROMPT_FEATURES_H_
