// E-cache, SimHash codes and token matching (DESIGN.md 4.1-4.3).
//
// E-cache rotation: pairs are adjacent dimensions (2k, 2k+1) rotated by pos * base^(-2k/dim),
// the formula of the RoPE paper and of DESIGN.md 4.1. The E-cache never meets the model's
// attention, so the pairing only has to agree between target and reference (both come from
// Sketch); it is not the model's own RoPE convention. An odd last dimension is left unrotated.
// Angles are advanced by a double-precision rotation recurrence (re-seeded from exact sincos
// every kResync positions) instead of n * dim / 2 sincos calls, which would cost more than the
// rest of Sketch.
//
// Codes: one GEMM (OpenBLAS) projects the [n, dim] E-cache onto [planes, dim] Gaussian
// hyperplanes; bit j of band b is sign(plane[b * bits + j] . e_i). Cosine of two rows is the
// probability of agreeing on a bit through 1 - angle/pi, so a band collides with probability
// (1 - angle/pi)^bits and `bands` bands give the usual OR-of-ANDs LSH curve.
//
// Matching: per-band bucket tables of the reference (counting sort when 2^bits is small,
// sorted keys otherwise), candidates counted across bands with a dense per-reference counter,
// capped at max_candidates by band count, best by cosine. Ties in cosine go to the lower
// reference index (identical rows, as with ecache_rope = false, collapse onto the earliest
// occurrence, which is the attention-sink failure the rotation exists to avoid).
#include "engine/reuse/token_matcher.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <unordered_map>

#include "engine/cpu/fast_math.h"

namespace semshare::engine {
namespace {

constexpr int64_t kResync = 512;       // positions between exact sincos re-seeds
constexpr int kDirectBucketBits = 16;  // up to 2^16 buckets: counting sort; above: sorted keys

// Bucket table of one band: reference indices grouped by key.
struct BandTable {
  // Direct form (bits <= kDirectBucketBits): members of key k are idx[start[k] .. start[k+1]).
  std::vector<int32_t> start;
  // Sorted form: (key, index) pairs ordered by key; equal_range finds a bucket.
  std::vector<std::pair<uint32_t, int32_t>> sorted;
  std::vector<int32_t> idx;
};

}  // namespace

TokenMatcher::TokenMatcher(const Matrix& embeddings, const ReuseConfig& config)
    : embeddings_(embeddings), config_(config) {
  const int64_t dim = embeddings_.cols;
  const int64_t planes =
      static_cast<int64_t>(std::max(config_.lsh_bands, 0)) * std::max(config_.lsh_bits_per_band, 0);
  hyperplanes_.resize(static_cast<size_t>(planes * dim));
  std::mt19937_64 rng(config_.lsh_seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& x : hyperplanes_) x = normal(rng);
  inv_freq_.resize(static_cast<size_t>(dim / 2));
  for (int64_t k = 0; k < dim / 2; ++k) {
    inv_freq_[k] = static_cast<float>(std::pow(static_cast<double>(config_.ecache_rope_base),
                                               -2.0 * k / static_cast<double>(dim)));
  }
}

TokenSketch TokenMatcher::Sketch(std::span<const int32_t> ids) const {
  TokenSketch s;
  s.n = static_cast<int64_t>(ids.size());
  s.dim = embeddings_.cols;
  const int64_t n = s.n, dim = s.dim, half = dim / 2;
  const int bands = std::max(config_.lsh_bands, 0);
  const int bits = std::clamp(config_.lsh_bits_per_band, 0, 32);
  s.ecache.assign(static_cast<size_t>(n * dim), 0.0f);
  s.codes.assign(static_cast<size_t>(n * bands), 0u);
  if (n == 0 || dim == 0) return s;

  // cos/sin of pos * inv_freq[k] for the current position, and of one step.
  std::vector<double> c(half), sn(half), step_c(half), step_s(half);
  for (int64_t k = 0; k < half; ++k) {
    step_c[k] = std::cos(static_cast<double>(inv_freq_[k]));
    step_s[k] = std::sin(static_cast<double>(inv_freq_[k]));
  }
  for (int64_t i = 0; i < n; ++i) {
    float* e = s.ecache.data() + i * dim;
    // Out-of-range ids (bad input) leave a zero row: its cosine with anything is 0, unmatched.
    if (ids[i] < 0 || ids[i] >= embeddings_.rows) continue;
    DequantizeRows(embeddings_, ids[i], 1, e);  // one row, straight from the stored blocks
    if (config_.ecache_rope) {
      if (i % kResync == 0) {
        for (int64_t k = 0; k < half; ++k) {
          const double a = static_cast<double>(i) * static_cast<double>(inv_freq_[k]);
          c[k] = std::cos(a);
          sn[k] = std::sin(a);
        }
      }
      for (int64_t k = 0; k < half; ++k) {
        const double x0 = e[2 * k], x1 = e[2 * k + 1];
        e[2 * k] = static_cast<float>(x0 * c[k] - x1 * sn[k]);
        e[2 * k + 1] = static_cast<float>(x0 * sn[k] + x1 * c[k]);
      }
      for (int64_t k = 0; k < half; ++k) {  // advance to position i + 1
        const double nc = c[k] * step_c[k] - sn[k] * step_s[k];
        sn[k] = sn[k] * step_c[k] + c[k] * step_s[k];
        c[k] = nc;
      }
    }
    const float norm = std::sqrt(DotF(e, e, dim));
    if (norm > 0.0f) {
      const float inv = 1.0f / norm;
      for (int64_t j = 0; j < dim; ++j) e[j] *= inv;
    }
  }

  const int64_t planes = static_cast<int64_t>(bands) * bits;
  if (planes == 0) return s;
  // proj [n, planes] = ecache [n, dim] x hyperplanes [planes, dim]^T.
  std::vector<float> proj(static_cast<size_t>(n * planes));
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n),
              static_cast<int>(planes), static_cast<int>(dim), 1.0f, s.ecache.data(),
              static_cast<int>(dim), hyperplanes_.data(), static_cast<int>(dim), 0.0f, proj.data(),
              static_cast<int>(planes));
  for (int64_t i = 0; i < n; ++i) {
    const float* p = proj.data() + i * planes;
    for (int b = 0; b < bands; ++b) {
      uint32_t key = 0;
      for (int j = 0; j < bits; ++j) key |= static_cast<uint32_t>(p[b * bits + j] > 0.0f) << j;
      s.codes[i * bands + b] = key;
    }
  }
  return s;
}

