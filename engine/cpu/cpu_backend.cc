#include "engine/cpu/cpu_backend.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "engine/cpu/fast_math.h"
#include "engine/cpu/gemm.h"
#include "engine/cpu/thread_pool.h"
#include "engine/cpu/tile_matmul.h"

namespace semshare::engine {
namespace {

// Query tokens per attention block (times the GQA group in rows): large enough that each
// sgemm keeps both cores busy, small enough that the causal waste inside a block (about half a
// block of masked keys per query) and the [rows, m] score matrix stay small.
constexpr int64_t kAttnBlock = 128;

// Below this many queries (decode, short chunks) the fused kernel's per-call K/V packing costs
// about as much as the attention itself, and the GEMM path is as fast or faster.
constexpr int64_t kFlashMinQueries = 16;

// Up to this many queries (decode steps, a few sequences) attention runs as plain dot products
// per (query, head): an sgemm would pack all m keys and values on every call, which for one
// query costs more than the product.
constexpr int64_t kDirectMaxQueries = 4;

// One row of RmsNorm: y[d] = x / rms(x) * gamma (y may alias x).
inline void RmsNormRow(const float* x, const float* gamma, int64_t d, float eps, float* y) {
  float ss = 0.0f;
  for (int64_t j = 0; j < d; ++j) ss += x[j] * x[j];
  const float inv = 1.0f / std::sqrt(ss / static_cast<float>(d) + eps);
  for (int64_t j = 0; j < d; ++j) y[j] = x[j] * inv * gamma[j];
}

// RoPE's cos and sin of every pair at one position, cs[half], sn[half]. The angle in double:
// pos * inv_freq reaches thousands of radians, where float rounding alone would move cos/sin by
// ~1e-4.
inline void RopeAngles(int32_t pos, const RopeParams& rope, int64_t half, float* cs, float* sn) {
  for (int64_t k = 0; k < half; ++k) {
    const double a = static_cast<double>(pos) * static_cast<double>(rope.inv_freq[k]);
    cs[k] = static_cast<float>(std::cos(a));
    sn[k] = static_cast<float>(std::sin(a));
  }
}

// Rotates the heads of one token, x[heads, head_dim], by the angles of RopeAngles.
inline void RopeToken(float* x, int64_t heads, int64_t head_dim, RopeStyle style, int64_t half,
                      const float* cs, const float* sn) {
  for (int64_t h = 0; h < heads; ++h) {
    float* v = x + h * head_dim;
    if (style == RopeStyle::kAdjacent) {
      for (int64_t k = 0; k < half; ++k) {
        const float a = v[2 * k], b = v[2 * k + 1];
        v[2 * k] = a * cs[k] - b * sn[k];
        v[2 * k + 1] = a * sn[k] + b * cs[k];
      }
    } else {
      for (int64_t k = 0; k < half; ++k) {
        const float a = v[k], b = v[k + half];
        v[k] = a * cs[k] - b * sn[k];
        v[k + half] = a * sn[k] + b * cs[k];
      }
    }
  }
}

// Query heads per call of the decode kernel (a GQA group is at most this; larger groups are
// split).
constexpr int64_t kMaxDecodeHeads = 16;

// The calling thread's score buffer for the decode kernel, at least m floats.
float* DecodeScores(int64_t m) {
  thread_local std::vector<float> scores;
  if (static_cast<int64_t>(scores.size()) < std::max<int64_t>(m, 1)) {
    scores.resize(static_cast<size_t>(std::max<int64_t>(m, 1)));
  }
  return scores.data();
}

// The decode attention kernel, on the calling thread: one query row's heads h0 .. h0+nh-1, which
// share kv head g (qh: their nh x head_dim query values, contiguous), at position qp over k, v
// [m, n_kv_heads, head_dim] (positions k_pos, ascending), into o[nh x head_dim]. Three passes
// over the visible rows [lo, hi), reading K and V in place: scores = Q K^T for the nh heads at
// once (each key row is loaded once for all of them), exp against each head's max, then
// o = E V / sum. s: scratch of at least nh * m floats. Each head's result is the same whatever
// nh (the products keep every head's own summation order), so DirectAttention (one head at a
// time) and AttentionVarlen (a GQA group at a time) give the same bits. The small products are
// tile_matmul.h's; without them (no AVX2, or head_dim not a multiple of 16) single-threaded
// sgemv.
void DecodeRowHeads(const float* qh, int64_t nh, int32_t qp, const float* k, const float* v,
                    const int32_t* k_pos, int64_t m, const AttentionParams& p, int64_t g, float* s,
                    float* o) {
  const int64_t hd = p.head_dim, kv_stride = p.n_kv_heads * hd;
  // Visible rows [lo, hi): k_pos ascends, so k_pos <= q_pos is a prefix and the window cuts a
  // prefix of that.
  const int64_t hi = std::upper_bound(k_pos, k_pos + m, qp) - k_pos;
  const int64_t lo =
      p.window > 0
          ? std::lower_bound(k_pos, k_pos + hi, static_cast<int64_t>(qp) - p.window + 1) - k_pos
          : 0;
  if (hi <= lo) {
    std::fill(o, o + nh * hd, 0.0f);
    return;
  }
  const int64_t mm = hi - lo;
  const float* kg = k + lo * kv_stride + g * hd;
  const float* vg = v + lo * kv_stride + g * hd;
  if (!HasSmallGemm(hd)) {
    for (int64_t r = 0; r < nh; ++r) {
      GemmOnThisThread(GemmB::kTransposed, 1, mm, hd, p.scale, qh + r * hd, hd, kg, kv_stride, 0.0f,
                       s, mm);
      float mx = s[0];
      for (int64_t j = 1; j < mm; ++j) mx = std::max(mx, s[j]);
      for (int64_t j = 0; j < mm; ++j) s[j] = FastExp(s[j] - mx);
      const float inv = 1.0f / SumF(s, mm);
      GemmOnThisThread(GemmB::kPlain, 1, hd, mm, inv, s, mm, vg, kv_stride, 0.0f, o + r * hd, hd);
    }
    return;
  }
  SmallGemmABt(qh, hd, nh, kg, kv_stride, mm, hd, s, mm);
  float inv[kMaxDecodeHeads];
  for (int64_t r = 0; r < nh; ++r) {
    float* row = s + r * mm;
    float mx = row[0];
    for (int64_t j = 1; j < mm; ++j) mx = std::max(mx, row[j]);
    const float scale = p.scale;
    for (int64_t j = 0; j < mm; ++j) row[j] = FastExp(scale * (row[j] - mx));
    inv[r] = 1.0f / SumF(row, mm);
  }
  SmallGemmAB(s, mm, nh, vg, kv_stride, mm, hd, o, hd);
  for (int64_t r = 0; r < nh; ++r) {
    for (int64_t e = 0; e < hd; ++e) o[r * hd + e] *= inv[r];
  }
}

inline void CpuRelax() {
#if defined(__x86_64__)
  _mm_pause();
#endif
}

}  // namespace

void CpuBackend::MatMul(const float* x, int64_t n, const Matrix& w, const Matrix& bias, float* y) {
  if (n == 0) return;
  if (w.quantized()) {
    BlockMatMul(x, n, w, y, precision_);
  } else {
    Gemm(GemmB::kTransposed, n, w.rows, w.cols, 1.0f, x, w.cols, w.data.data(), w.cols, 0.0f, y,
         w.rows);
  }
  if (!bias.empty()) {
    const float* b = bias.data.data();
    ThreadPool::Default().ParallelFor(n, 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        float* row = y + i * w.rows;
        for (int64_t j = 0; j < w.rows; ++j) row[j] += b[j];
      }
    });
  }
}

