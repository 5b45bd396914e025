// Token-level LSH matching (engine/reuse/token_matcher.h) on the real default model's embedding
// table ($SEMSHARE_MODEL or the installed one) and real text (the paraphrase pairs shipped in
// data/paraphrase):
// identical prompts map every token to itself; reordered passages map tokens to the same ids at
// their moved positions; paraphrases score above unrelated text, which misses the default
// threshold; without E-cache rotation repeated tokens collapse onto their earliest occurrence;
// codes are a pure function of the seed; empty and single-token prompts are handled; exact runs
// first (AlignExactRuns) map shared stretches onto one occurrence each.
#include "engine/reuse/token_matcher.h"

#include <cblas.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "engine/model/model.h"
#include "tests/test_util.h"

namespace semshare::engine {
namespace {

using semshare::testing::MrpcPair;
using semshare::testing::ReadMrpc;

class TokenMatcherTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    error_ = new std::string;
    const std::string path = semshare::testing::DefaultModelPath();
    if (path.empty()) {
      *error_ = "no model path";
      return;
    }
    auto m = LoadModel(path);
    if (!m.ok()) {
      *error_ = path + ": " + m.status().ToString() + " (run scripts/setup or set SEMSHARE_MODEL)";
      return;
    }
    model_ = std::move(*m).release();
    pairs_ = new std::vector<MrpcPair>(ReadMrpc(error_));
    if (error_->empty() && pairs_->size() != semshare::testing::kCorpusPairs) {
      *error_ = "the paraphrase corpus has " + std::to_string(pairs_->size()) + " pairs, not " +
                std::to_string(semshare::testing::kCorpusPairs);
    }
  }
  static void TearDownTestSuite() {
    delete model_;
    delete pairs_;
    delete error_;
    model_ = nullptr;
    pairs_ = nullptr;
    error_ = nullptr;
  }
  void SetUp() override { ASSERT_TRUE(error_->empty()) << *error_; }

  static const Matrix& Embd() { return model_->weights.tok_embd; }
  static std::vector<int32_t> Encode(const std::string& text) {
    return model_->tokenizer->Encode(text, /*parse_special=*/false);
  }
  // Sentences of label-1 pairs [begin, begin + count): first or second sentences.
  static std::vector<std::string> Sentences(int label, size_t begin, size_t count, bool second) {
    std::vector<std::string> out;
    size_t seen = 0;
    for (const MrpcPair& p : *pairs_) {
      if (p.label != label) continue;
      if (seen++ < begin) continue;
      out.push_back(second ? p.second : p.first);
      if (out.size() == count) break;
    }
    EXPECT_EQ(out.size(), count) << "the corpus has too few label-" << label << " pairs";
    return out;
  }

  static Model* model_;
  static std::vector<MrpcPair>* pairs_;
  static std::string* error_;
};
Model* TokenMatcherTest::model_ = nullptr;
std::vector<MrpcPair>* TokenMatcherTest::pairs_ = nullptr;
std::string* TokenMatcherTest::error_ = nullptr;

// Exhaustive best cosine per target token (one GEMM), the ceiling any LSH candidate set can reach.
TokenMatch BruteForce(const TokenSketch& t, const TokenSketch& r) {
  TokenMatch out;
  out.ref_index.assign(t.n, -1);
  out.cosine.assign(t.n, 0.0f);
  std::vector<float> sim(static_cast<size_t>(t.n * r.n));
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t.n, r.n, t.dim, 1.0f, t.ecache.data(),
              t.dim, r.ecache.data(), t.dim, 0.0f, sim.data(), r.n);
  double total = 0;
  for (int64_t i = 0; i < t.n; ++i) {
    for (int64_t j = 0; j < r.n; ++j) {
      if (sim[i * r.n + j] > out.cosine[i]) {
        out.cosine[i] = sim[i * r.n + j];
        out.ref_index[i] = static_cast<int32_t>(j);
      }
    }
    total += out.cosine[i];
  }
  out.similarity = t.n > 0 ? static_cast<float>(total / t.n) : 0.0f;
  return out;
}