TokenMatch TokenMatcher::Match(const TokenSketch& target, const TokenSketch& reference) const {
  TokenMatch out;
  const int64_t n = std::max<int64_t>(target.n, 0), m = std::max<int64_t>(reference.n, 0);
  out.ref_index.assign(static_cast<size_t>(n), -1);
  out.cosine.assign(static_cast<size_t>(n), 0.0f);
  const int bands = std::max(config_.lsh_bands, 0);
  const int bits = std::clamp(config_.lsh_bits_per_band, 0, 32);
  // Sketches from another matcher, model or config cannot be compared: everything unmatched.
  const auto consistent = [&](const TokenSketch& s) {
    return s.dim == embeddings_.cols &&
           s.ecache.size() == static_cast<size_t>(std::max<int64_t>(s.n, 0) * s.dim) &&
           s.codes.size() == static_cast<size_t>(std::max<int64_t>(s.n, 0) * bands);
  };
  if (n == 0 || m == 0 || bands == 0 || !consistent(target) || !consistent(reference)) {
    return out;
  }
  const int64_t dim = target.dim;

  // Per-band bucket tables of the reference.
  const bool direct = bits <= kDirectBucketBits;
  const size_t n_keys = direct ? (size_t{1} << bits) : 0;
  std::vector<BandTable> tables(bands);
  for (int b = 0; b < bands; ++b) {
    BandTable& t = tables[b];
    if (direct) {
      t.start.assign(n_keys + 1, 0);
      for (int64_t r = 0; r < m; ++r) ++t.start[reference.codes[r * bands + b] + 1];
      for (size_t k = 0; k < n_keys; ++k) t.start[k + 1] += t.start[k];
      t.idx.resize(static_cast<size_t>(m));
      std::vector<int32_t> fill(t.start.begin(), t.start.end() - 1);
      for (int64_t r = 0; r < m; ++r) {
        t.idx[fill[reference.codes[r * bands + b]]++] = static_cast<int32_t>(r);
      }
    } else {
      t.sorted.resize(static_cast<size_t>(m));
      for (int64_t r = 0; r < m; ++r) {
        t.sorted[r] = {reference.codes[r * bands + b], static_cast<int32_t>(r)};
      }
      std::sort(t.sorted.begin(), t.sorted.end());
    }
  }

  std::vector<uint8_t> hits(static_cast<size_t>(m), 0);  // bands hitting each reference token
  std::vector<int32_t> cand;
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    cand.clear();
    for (int b = 0; b < bands; ++b) {
      const uint32_t key = target.codes[i * bands + b];
      const auto add = [&](int32_t r) {
        if (hits[r]++ == 0) cand.push_back(r);
      };
      const BandTable& t = tables[b];
      if (direct) {
        for (int32_t p = t.start[key]; p < t.start[key + 1]; ++p) add(t.idx[p]);
      } else {
        auto it = std::lower_bound(t.sorted.begin(), t.sorted.end(),
                                   std::pair<uint32_t, int32_t>{key, INT32_MIN});
        for (; it != t.sorted.end() && it->first == key; ++it) add(it->second);
      }
    }
    const size_t cap =
        config_.max_candidates > 0 ? static_cast<size_t>(config_.max_candidates) : cand.size();
    if (cand.size() > cap) {
      // Most bands first (closest in angle, by the LSH curve), then the lower index.
      std::nth_element(cand.begin(), cand.begin() + cap, cand.end(), [&](int32_t a, int32_t b) {
        return hits[a] != hits[b] ? hits[a] > hits[b] : a < b;
      });
      for (size_t k = cap; k < cand.size(); ++k) hits[cand[k]] = 0;
      cand.resize(cap);
    }
    const float* e = target.ecache.data() + i * dim;
    float best = 0.0f;
    int32_t best_r = -1;
    for (int32_t r : cand) {
      hits[r] = 0;
      const float cs = DotF(e, reference.ecache.data() + r * dim, dim);
      if (cs > best || (cs == best && best_r >= 0 && r < best_r)) {
        best = cs;
        best_r = r;
      }
    }
    if (best_r >= 0) {  // best > 0 by construction: a cosine <= 0 never replaces best = 0
      out.ref_index[i] = best_r;
      out.cosine[i] = std::min(best, 1.0f);  // rounding can give 1 + ulp for equal rows
      total += out.cosine[i];
      ++out.matched;
    }
  }
  out.similarity = static_cast<float>(total / static_cast<double>(n));
  return out;
}