void CpuBackend::RmsNorm(const float* x, const float* gamma, int64_t n, int64_t d, float eps,
                         float* y) {
  ThreadPool::Default().ParallelFor(n, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) RmsNormRow(x + i * d, gamma, d, eps, y + i * d);
  });
}

void CpuBackend::AddRmsNorm(float* x, const float* y, const float* gamma, int64_t n, int64_t d,
                            float eps, float* out) {
  // Row by row: the row's add completes before its norm writes out, so y may alias out.
  ThreadPool::Default().ParallelFor(n, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      float* xi = x + i * d;
      const float* yi = y + i * d;
      for (int64_t j = 0; j < d; ++j) xi[j] += yi[j];
      RmsNormRow(xi, gamma, d, eps, out + i * d);
    }
  });
}

void CpuBackend::Rope(float* x, const int32_t* pos, int64_t n, int64_t heads, int64_t head_dim,
                      const RopeParams& rope) {
  const int64_t half = rope.rope_dim / 2;
  ThreadPool::Default().ParallelFor(n, 4, [&](int64_t i0, int64_t i1) {
    float cs[512], sn[512];  // half <= 512 (head_dim <= 1024), checked by ModelConfig users
    for (int64_t i = i0; i < i1; ++i) {
      RopeAngles(pos[i], rope, half, cs, sn);
      RopeToken(x + i * heads * head_dim, heads, head_dim, rope.style, half, cs, sn);
    }
  });
}

