// Position-free features of a prompt for the prompt-level index (DESIGN.md section 5): the set
// of its token ids and of the SimHash bucket keys of its un-rotated input embeddings. Neither
// depends on where a token sits, so a reordered or shifted passage yields the same set, and
// tokens whose embeddings are close (same bucket in some band) share features even when their
// ids differ, which lets paraphrases collide.
#ifndef SEMSHARE_CACHE_STORE_PROMPT_FEATURES_H_
#define SEMSHARE_CACHE_STORE_PROMPT_FEATURES_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "engine/reuse/reuse_config.h"
#include "engine/reuse/token_matcher.h"
#include "engine/weights.h"

namespace semshare::store {

// Feature encoding: a token id t is (t); the key k of band b is (1 << 63) | (b << 32) | k.
inline constexpr uint64_t kBucketFeatureTag = uint64_t{1} << 63;

// The matcher PromptFeatures needs: `config`'s LSH parameters with ecache_rope = false (the
// rotation would make codes depend on position). Borrows `embeddings` like any TokenMatcher.
std::unique_ptr<engine::TokenMatcher> MakeFeatureMatcher(const engine::Matrix& embeddings,
                                                         engine::ReuseConfig config);

// Sorted, unique features of `ids`. `matcher` must be built with ecache_rope = false (e.g. by
// MakeFeatureMatcher); its Sketch gives codes [n, bands]. Cost: one Sketch plus a sort of
// n * (bands + 1) values. Thread-safe (TokenMatcher::Sketch is const).
std::vector<uint64_t> PromptFeatures(std::span<const int32_t> ids,
                                     const engine::TokenMatcher& matcher);

}  // namespace semshare::store

#endif  // SEMSHARE_CACHE_STORE_PROMPT_FEATURES_H_