// A setting of the E-cache and LSH knobs that the tests below show to meet the issue's
// invariants that the defaults (base 1e4, 8 bands x 12 bits) miss on this model: reordered
// passages keep their token ids, paraphrases reach the default threshold while unrelated text
// does not. A larger base leaves more embedding pairs slowly rotating, so the same token far
// away still beats a different token nearby; 8-bit bands catch pairs at cosine ~0.8 that
// 12-bit bands miss. Proposed to the lead for ReuseConfig; the benchmark has the last word.
ReuseConfig ProposedConfig() {
  ReuseConfig c;
  c.ecache_rope_base = 1e16f;
  c.lsh_bands = 16;
  c.lsh_bits_per_band = 8;
  return c;
}

TEST_F(TokenMatcherTest, IdenticalPromptsMapEveryTokenToItself) {
  const auto ids = Encode(absl::StrJoin(Sentences(1, 0, 100, false), " "));
  ASSERT_GT(ids.size(), 2000u);
  for (const ReuseConfig& cfg : {ReuseConfig{}, ProposedConfig()}) {
    TokenMatcher tm(Embd(), cfg);
    const TokenSketch s = tm.Sketch(ids);
    const TokenMatch m = tm.Match(s, s);
    EXPECT_GT(m.similarity, 0.99f);
    EXPECT_EQ(m.matched, static_cast<int64_t>(ids.size()));
    // Rotation makes every other occurrence of a token differ from its own row (the pair with
    // theta 1 rad/token alone moves it), so self is the unique best.
    int64_t self = 0;
    for (size_t i = 0; i < ids.size(); ++i) self += m.ref_index[i] == static_cast<int32_t>(i);
    EXPECT_EQ(self, static_cast<int64_t>(ids.size()));
  }
  // Keys wider than the direct bucket table (the sorted-bucket path) behave the same.
  ReuseConfig wide;
  wide.lsh_bands = 3;
  wide.lsh_bits_per_band = 20;
  TokenMatcher tm(Embd(), wide);
  const TokenSketch s = tm.Sketch(ids);
  const TokenMatch m = tm.Match(s, s);
  for (size_t i = 0; i < ids.size(); ++i) ASSERT_EQ(m.ref_index[i], static_cast<int32_t>(i)) << i;
}

TEST_F(TokenMatcherTest, EcacheRowsAreRotatedNormalisedEmbeddings) {
  std::vector<int32_t> ids(5000);
  std::mt19937 rng(3);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(Embd().rows) - 1);
  for (int32_t& id : ids) id = tok(rng);
  for (bool rope : {true, false}) {
    ReuseConfig cfg;
    cfg.ecache_rope = rope;
    TokenMatcher tm(Embd(), cfg);
    const TokenSketch s = tm.Sketch(ids);
    ASSERT_EQ(s.n, 5000);
    ASSERT_EQ(s.dim, Embd().cols);
    ASSERT_EQ(s.codes.size(), 5000u * cfg.lsh_bands);
    const int64_t d = s.dim;
    for (int64_t pos : {0, 1, 2, 511, 512, 513, 1024, 3001, 4999}) {
      // Expected row in double from the definition; frequencies rounded to float as the
      // matcher stores them (at position 5000 a double frequency would shift angles by ~3e-4).
      std::vector<float> row(static_cast<size_t>(d));
      DequantizeRows(Embd(), ids[pos], 1, row.data());  // the table stays in its GGUF blocks
      std::vector<double> e(row.begin(), row.end());
      if (rope) {
        for (int64_t k = 0; k < d / 2; ++k) {
          const float f = static_cast<float>(std::pow(static_cast<double>(cfg.ecache_rope_base),
                                                      -2.0 * k / static_cast<double>(d)));
          const double a = static_cast<double>(pos) * f, x0 = e[2 * k], x1 = e[2 * k + 1];
          e[2 * k] = x0 * std::cos(a) - x1 * std::sin(a);
          e[2 * k + 1] = x0 * std::sin(a) + x1 * std::cos(a);
        }
      }
      double norm = 0;
      for (double x : e) norm += x * x;
      norm = std::sqrt(norm);
      double worst = 0;
      for (int64_t j = 0; j < d; ++j) {
        worst = std::max(worst, std::abs(e[j] / norm - s.ecache[pos * d + j]));
      }
      // Components of a unit vector in float: rounding ~6e-8, plus the angle recurrence's drift
      // over < 512 steps (~1e-13) and float pow differences; 1e-5 leaves room, yet a wrong pair
      // or position (errors of order 1e-2) fails.
      EXPECT_LT(worst, 1e-5) << "rope " << rope << " pos " << pos;
    }
  }
}