void CpuBackend::RopeQk(float* q, int64_t q_heads, float* k, int64_t k_heads, const int32_t* pos,
                        int64_t n, int64_t head_dim, const RopeParams& rope) {
  const int64_t half = rope.rope_dim / 2;
  // One dispatch and one angle computation per token for both tensors.
  ThreadPool::Default().ParallelFor(n, 4, [&](int64_t i0, int64_t i1) {
    float cs[512], sn[512];  // as in Rope
    for (int64_t i = i0; i < i1; ++i) {
      RopeAngles(pos[i], rope, half, cs, sn);
      RopeToken(q + i * q_heads * head_dim, q_heads, head_dim, rope.style, half, cs, sn);
      RopeToken(k + i * k_heads * head_dim, k_heads, head_dim, rope.style, half, cs, sn);
    }
  });
}

void CpuBackend::Attention(const float* q, const int32_t* q_pos, int64_t n, const float* k,
                           const float* v, const int32_t* k_pos, int64_t m,
                           const AttentionParams& p, float* out) {
  // The fused kernel is 1.5x faster on prefill-sized calls (no score matrix, no sgemm on
  // attention's awkward shapes); it declines shapes and builds it does not support.
  if (flash_scratch_.empty()) flash_scratch_.resize(1);
  if (n >= kFlashMinQueries &&
      FlashAttention(q, q_pos, n, k, v, k_pos, m, p, out, &flash_scratch_[0])) {
    return;
  }
  if (n <= kDirectMaxQueries) {
    DirectAttention(q, q_pos, n, k, v, k_pos, m, p, out);
    return;
  }
  const int64_t hd = p.head_dim;
  const int64_t q_stride = p.n_heads * hd;      // between tokens in q and out
  const int64_t kv_stride = p.n_kv_heads * hd;  // between rows in k and v
  const int64_t group = p.n_heads / p.n_kv_heads;
  for (int64_t i0 = 0; i0 < n; i0 += kAttnBlock) {
    const int64_t nb = std::min(kAttnBlock, n - i0);
    int32_t pmin = q_pos[i0], pmax = q_pos[i0];
    for (int64_t i = i0; i < i0 + nb; ++i) {
      pmin = std::min(pmin, q_pos[i]);
      pmax = std::max(pmax, q_pos[i]);
    }
    // Visible kv rows of this block: [j0, j1) (k_pos ascending).
    const int64_t j1 = std::upper_bound(k_pos, k_pos + m, pmax) - k_pos;
    int64_t j0 = 0;
    if (p.window > 0) {
      const int64_t lo = static_cast<int64_t>(pmin) - p.window + 1;
      j0 = std::lower_bound(k_pos, k_pos + m, lo) - k_pos;
    }
    const int64_t mm = j1 - j0;
    if (mm <= 0) {
      for (int64_t i = i0; i < i0 + nb; ++i) std::memset(out + i * q_stride, 0, q_stride * 4);
      continue;
    }
    // The `group` query heads that share a kv head are stacked into one [group * nb, hd]
    // matrix (head-major), so each kv head costs two larger GEMMs instead of 2 * group small
    // ones: better blocking and threading (gemm.h) at no extra FLOPs.
    const int64_t rows = group * nb;
    scores_.resize(static_cast<size_t>(rows * mm));
    q_pack_.resize(static_cast<size_t>(rows * hd));
    o_pack_.resize(static_cast<size_t>(rows * hd));
    pos_pack_.resize(static_cast<size_t>(rows));
    inv_sum_.resize(static_cast<size_t>(rows));
    for (int64_t j = 0; j < group; ++j) std::copy_n(q_pos + i0, nb, pos_pack_.data() + j * nb);
    float* s = scores_.data();
    for (int64_t g = 0; g < p.n_kv_heads; ++g) {
      for (int64_t j = 0; j < group; ++j) {
        const int64_t h = g * group + j;
        for (int64_t t = 0; t < nb; ++t) {
          std::copy_n(q + (i0 + t) * q_stride + h * hd, hd, q_pack_.data() + (j * nb + t) * hd);
        }
      }
      Gemm(GemmB::kTransposed, rows, mm, hd, p.scale, q_pack_.data(), hd,
           k + j0 * kv_stride + g * hd, kv_stride, 0.0f, s, mm);
      SoftmaxRows(s, pos_pack_.data(), rows, k_pos + j0, mm, p.window, inv_sum_.data());
      Gemm(GemmB::kPlain, rows, hd, mm, 1.0f, s, mm, v + j0 * kv_stride + g * hd, kv_stride, 0.0f,
           o_pack_.data(), hd);
      for (int64_t j = 0; j < group; ++j) {
        const int64_t h = g * group + j;
        for (int64_t t = 0; t < nb; ++t) {
          const float* src = o_pack_.data() + (j * nb + t) * hd;
          const float inv = inv_sum_[j * nb + t];
          float* dst = out + (i0 + t) * q_stride + h * hd;
          for (int64_t e = 0; e < hd; ++e) dst[e] = src[e] * inv;
        }
      }
    }
  }
}

