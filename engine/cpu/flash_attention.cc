#include "engine/cpu/flash_attention.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>

#if defined(__AVX512F__)
// GCC 12's AVX-512 headers build set1/reduce results from _mm512_undefined_ps(), which trips
// -Wmaybe-uninitialized once inlined (GCC bug 105593, fixed in 13); the code is not affected.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#endif

#include "engine/cpu/fast_math.h"
#include "engine/cpu/thread_pool.h"

namespace semshare::engine {

#if defined(__AVX512F__)
namespace {

constexpr int64_t kKeyTile = 16;      // keys per score vector (one zmm per query row)
constexpr int64_t kMaxHeadDim = 256;  // bounds the on-stack tile buffers (2 x 24 KiB)
constexpr int kPvRows = 6;            // PV register block: 6 rows x 4 zmm = 24 accumulators

// 64-byte aligned view of `count` floats in buf (vector only guarantees 16).
float* Aligned(std::vector<float>& buf, size_t count) {
  buf.resize(count + 16);
  const auto addr = reinterpret_cast<uintptr_t>(buf.data());
  return buf.data() + ((64 - addr % 64) % 64) / sizeof(float);
}

// FastExp (fast_math.h) on 16 lanes: same clamps, reduction and polynomial; -inf gives 0.
inline __m512 Exp16(__m512 x) {
  const __mmask16 underflow = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_LT_OQ);
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.7f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
  __m512 poly = _mm512_set1_ps(1.3888889e-3f);
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(8.3333333e-3f));
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(4.1666667e-2f));
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(1.6666667e-1f));
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(0.5f));
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(1.0f));
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(1.0f));
  const __m512i e =
      _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_maskz_mul_ps(static_cast<__mmask16>(~underflow), poly, _mm512_castsi512_ps(e));
}