TEST_F(TokenMatcherTest, ReorderedPassagesMapToTheSameTokensAtTheirMovedPositions) {
  // 20 passages of 5 sentences, each tokenized alone (ending "\n\n" so that its tokens do not
  // depend on its neighbour), and the same passages shuffled.
  const auto sents = Sentences(1, 0, 100, false);
  std::vector<std::vector<int32_t>> passages;
  for (size_t p = 0; p < 20; ++p) {
    std::vector<std::string> s(sents.begin() + p * 5, sents.begin() + p * 5 + 5);
    passages.push_back(Encode(absl::StrJoin(s, " ") + "\n\n"));
  }
  std::vector<int32_t> ref, target, moved;  // moved[i]: reference position of target token i
  std::vector<int32_t> start;
  for (const auto& p : passages) {
    start.push_back(static_cast<int32_t>(ref.size()));
    ref.insert(ref.end(), p.begin(), p.end());
  }
  std::vector<int> order(20);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(7));
  for (int p : order) {
    for (size_t o = 0; o < passages[p].size(); ++o) {
      target.push_back(passages[p][o]);
      moved.push_back(start[p] + static_cast<int32_t>(o));
    }
  }
  std::map<int32_t, int> count;
  for (int32_t id : ref) ++count[id];

  TokenMatcher tm(Embd(), ProposedConfig());
  const TokenMatch m = tm.Match(tm.Sketch(target), tm.Sketch(ref));
  int64_t same_id = 0, unique = 0, unique_moved = 0;
  for (size_t i = 0; i < target.size(); ++i) {
    same_id += m.ref_index[i] >= 0 && ref[m.ref_index[i]] == target[i];
    if (count[target[i]] == 1) {
      ++unique;
      unique_moved += m.ref_index[i] == moved[i];
    }
  }
  const double n = static_cast<double>(target.size());
  // Seen: 0.91 of tokens keep their id (the exhaustive ceiling is 0.999; LSH misses some pairs
  // whose cosine is only ~0.6 after a move of ~2k positions). 0.85 leaves room for the seed.
  EXPECT_GE(same_id / n, 0.85) << same_id << " of " << n;
  // A token whose id occurs once in the reference has one right answer: its moved position.
  // Repeated ids (",", "the") go to the nearest occurrence instead, which a token-level
  // method cannot tell apart; they are not counted here.
  ASSERT_GT(unique, 300);
  // Seen 0.775 (722 of 932): these are the rarer content words, and a move of ~1-2k positions
  // leaves their rows at cosine ~0.6-0.7, where 8-bit bands collide in only some bands.
  EXPECT_GE(unique_moved / static_cast<double>(unique), 0.7) << unique_moved << " of " << unique;
  EXPECT_GE(m.similarity, 0.8f);

  // Exact runs first (ReuseConfig::exact_run_tokens' default): each passage is a run shared
  // verbatim with the reference, so every token, repeated ids included, goes to its moved
  // position.
  // A run may also go on into the next passage's first tokens where that passage starts like
  // the reference's next one (the same ids after the same context): rows as right, not moved.
  TokenMatch aligned = m;
  AlignExactRuns(target, ref, ReuseConfig{}.exact_run_tokens, &aligned);
  int64_t aligned_same = 0, aligned_moved = 0;
  for (size_t i = 0; i < target.size(); ++i) {
    aligned_same += ref[aligned.ref_index[i]] == target[i];
    aligned_moved += aligned.ref_index[i] == moved[i];
  }
  EXPECT_EQ(aligned_same, static_cast<int64_t>(target.size()));
  EXPECT_GE(aligned_moved / n, 0.99) << aligned_moved << " of " << n;  // seen: all but 1
  EXPECT_EQ(aligned.matched, static_cast<int64_t>(target.size()));
}