void CpuBackend::DirectAttention(const float* q, const int32_t* q_pos, int64_t n, const float* k,
                                 const float* v, const int32_t* k_pos, int64_t m,
                                 const AttentionParams& p, float* out) {
  const int64_t hd = p.head_dim, q_stride = p.n_heads * hd;
  const int64_t group = p.n_heads / p.n_kv_heads;
  // One task per (query row, head), so even one decode row spreads over the pool; the heads of
  // a GQA group sit next to each other, so their K and V rows stay in cache between them.
  ThreadPool::Default().ParallelFor(n * p.n_heads, 1, [&](int64_t t0, int64_t t1) {
    float* s = DecodeScores(m);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i = t / p.n_heads, h = t % p.n_heads;
      DecodeRowHeads(q + i * q_stride + h * hd, 1, q_pos[i], k, v, k_pos, m, p, h / group, s,
                     out + i * q_stride + h * hd);
    }
  });
}

void CpuBackend::AttentionVarlen(const float* q, const int32_t* q_pos,
                                 std::span<const AttentionSeq> seqs, const AttentionParams& p,
                                 float* out) {
  const int64_t hd = p.head_dim, q_stride = p.n_heads * hd;
  const int64_t group = p.n_heads / p.n_kv_heads;
  ThreadPool& pool = ThreadPool::Default();
  // Each sequence takes the path Attention would take for it (so its bits are Attention's):
  // flash for 16+ rows where the kernel takes the shape, the decode kernel for up to 4, the
  // GEMM path otherwise.
  const bool flash = FlashAttentionSupports(p);
  varlen_flash_.clear();
  varlen_decode_seqs_.clear();
  varlen_gemm_seqs_.clear();
  size_t n_flash = 0;
  for (const AttentionSeq& s : seqs) n_flash += s.n >= kFlashMinQueries && flash ? 1 : 0;
  if (flash_scratch_.size() < n_flash) flash_scratch_.resize(n_flash);
  int64_t max_m = 1;
  for (const AttentionSeq& s : seqs) {
    if (s.n <= 0) continue;
    FlashAttentionWork w;
    if (s.n >= kFlashMinQueries && flash &&
        PrepareFlashAttention(q + s.q_begin * q_stride, q_pos + s.q_begin, s.n, s.k, s.v, s.k_pos,
                              s.m, p, out + s.q_begin * q_stride,
                              &flash_scratch_[varlen_flash_.size()], &w)) {
      varlen_flash_.push_back(w);
    } else if (s.n <= kDirectMaxQueries) {
      varlen_decode_seqs_.push_back(&s);
      max_m = std::max(max_m, s.m);
    } else {
      varlen_gemm_seqs_.push_back(&s);
    }
  }
  // Work items, in the order the pool's threads claim them: (1) the flash sequences' K/V pack
  // items, all claimed before any (2) query tile of theirs, so a thread that gets a tile waits at
  // most for the pack items other threads hold; (2) the flash tiles, costliest first within each
  // sequence; (3) decode items, sequences with the most keys first, so the job ends on short
  // items. A decode item is one query row's whole GQA group (its K/V rows read once from memory
  // for all its heads) when there are enough of them to balance, else one head.
  std::stable_sort(varlen_decode_seqs_.begin(), varlen_decode_seqs_.end(),
                   [](const AttentionSeq* a, const AttentionSeq* b) { return a->m > b->m; });
  int64_t decode_units = 0;
  for (const AttentionSeq* s : varlen_decode_seqs_) decode_units += s->n * p.n_kv_heads;
  const int64_t heads_per_item = decode_units >= 4 * pool.size() ? group : 1;
  varlen_decode_.clear();
  for (const AttentionSeq* s : varlen_decode_seqs_) {
    for (int64_t i = 0; i < s->n; ++i) {
      for (int64_t h = 0; h < p.n_heads; h += heads_per_item) {
        varlen_decode_.push_back(DecodeItem{s, i, h, h + heads_per_item});
      }
    }
  }
  int64_t packs = 0, tiles = 0;
  for (const FlashAttentionWork& w : varlen_flash_) {
    packs += w.pack_items;
    tiles += w.tile_items;
  }
  const int64_t total = packs + tiles + static_cast<int64_t>(varlen_decode_.size());
  if (total > 0) {
    std::atomic<int64_t> next{0}, packs_left{packs};
    pool.ParallelFor(std::min<int64_t>(pool.size(), total), 1, [&](int64_t, int64_t) {
      for (int64_t i = next.fetch_add(1); i < total; i = next.fetch_add(1)) {
        if (i < packs) {
          int64_t j = i;
          for (const FlashAttentionWork& w : varlen_flash_) {
            if (j < w.pack_items) {
              PackFlashKv(w, j, j + 1);
              break;
            }
            j -= w.pack_items;
          }
          packs_left.fetch_sub(1, std::memory_order_release);
        } else if (i < packs + tiles) {
          while (packs_left.load(std::memory_order_acquire) > 0) CpuRelax();
          int64_t j = i - packs;
          for (const FlashAttentionWork& w : varlen_flash_) {
            if (j < w.tile_items) {
              RunFlashTile(w, j);
              break;
            }
            j -= w.tile_items;
          }
        } else {
          const DecodeItem& d = varlen_decode_[i - packs - tiles];
          const AttentionSeq& s = *d.seq;
          const int64_t row = s.q_begin + d.row;
          float* sc = DecodeScores(kMaxDecodeHeads * max_m);
          // The item's heads a kv group (and at most kMaxDecodeHeads) at a time.
          for (int64_t h = d.h0; h < d.h1;) {
            const int64_t nh = std::min({d.h1 - h, (h / group + 1) * group - h, kMaxDecodeHeads});
            DecodeRowHeads(q + row * q_stride + h * hd, nh, q_pos[row], s.k, s.v, s.k_pos, s.m, p,
                           h / group, sc, out + row * q_stride + h * hd);
            h += nh;
          }
        }
      }
    });
  }
  for (const AttentionSeq* s : varlen_gemm_seqs_) {
    Attention(q + s->q_begin * q_stride, q_pos + s->q_begin, s->n, s->k, s->v, s->k_pos, s->m, p,
              out + s->q_begin * q_stride);
  }
}