// acc[RC][CB * 16] (row stride hd) += p[RC][16] * v[16][CB * 16] (row stride hd).
template <int RC, int CB>
inline void PvBlock(const float* p, const float* v, int64_t hd, float* acc) {
  __m512 a[RC][CB];
#pragma GCC unroll 8
  for (int r = 0; r < RC; ++r) {
#pragma GCC unroll 4
    for (int c = 0; c < CB; ++c) a[r][c] = _mm512_load_ps(acc + r * hd + c * 16);
  }
#pragma GCC unroll 2
  for (int j = 0; j < kKeyTile; ++j) {
    __m512 vv[CB];
#pragma GCC unroll 4
    for (int c = 0; c < CB; ++c) vv[c] = _mm512_load_ps(v + j * hd + c * 16);
#pragma GCC unroll 8
    for (int r = 0; r < RC; ++r) {
      const __m512 b = _mm512_set1_ps(p[r * kKeyTile + j]);
#pragma GCC unroll 4
      for (int c = 0; c < CB; ++c) a[r][c] = _mm512_fmadd_ps(b, vv[c], a[r][c]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < RC; ++r) {
#pragma GCC unroll 4
    for (int c = 0; c < CB; ++c) _mm512_store_ps(acc + r * hd + c * 16, a[r][c]);
  }
}

template <int RC>
inline void PvRows(const float* p, const float* v, int64_t hd, float* acc) {
  int64_t c = 0;
  for (; c + 64 <= hd; c += 64) PvBlock<RC, 4>(p, v + c, hd, acc + c);
  switch ((hd - c) / 16) {
    case 3:
      PvBlock<RC, 3>(p, v + c, hd, acc + c);
      break;
    case 2:
      PvBlock<RC, 2>(p, v + c, hd, acc + c);
      break;
    case 1:
      PvBlock<RC, 1>(p, v + c, hd, acc + c);
      break;
    default:
      break;
  }
}

// One tile of R query rows (row = token * group + head-in-group, rows row0.. of kv head g) over
// all its visible keys. Rows past the end repeat the last real row and are not written.
template <int R>
void RunTile(const FlashAttentionWork& job, int64_t g, int64_t row0) {
  const int64_t hd = job.head_dim, total = job.n * job.group;
  const int64_t q_stride = job.n_kv_heads * job.group * hd;
  const int64_t valid = std::min<int64_t>(R, total - row0);
  alignas(64) float qb[kMaxHeadDim * R];   // [hd][R], pre-scaled
  alignas(64) float acc[R * kMaxHeadDim];  // [R][hd]
  alignas(64) float pb[R * kKeyTile];      // this key tile's exp(s - max)
  alignas(64) float lsum[R * kKeyTile];    // running row sums, 16 partial lanes each
  float mrow[R];
  int32_t qp[R], qlo[R];
  int64_t out_off[R];
  int32_t pmin = std::numeric_limits<int32_t>::max(), pmax = std::numeric_limits<int32_t>::min();
  int32_t lo_max = std::numeric_limits<int32_t>::min();
  for (int r = 0; r < R; ++r) {
    const int64_t row = row0 + std::min<int64_t>(r, valid - 1);
    const int64_t token = row / job.group, head = g * job.group + row % job.group;
    out_off[r] = token * q_stride + head * hd;
    const float* src = job.q + out_off[r];
    for (int64_t d = 0; d < hd; ++d) qb[d * R + r] = src[d] * job.scale;
    qp[r] = job.q_pos[token];
    // Visible keys: qlo <= k_pos <= qp (qlo clamped to int32; no window: everything below).
    const int64_t lo = job.window > 0 ? static_cast<int64_t>(qp[r]) - job.window + 1
                                      : std::numeric_limits<int32_t>::min();
    qlo[r] = static_cast<int32_t>(std::max<int64_t>(lo, std::numeric_limits<int32_t>::min()));
    pmin = std::min(pmin, qp[r]);
    pmax = std::max(pmax, qp[r]);
    lo_max = std::max(lo_max, qlo[r]);
  }
  const int32_t* kp = job.k_pos_padded;
  const int64_t j1 = std::upper_bound(kp, kp + job.m, pmax) - kp;
  int64_t j0 = 0;
  if (job.window > 0) {
    j0 = std::lower_bound(kp, kp + job.m, static_cast<int64_t>(pmin) - job.window + 1) - kp;
  }
  if (j1 <= j0) {
    for (int64_t r = 0; r < valid; ++r) std::memset(job.out + out_off[r], 0, hd * sizeof(float));
    return;
  }
  std::fill(acc, acc + R * hd, 0.0f);
  std::fill(lsum, lsum + R * kKeyTile, 0.0f);
  std::fill(mrow, mrow + R, -INFINITY);
  const float* kt = job.k_tiles + g * job.tiles * kKeyTile * hd;
  const float* vr = job.v_rows + g * job.tiles * kKeyTile * hd;
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  for (int64_t t = j0 / kKeyTile; t * kKeyTile < j1; ++t) {
    const float* ktile = kt + t * kKeyTile * hd;
    __m512 s[R];
#pragma GCC unroll 24
    for (int r = 0; r < R; ++r) s[r] = _mm512_setzero_ps();
    for (int64_t d = 0; d < hd; ++d) {
      const __m512 kv = _mm512_load_ps(ktile + d * kKeyTile);
      const float* qd = qb + d * R;
#pragma GCC unroll 24
      for (int r = 0; r < R; ++r) s[r] = _mm512_fmadd_ps(_mm512_set1_ps(qd[r]), kv, s[r]);
    }
    const int32_t* kpt = kp + t * kKeyTile;
    // Masks are needed only where some key of the tile is invisible to some row.
    const bool full = kpt[kKeyTile - 1] <= pmin && kpt[0] >= lo_max;
    const __m512i kpv = _mm512_loadu_si512(kpt);
    float alpha[R];
    bool rescale = false;
#pragma GCC unroll 24
    for (int r = 0; r < R; ++r) {
      __m512 sr = s[r];
      if (!full) {
        const __mmask16 vis = _mm512_cmple_epi32_mask(kpv, _mm512_set1_epi32(qp[r])) &
                              _mm512_cmpge_epi32_mask(kpv, _mm512_set1_epi32(qlo[r]));
        sr = _mm512_mask_mov_ps(ninf, vis, sr);
      }
      const float mx = _mm512_reduce_max_ps(sr);
      float a = 1.0f;
      if (mx > mrow[r]) {  // the max grew: earlier terms shrink by exp(old - new)
        a = mrow[r] == -INFINITY ? 0.0f : FastExp(mrow[r] - mx);
        mrow[r] = mx;
        rescale = true;
      }
      alpha[r] = a;
      const float mu = mrow[r] == -INFINITY ? 0.0f : mrow[r];  // all masked so far: p = 0
      const __m512 pr = Exp16(_mm512_sub_ps(sr, _mm512_set1_ps(mu)));
      _mm512_store_ps(pb + r * kKeyTile, pr);
      const __m512 l = _mm512_load_ps(lsum + r * kKeyTile);
      _mm512_store_ps(lsum + r * kKeyTile, _mm512_fmadd_ps(l, _mm512_set1_ps(a), pr));
    }
    if (rescale) {
      for (int r = 0; r < R; ++r) {
        if (alpha[r] == 1.0f) continue;
        const __m512 av = _mm512_set1_ps(alpha[r]);
        float* row = acc + r * hd;
        for (int64_t d = 0; d < hd; d += 16) {
          _mm512_store_ps(row + d, _mm512_mul_ps(_mm512_load_ps(row + d), av));
        }
      }
    }
    const float* vtile = vr + t * kKeyTile * hd;
    int r = 0;
    for (; r + kPvRows <= R; r += kPvRows) {
      PvRows<kPvRows>(pb + r * kKeyTile, vtile, hd, acc + r * hd);
    }
    if constexpr (R % kPvRows != 0) {
      PvRows<R % kPvRows>(pb + r * kKeyTile, vtile, hd, acc + r * hd);
    }
  }
  for (int64_t r = 0; r < valid; ++r) {
    const float l = _mm512_reduce_add_ps(_mm512_load_ps(lsum + r * kKeyTile));
    const __m512 inv = _mm512_set1_ps(l > 0.0f ? 1.0f / l : 0.0f);  // l >= 1 if anything seen
    float* dst = job.out + out_off[r];
    for (int64_t d = 0; d < hd; d += 16) {
      _mm512_storeu_ps(dst + d, _mm512_mul_ps(_mm512_load_ps(acc + r * hd + d), inv));
    }
  }
}

}  // namespace
#endif  // __AVX512F__

bool FlashAttentionAvailable() {
#if defined(__AVX512F__)
  return true;
#else
  return false;
#endif
}

bool FlashAttentionSupports(const AttentionParams& p) {
#if defined(__AVX512F__)
  const int64_t hd = p.head_dim;
  return hd > 0 && hd % 16 == 0 && hd <= kMaxHeadDim && p.n_kv_heads > 0 &&
         p.n_heads % p.n_kv_heads == 0;
#else
  (void)p;
  return false;
#endif
}

bool PrepareFlashAttention(const float* q, const int32_t* q_pos, int64_t n, const float* k,
                           const float* v, const int32_t* k_pos, int64_t m,
                           const AttentionParams& p, float* out, FlashAttentionScratch* scratch,
                           FlashAttentionWork* work) {
#if defined(__AVX512F__)
  if (!FlashAttentionSupports(p) || n < 0 || m < 0) return false;
  *work = FlashAttentionWork{};
  if (n == 0) return true;
  const int64_t hd = p.head_dim, n_kv = p.n_kv_heads, group = p.n_heads / n_kv;
  const int64_t tiles = std::max<int64_t>(1, (m + kKeyTile - 1) / kKeyTile);
  const int64_t mp = tiles * kKeyTile;
  work->k_tiles = Aligned(scratch->k_tiles, static_cast<size_t>(n_kv * mp * hd));
  work->v_rows = Aligned(scratch->v_rows, static_cast<size_t>(n_kv * mp * hd));
  scratch->k_pos.assign(static_cast<size_t>(mp), std::numeric_limits<int32_t>::max());
  std::copy_n(k_pos, m, scratch->k_pos.data());
  work->k_pos_padded = scratch->k_pos.data();
  work->tiles = tiles;
  work->q = q;
  work->q_pos = q_pos;
  work->k = k;
  work->v = v;
  work->out = out;
  work->n = n;
  work->m = m;
  work->head_dim = hd;
  work->n_kv_heads = n_kv;
  work->group = group;
  work->window = p.window;
  work->scale = p.scale;
  // The register tile: as many rows as fill it, fewer for few rows (decode-sized calls).
  const int64_t rows = n * group;
  work->tile_rows = rows >= 24 ? 24 : rows > 8 ? 16 : rows > 4 ? 8 : 4;
  work->pack_items = n_kv * tiles;
  work->tile_items = (rows + work->tile_rows - 1) / work->tile_rows * n_kv;
  return true;
#else
  (void)q, (void)q_pos, (void)n, (void)k, (void)v, (void)k_pos, (void)m, (void)p, (void)out,
      (void)scratch, (void)work;
  return false;
#endif
}

void PackFlashKv(const FlashAttentionWork& work, int64_t i0, int64_t i1) {
#if defined(__AVX512F__)
  const int64_t hd = work.head_dim, tiles = work.tiles, m = work.m;
  const int64_t kv_stride = work.n_kv_heads * hd;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t g = i / tiles, t = i % tiles;
    float* kdst = work.k_tiles + (g * tiles + t) * kKeyTile * hd;
    float* vdst = work.v_rows + (g * tiles + t) * kKeyTile * hd;
    for (int64_t lane = 0; lane < kKeyTile; ++lane) {
      const int64_t j = t * kKeyTile + lane;
      if (j < m) {
        const float* ks = work.k + j * kv_stride + g * hd;
        for (int64_t d = 0; d < hd; ++d) kdst[d * kKeyTile + lane] = ks[d];
        std::memcpy(vdst + lane * hd, work.v + j * kv_stride + g * hd, hd * sizeof(float));
      } else {
        for (int64_t d = 0; d < hd; ++d) kdst[d * kKeyTile + lane] = 0.0f;
        std::memset(vdst + lane * hd, 0, hd * sizeof(float));
      }
    }
  }
#else
  (void)work, (void)i0, (void)i1;
#endif
}