namespace {
constexpr int64_t kMaxRunCandidates = 64;  // occurrences of a gram AlignExactRuns compares
}  // namespace

void AlignExactRuns(std::span<const int32_t> ids, std::span<const int32_t> ref_ids, int64_t min_run,
                    TokenMatch* match) {
  const int64_t n = static_cast<int64_t>(ids.size()), m = static_cast<int64_t>(ref_ids.size());
  if (min_run <= 0 || n < min_run || m < min_run ||
      static_cast<int64_t>(match->ref_index.size()) != n) {
    return;
  }
  // Reference positions by the hash of the min_run tokens starting there.
  const auto gram = [min_run](const int32_t* t) {
    uint64_t h = 0x9e3779b97f4a7c15ull;
    for (int64_t j = 0; j < min_run; ++j) {
      h = (h ^ static_cast<uint32_t>(t[j])) * 0x100000001b3ull;
    }
    return h;
  };
  std::unordered_map<uint64_t, std::vector<int32_t>> starts;
  starts.reserve(static_cast<size_t>(m));
  for (int64_t r = 0; r + min_run <= m; ++r) {
    starts[gram(ref_ids.data() + r)].push_back(static_cast<int32_t>(r));
  }
  const auto common = [&](int64_t i, int64_t r) {
    int64_t l = 0;
    while (i + l < n && r + l < m && ids[i + l] == ref_ids[r + l]) ++l;
    return l;
  };
  int64_t expect = -1;  // where the previous run would continue in the reference
  for (int64_t i = 0; i + min_run <= n;) {
    const auto it = starts.find(gram(ids.data() + i));
    int64_t best_r = -1, best_len = 0, best_dist = 0;
    if (it != starts.end()) {
      const int64_t anchor = expect >= 0 ? expect : match->ref_index[i];
      // At most kMaxRunCandidates occurrences, the ones around the anchor (a gram repeated all
      // over the reference would otherwise cost O(m) comparisons of up to a run each per
      // start): every candidate's common run is at most the chosen one, which the parse then
      // skips, so the whole parse compares at most kMaxRunCandidates * n tokens.
      const std::vector<int32_t>& at = it->second;  // ascending
      const int64_t k = static_cast<int64_t>(at.size());
      const int64_t mid =
          std::lower_bound(at.begin(), at.end(), std::max<int64_t>(anchor, 0)) - at.begin();
      const int64_t lo = std::clamp<int64_t>(mid - kMaxRunCandidates / 2, 0,
                                             std::max<int64_t>(k - kMaxRunCandidates, 0));
      const int64_t hi = std::min(k, lo + kMaxRunCandidates);
      for (int64_t c = lo; c < hi; ++c) {
        const int64_t r = at[c];
        const int64_t len = common(i, r);
        const int64_t dist = anchor >= 0 ? std::abs(r - anchor) : r;
        if (len > best_len || (len == best_len && dist < best_dist)) {
          best_r = r;
          best_len = len;
          best_dist = dist;
        }
      }
    }
    if (best_len < min_run) {
      expect = -1;
      ++i;
      continue;
    }
    for (int64_t j = 0; j < best_len; ++j) {
      match->ref_index[i + j] = static_cast<int32_t>(best_r + j);
      if (match->cosine[i + j] <= 0.0f) match->cosine[i + j] = 1.0f;  // was unmatched
    }
    i += best_len;
    expect = best_r + best_len;
  }
  double total = 0;
  match->matched = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (match->ref_index[i] < 0) continue;
    ++match->matched;
    total += match->cosine[i];
  }
  match->similarity = static_cast<float>(total / static_cast<double>(n));
}

}  // namespace semshare::engine