TEST(AlignExactRunsTest, SharedStretchesMapOntoOneOccurrenceTokenForToken) {
  // Two reference sentences share "11 12 13" in other contexts; the target has the second
  // sentence then the first. The LSH-like match sends every repeated id to its first occurrence.
  const std::vector<int32_t> ref = {10, 11, 12, 13, 14, 20, 11, 12, 13, 21};
  const std::vector<int32_t> target = {20, 11, 12, 13, 21, 10, 11, 12, 13, 14, 99};
  TokenMatch m;
  m.ref_index = {5, 1, 2, 3, 9, 0, 1, 2, 3, 4, -1};
  m.cosine = {0.9f, 0.8f, 0.8f, 0.8f, 0.9f, 0.9f, 0.9f, 0.9f, 0.9f, 0.9f, 0.0f};
  TokenMatch a = m;
  AlignExactRuns(target, ref, 4, &a);
  EXPECT_EQ(a.ref_index, (std::vector<int32_t>{5, 6, 7, 8, 9, 0, 1, 2, 3, 4, -1}));
  EXPECT_EQ(a.cosine, m.cosine);  // the same ids: the cosines are kept
  EXPECT_EQ(a.matched, 10);
  EXPECT_NEAR(a.similarity, 8.7f / 11.0f, 1e-6f);

  // Stretches shorter than min_run keep the LSH's match; 0 and a match of another length
  // change nothing.
  for (int64_t min_run : {6, 0, -1}) {
    TokenMatch b = m;
    AlignExactRuns(target, ref, min_run, &b);
    EXPECT_EQ(b.ref_index, m.ref_index) << "min_run " << min_run;
    EXPECT_EQ(b.cosine, m.cosine) << "min_run " << min_run;
  }
  TokenMatch shorter = m;
  shorter.ref_index.pop_back();
  shorter.cosine.pop_back();
  const TokenMatch before = shorter;
  AlignExactRuns(target, ref, 4, &shorter);
  EXPECT_EQ(shorter.ref_index, before.ref_index);

  // The longest shared stretch wins; among equally long ones, the LSH's choice (or where the
  // previous run goes on); an unmatched token inside a run is matched (cosine 1).
  const std::vector<int32_t> ref2 = {1, 2, 3, 4, 9, 1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 4, 5, 6, 8};
  const std::vector<int32_t> t2 = {1, 2, 3, 4, 5, 6, 7};
  TokenMatch m2;
  m2.ref_index = {12, 13, 14, 15, -1, 17, 18};
  m2.cosine = {1, 1, 1, 1, 0, 1, 0.5f};
  AlignExactRuns(t2, ref2, 4, &m2);
  EXPECT_EQ(m2.ref_index, (std::vector<int32_t>{5, 6, 7, 8, 9, 10, 11}));  // 7 beats 6 (at 12)
  EXPECT_EQ(m2.cosine[4], 1.0f);
  EXPECT_EQ(m2.matched, 7);
  const std::vector<int32_t> t3 = {1, 2, 3, 4, 5, 6};
  TokenMatch m3;
  m3.ref_index = {12, 13, 14, 15, 16, 17};
  m3.cosine.assign(6, 1.0f);
  AlignExactRuns(t3, ref2, 4, &m3);  // at 5 and at 12 equally long: the LSH chose 12
  EXPECT_EQ(m3.ref_index, (std::vector<int32_t>{12, 13, 14, 15, 16, 17}));
  m3.ref_index = {5, 13, 14, 15, 16, 17};
  AlignExactRuns(t3, ref2, 4, &m3);  // its first token chose 5
  EXPECT_EQ(m3.ref_index, (std::vector<int32_t>{5, 6, 7, 8, 9, 10}));

  // A stretch repeated all over the reference (4,000 rows of one 4-token pattern, every row a
  // candidate of every gram): 64 occurrences are compared per run start, and the runs still
  // cover the prompt with their own ids, each from one stretch.
  std::vector<int32_t> rep_ref, rep_ids;
  for (int i = 0; i < 1000; ++i) rep_ref.insert(rep_ref.end(), {1, 2, 3, 4});
  for (int i = 0; i < 700; ++i) rep_ids.insert(rep_ids.end(), {1, 2, 3, 4});
  rep_ids.push_back(9);
  for (int i = 0; i < 300; ++i) rep_ids.insert(rep_ids.end(), {1, 2, 3, 4});
  TokenMatch rm;
  rm.ref_index.assign(rep_ids.size(), -1);
  rm.cosine.assign(rep_ids.size(), 0.0f);
  AlignExactRuns(rep_ids, rep_ref, 4, &rm);
  EXPECT_EQ(rm.matched, static_cast<int64_t>(rep_ids.size()) - 1);
  EXPECT_EQ(rm.ref_index[2800], -1);  // 9: not in the reference
  for (size_t i = 0; i < rep_ids.size(); ++i) {
    if (rep_ids[i] == 9) continue;
    ASSERT_EQ(rep_ref[rm.ref_index[i]], rep_ids[i]) << i;
    if (i > 0 && i != 2801) ASSERT_EQ(rm.ref_index[i], rm.ref_index[i - 1] + 1) << i;
  }
}