void RunFlashTile(const FlashAttentionWork& work, int64_t i) {
#if defined(__AVX512F__)
  // Causal tiles differ in cost by up to m / 16x: the last query tiles (usually the most keys)
  // come first, so that dynamic scheduling ends on short items.
  const int64_t n_kv = work.n_kv_heads, row_tiles = work.tile_items / n_kv;
  const int64_t tile = row_tiles - 1 - i / n_kv, g = i % n_kv;
  const int64_t row0 = tile * work.tile_rows;
  switch (work.tile_rows) {
    case 24:
      RunTile<24>(work, g, row0);
      break;
    case 16:
      RunTile<16>(work, g, row0);
      break;
    case 8:
      RunTile<8>(work, g, row0);
      break;
    default:
      RunTile<4>(work, g, row0);
      break;
  }
#else
  (void)work, (void)i;
#endif
}

bool FlashAttention(const float* q, const int32_t* q_pos, int64_t n, const float* k, const float* v,
                    const int32_t* k_pos, int64_t m, const AttentionParams& p, float* out,
                    FlashAttentionScratch* scratch) {
  FlashAttentionWork work;
  if (!PrepareFlashAttention(q, q_pos, n, k, v, k_pos, m, p, out, scratch, &work)) return false;
  if (work.tile_items == 0) return true;
  ThreadPool& pool = ThreadPool::Default();
  pool.ParallelFor(work.pack_items, 8, [&](int64_t i0, int64_t i1) { PackFlashKv(work, i0, i1); });
  std::atomic<int64_t> next{0};
  pool.ParallelFor(pool.size(), 1, [&](int64_t, int64_t) {
    for (int64_t i = next.fetch_add(1); i < work.tile_items; i = next.fetch_add(1)) {
      RunFlashTile(work, i);
    }
  });
  return true;
}

}  // namespace semshare::engine
