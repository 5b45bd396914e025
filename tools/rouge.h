// ROUGE-L (Lin 2004) on token ids: the longest common subsequence of a candidate and a
// reference sequence, as precision (LCS / |candidate|), recall (LCS / |reference|) and F1.
// Used by `semshare bench --suite reuse` to compare each mode's greedy continuation with full
// prefill's. Token level on purpose: both sides come from the same tokenizer, so no text
// normalisation (stemming, casing) is involved. Written by hand: the classic O(n*m) dynamic
// programme with two rows is a dozen lines and no library we use offers it.
#ifndef SEMSHARE_TOOLS_ROUGE_H_
#define SEMSHARE_TOOLS_ROUGE_H_

#include <cstdint>
#include <span>

namespace semshare::tools {

struct RougeL {
  int64_t lcs = 0;
  double precision = 0;  // lcs / |candidate| (0 when the candidate is empty)
  double recall = 0;     // lcs / |reference| (0 when the reference is empty)
  double f1 = 0;         // harmonic mean; 0 when lcs is 0. Two empty sequences give 1.
};

// Length of the longest common subsequence. O(|a| * |b|) time, O(min) memory.
int64_t LcsLength(std::span<const int32_t> a, std::span<const int32_t> b);

RougeL RougeLScore(std::span<const int32_t> candidate, std::span<const int32_t> reference);

}  // namespace semshare::tools

#endif  // SEMSHARE_TOOLS_ROUGE_H_