TEST_F(TokenMatcherTest, ParaphrasesScoreAboveUnrelatedTextWhichMisses) {
  const auto first = Sentences(1, 0, 100, false), second = Sentences(1, 0, 100, true);
  const auto ref = Encode(absl::StrJoin(first, " "));
  const auto para = Encode(absl::StrJoin(second, " "));
  std::vector<std::string> mixed;  // every other sentence paraphrased: a similar prompt
  for (size_t i = 0; i < first.size(); ++i) mixed.push_back(i % 2 ? second[i] : first[i]);
  const auto half = Encode(absl::StrJoin(mixed, " "));
  const auto unrelated = Encode(absl::StrJoin(Sentences(1, 400, 100, false), " "));
  for (const ReuseConfig& cfg : {ReuseConfig{}, ProposedConfig()}) {
    TokenMatcher tm(Embd(), cfg);
    const TokenSketch r = tm.Sketch(ref);
    const float p = tm.Match(tm.Sketch(para), r).similarity;
    const float h = tm.Match(tm.Sketch(half), r).similarity;
    const float u = tm.Match(tm.Sketch(unrelated), r).similarity;
    std::printf("base %g: paraphrase %.3f, half paraphrased %.3f, unrelated %.3f\n",
                cfg.ecache_rope_base, p, h, u);
    // Unrelated English shares the function words, so its score is far from 0; with the
    // defaults nothing hits (full-speed rotation of all 576 dims makes a token ~30 positions
    // away look different).
    EXPECT_GT(h, p) << "base " << cfg.ecache_rope_base;
    EXPECT_GT(p, u + 0.02f) << "base " << cfg.ecache_rope_base;
    EXPECT_LT(u, cfg.hit_threshold) << "base " << cfg.ecache_rope_base;
  }
  // Proposed: a half-paraphrased passage hits, unrelated text misses (checked above) and a fully
  // reworded one lands between (0.777 here; MRPC's near-verbatim paraphrases reached 0.810).
  TokenMatcher tm(Embd(), ProposedConfig());
  const TokenSketch r = tm.Sketch(ref);
  EXPECT_GE(tm.Match(tm.Sketch(half), r).similarity, ProposedConfig().hit_threshold);
  EXPECT_GT(tm.Match(tm.Sketch(para), r).similarity,
            tm.Match(tm.Sketch(unrelated), r).similarity + 0.03f);
}