void CpuBackend::SoftmaxRows(float* rows, const int32_t* q_pos, int64_t nb, const int32_t* k_pos,
                             int64_t mm, int64_t window, float* inv_sums) {
  ThreadPool::Default().ParallelFor(
      nb, std::max<int64_t>(1, 8192 / mm), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          float* row = rows + r * mm;
          // Visible rows form one range because positions ascend: k_pos <= q_pos is a prefix, the
          // window cuts a prefix of that. Only that range is exponentiated.
          const int32_t qp = q_pos[r];
          const int64_t hi = std::upper_bound(k_pos, k_pos + mm, qp) - k_pos;
          const int64_t lo = window > 0 ? std::lower_bound(k_pos, k_pos + hi,
                                                           static_cast<int64_t>(qp) - window + 1) -
                                              k_pos
                                        : 0;
          if (hi <= lo) {
            std::fill(row, row + mm, 0.0f);
            if (inv_sums != nullptr) inv_sums[r] = 0.0f;
            continue;
          }
          std::fill(row, row + lo, 0.0f);
          std::fill(row + hi, row + mm, 0.0f);
          float mx = row[lo];
          for (int64_t j = lo; j < hi; ++j) mx = std::max(mx, row[j]);
          float sum = 0.0f;
          for (int64_t j = lo; j < hi; ++j) {
            const float e = FastExp(row[j] - mx);
            row[j] = e;
            sum += e;
          }
          const float inv = 1.0f / sum;
          if (inv_sums != nullptr) {
            inv_sums[r] = inv;  // the caller scales P V's rows instead: [rows, hd], not [rows, mm]
          } else {
            for (int64_t j = lo; j < hi; ++j) row[j] *= inv;
          }
        }
      });
}