TEST_F(TokenMatcherTest, WithoutRotationRepeatedTokensCollapseOntoTheEarliestOccurrence) {
  const auto ref = Encode(absl::StrJoin(Sentences(1, 0, 100, false), " "));
  const auto target = Encode(absl::StrJoin(Sentences(1, 0, 100, true), " "));
  std::map<int32_t, std::vector<int32_t>> occ;  // reference positions of each id
  for (size_t j = 0; j < ref.size(); ++j) occ[ref[j]].push_back(static_cast<int32_t>(j));
  struct Stats {
    int64_t tokens = 0, earliest = 0;
    double mean_shift = 0;
  };
  // Over target tokens whose id occurs >= 10 times in the reference ("the", ",", "of", ...).
  const auto measure = [&](bool rope) {
    ReuseConfig cfg;
    cfg.ecache_rope = rope;
    TokenMatcher tm(Embd(), cfg);
    const TokenMatch m = tm.Match(tm.Sketch(target), tm.Sketch(ref));
    Stats s;
    for (size_t i = 0; i < target.size(); ++i) {
      auto it = occ.find(target[i]);
      if (it == occ.end() || it->second.size() < 10) continue;
      ++s.tokens;
      const int32_t r = m.ref_index[i];
      s.earliest += r == it->second.front();
      // Unmatched counts as a jump to position 0, the collapse this test is about.
      s.mean_shift += std::abs(static_cast<double>(i) - std::max(r, 0));
    }
    s.mean_shift /= static_cast<double>(s.tokens);
    return s;
  };
  const Stats off = measure(false), on = measure(true);
  ASSERT_GT(off.tokens, 500);
  // Off: all occurrences have identical rows, ties go to the lowest index, so every one lands
  // on the earliest (seen: 1.000, mean shift 1224 tokens in a 2.6k-token prompt).
  EXPECT_GE(off.earliest, off.tokens * 99 / 100);
  // On: seen 0.006 to the earliest and a mean shift of 299 (0.24x). Half is the bound: the
  // paraphrase's positions drift from the reference's, so a shift of 0 is not expected.
  EXPECT_LE(on.earliest, on.tokens / 10);
  EXPECT_LT(on.mean_shift, 0.5 * off.mean_shift) << on.mean_shift << " vs " << off.mean_shift;
}

TEST_F(TokenMatcherTest, LshNeverBeatsExhaustiveSearchAndMoreCandidatesNeverHurt) {
  const auto ref = Encode(absl::StrJoin(Sentences(1, 0, 60, false), " "));
  const auto target = Encode(absl::StrJoin(Sentences(1, 0, 60, true), " "));
  ReuseConfig capped;
  capped.max_candidates = 4;
  ReuseConfig all = capped;
  all.max_candidates = 0;
  TokenMatcher tc(Embd(), capped), ta(Embd(), all);
  const TokenSketch t = tc.Sketch(target), r = tc.Sketch(ref);
  const TokenMatch mc = tc.Match(t, r), ma = ta.Match(t, r), best = BruteForce(t, r);
  int64_t improved = 0;
  for (int64_t i = 0; i < t.n; ++i) {
    // Cosines are dot products of the same float rows; 1e-5 covers the different summation
    // order of the GEMM in BruteForce.
    ASSERT_LE(ma.cosine[i], best.cosine[i] + 1e-5f) << i;
    ASSERT_GE(ma.cosine[i], mc.cosine[i]) << i;  // same buckets, a superset of candidates
    if (ma.ref_index[i] >= 0) {
      const float dot =
          std::inner_product(t.ecache.begin() + i * t.dim, t.ecache.begin() + (i + 1) * t.dim,
                             r.ecache.begin() + ma.ref_index[i] * r.dim, 0.0f);
      ASSERT_NEAR(ma.cosine[i], dot, 1e-5f) << i;
    }
    improved += ma.cosine[i] > mc.cosine[i];
  }
  EXPECT_GT(improved, 0) << "a cap of 4 should lose some best candidates, or the cap is unused";
  EXPECT_GE(ma.similarity, mc.similarity);
}

TEST_F(TokenMatcherTest, CodesArePureFunctionsOfTheSeed) {
  const auto ids = Encode(absl::StrJoin(Sentences(1, 0, 20, false), " "));
  ReuseConfig a;
  ReuseConfig b = a;
  b.lsh_seed = a.lsh_seed + 1;
  const TokenSketch s1 = TokenMatcher(Embd(), a).Sketch(ids);
  const TokenSketch s2 = TokenMatcher(Embd(), a).Sketch(ids);
  const TokenSketch s3 = TokenMatcher(Embd(), b).Sketch(ids);
  EXPECT_EQ(s1.codes, s2.codes);
  EXPECT_EQ(s1.ecache, s2.ecache);
  EXPECT_EQ(s1.ecache, s3.ecache);  // the seed only draws hyperplanes
  ASSERT_EQ(s1.codes.size(), s3.codes.size());
  size_t differ = 0;
  for (size_t k = 0; k < s1.codes.size(); ++k) differ += s1.codes[k] != s3.codes[k];
  // Independent 12-bit keys agree with probability ~2^-12 per band for unrelated planes.
  EXPECT_GE(differ, s1.codes.size() * 9 / 10);
}

TEST_F(TokenMatcherTest, EmptySingleAndInvalidInputs) {
  TokenMatcher tm(Embd(), ReuseConfig{});
  const std::vector<int32_t> none;
  const auto some = Encode("The quick brown fox jumps over the lazy dog.");
  const TokenSketch empty = tm.Sketch(none), s = tm.Sketch(some);
  EXPECT_EQ(empty.n, 0);
  EXPECT_TRUE(empty.ecache.empty());
  TokenMatch m = tm.Match(empty, s);
  EXPECT_EQ(m.similarity, 0.0f);
  EXPECT_TRUE(m.ref_index.empty());
  m = tm.Match(s, empty);
  EXPECT_EQ(m.similarity, 0.0f);
  EXPECT_EQ(m.matched, 0);
  EXPECT_EQ(m.ref_index, std::vector<int32_t>(some.size(), -1));
  EXPECT_EQ(tm.Match(empty, empty).similarity, 0.0f);

  const std::vector<int32_t> one = {some[1]};
  const TokenSketch s1 = tm.Sketch(one);
  m = tm.Match(s1, s1);
  ASSERT_EQ(m.ref_index.size(), 1u);
  EXPECT_EQ(m.ref_index[0], 0);
  EXPECT_GT(m.similarity, 0.99f);
  m = tm.Match(s1, s);  // a one-token target finds its id (position 0 vs 1: cosine < 1)
  ASSERT_EQ(m.ref_index.size(), 1u);
  EXPECT_EQ(m.ref_index[0], 1);

  // Out-of-range ids give zero rows: unmatched, never a crash.
  const std::vector<int32_t> bad = {some[0], -1, static_cast<int32_t>(Embd().rows)};
  m = tm.Match(tm.Sketch(bad), s);
  EXPECT_EQ(m.ref_index, (std::vector<int32_t>{0, -1, -1}));
  // Sketches that do not fit this matcher (another dimension, truncated codes): all unmatched.
  TokenSketch broken = s;
  broken.codes.pop_back();
  m = tm.Match(s, broken);
  EXPECT_EQ(m.matched, 0);
  EXPECT_EQ(m.ref_index, std::vector<int32_t>(some.size(), -1));
}

}  // namespace
}  // namespace semshare::engine