void CpuBackend::AttentionMass(const float* q, const int32_t* q_pos, int64_t n, const float* k,
                               const int32_t* k_pos, int64_t m, const AttentionParams& p,
                               float* mass) {
  std::fill(mass, mass + m, 0.0f);
  if (n == 0 || m == 0) return;
  const int64_t hd = p.head_dim, q_stride = p.n_heads * hd, kv_stride = p.n_kv_heads * hd;
  const int64_t group = p.n_heads / p.n_kv_heads;
  scores_.resize(static_cast<size_t>(n * m));
  float* s = scores_.data();
  for (int64_t h = 0; h < p.n_heads; ++h) {
    Gemm(GemmB::kTransposed, n, m, hd, p.scale, q + h * hd, q_stride, k + (h / group) * hd,
         kv_stride, 0.0f, s, m);
    SoftmaxRows(s, q_pos, n, k_pos, m, p.window, nullptr);
    for (int64_t i = 0; i < n; ++i) {
      const float* row = s + i * m;
      for (int64_t j = 0; j < m; ++j) mass[j] += row[j];
    }
  }
}

void CpuBackend::RowDistance(const float* a, const float* b, int64_t n, int64_t dim, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    float ss = 0.0f;
    for (int64_t j = 0; j < dim; ++j) {
      const float d = a[i * dim + j] - b[i * dim + j];
      ss += d * d;
    }
    out[i] = std::sqrt(ss);
  }
}

void CpuBackend::SwiGlu(const float* gate, const float* up, int64_t count, float* out) {
  ThreadPool::Default().ParallelFor(count, 16384, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float g = gate[i];
      out[i] = g / (1.0f + FastExp(-g)) * up[i];
    }
  });
}

void CpuBackend::Embed(const Matrix& table, const int32_t* ids, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) DequantizeRows(table, ids[i], 1, out + i * table.cols);
}

void CpuBackend::GatherRows(const float* src, int64_t row_len, const int32_t* idx, int64_t n,
                            float* dst) {
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(dst + i * row_len, src + idx[i] * row_len, row_len * sizeof(float));
  }
}

void CpuBackend::Add(float* x, const float* y, int64_t count) {
  ThreadPool::Default().ParallelFor(count, 16384, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) x[i] += y[i];
  });
}

}  // namespace semshare::engine
