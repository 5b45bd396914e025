// Varlen attention over a paged KV cache; the algorithm is in paged_attention.cuh.
#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <cmath>

#include "kernels/common.cuh"
#include "kernels/paged_attention.cuh"

namespace semshare::kernels {
namespace {

constexpr int kWarps = 4;

// window <= 0: unlimited (engine/backend.h's contract, as attention.cu and the CPU reference).
__device__ __forceinline__ bool Visible(int32_t qpos, int32_t kpos, int64_t window) {
  return kpos <= qpos && (window <= 0 || static_cast<int64_t>(qpos) - kpos < window);
}

// P: dims per lane (head_dim <= 32 * P); GM: query heads per block (a slice of the GQA group).
template <int P, int GM, typename Tout>
__global__ void __launch_bounds__(kWarps * 32)
    PagedKernel(const bf16* __restrict__ q, const int32_t* __restrict__ q_pos,
                const int32_t* __restrict__ q_seq, const bf16* __restrict__ kp,
                const bf16* __restrict__ vp, const int32_t* __restrict__ pp,
                const int32_t* __restrict__ tables, const int32_t* __restrict__ toff,
                const int32_t* __restrict__ srows, PagedAttnShape s, int slices, int splits,
                Tout* __restrict__ out, float* __restrict__ part) {
  __shared__ float sm_m[kWarps][GM], sm_l[kWarps][GM];
  __shared__ float sm_o[kWarps][GM][P * 32];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int slice = static_cast<int>(blockIdx.x % slices);
  const int64_t t_ = blockIdx.x / slices;
  const int64_t kvh = t_ % s.n_kv_heads, i = t_ / s.n_kv_heads;
  const int split = blockIdx.y;
  const int group = static_cast<int>(s.n_heads / s.n_kv_heads);
  const int64_t h0 = kvh * group + static_cast<int64_t>(slice) * GM;
  const int gn = min(GM, group - slice * GM);
  const int D = static_cast<int>(s.head_dim);
  const int32_t seq = q_seq[i], qpos = q_pos[i];
  const int64_t rows = srows[seq];
  const int32_t* table = tables + toff[seq];

  float qv[GM][P], acc[GM][P], m[GM], l[GM];
#pragma unroll
  for (int g = 0; g < GM; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int t = 0; t < P; ++t) {
      const int d = lane + 32 * t;
      qv[g][t] = g < gn && d < D ? ToF<bf16>(q[i * s.q_stride + (h0 + g) * D + d]) * s.scale : 0.0f;
      acc[g][t] = 0.0f;
    }
  }
  const int64_t per = CeilDiv(rows, splits);
  const int64_t j0 = split * per, j1 = min(rows, j0 + per);
  // Each warp takes its rows kUnroll at a time: every row's K and V loads are issued before
  // any is used, so that a warp keeps kUnroll rows in flight (decode is latency-bound on the
  // page reads otherwise). Rows are still folded in ascending order.
  constexpr int kUnroll = P >= 2 ? 2 : 1;  // (head_dim <= 32: unrolled, it spilled)
  bool done = false;
  for (int64_t jb = j0 + warp; jb < j1 && !done; jb += kUnroll * kWarps) {
    float kv[kUnroll][P], vv[kUnroll][P];
    int32_t kpos[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = jb + u * kWarps;
      kpos[u] = INT_MAX;  // past the split: ends the walk
      if (j < j1) {
        const int64_t slot =
            static_cast<int64_t>(table[j / s.block_size]) * s.block_size + j % s.block_size;
        kpos[u] = pp[slot];
        const bf16* kr = kp + slot * s.kv_stride + kvh * D;
        const bf16* vr = vp + slot * s.kv_stride + kvh * D;
#pragma unroll
        for (int t = 0; t < P; ++t) {
          const int d = lane + 32 * t;
          kv[u][t] = d < D ? ToF<bf16>(kr[d]) : 0.0f;
          vv[u][t] = d < D ? ToF<bf16>(vr[d]) : 0.0f;
        }
      } else {
#pragma unroll
        for (int t = 0; t < P; ++t) kv[u][t] = vv[u][t] = 0.0f;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      // A sequence's positions ascend: past the query's, nothing later is visible.
      done = done || kpos[u] > qpos;
      if (done || !Visible(qpos, kpos[u], s.window)) continue;
#pragma unroll
      for (int g = 0; g < GM; ++g) {
        if (g >= gn) break;
        float dot = 0.0f;
#pragma unroll
        for (int t = 0; t < P; ++t) dot += qv[g][t] * kv[u][t];
        dot = WarpSum(dot);
        const float m_new = fmaxf(m[g], dot);
        const float alpha = __expf(m[g] - m_new), p = __expf(dot - m_new);
        l[g] = l[g] * alpha + p;
#pragma unroll
        for (int t = 0; t < P; ++t) acc[g][t] = acc[g][t] * alpha + p * vv[u][t];
        m[g] = m_new;
      }
    }
  }
#pragma unroll
  for (int g = 0; g < GM; ++g) {
    if (lane == 0) {
      sm_m[warp][g] = m[g];
      sm_l[warp][g] = l[g];
    }
#pragma unroll
    for (int t = 0; t < P; ++t) sm_o[warp][g][lane + 32 * t] = acc[g][t];
  }
  __syncthreads();
  // Warp w merges heads g = w, w + kWarps, ... of the slice.
  for (int g = warp; g < gn; g += kWarps) {
    float mm = -INFINITY;
    for (int w = 0; w < kWarps; ++w) mm = fmaxf(mm, sm_m[w][g]);
    float ll = 0.0f, o[P];
#pragma unroll
    for (int t = 0; t < P; ++t) o[t] = 0.0f;
    if (mm != -INFINITY) {
      for (int w = 0; w < kWarps; ++w) {
        const float f = __expf(sm_m[w][g] - mm);  // 0 for warps that saw nothing
        ll += sm_l[w][g] * f;
#pragma unroll
        for (int t = 0; t < P; ++t) o[t] += sm_o[w][g][lane + 32 * t] * f;
      }
    }
    const int64_t h = h0 + g;
    if (splits == 1) {
#pragma unroll
      for (int t = 0; t < P; ++t) {
        const int d = lane + 32 * t;
        if (d < D) out[i * s.out_stride + h * D + d] = FromF<Tout>(ll > 0.0f ? o[t] / ll : 0.0f);
      }
      continue;
    }
    // Partial record of this split: [m, l, o[D]].
    float* rec = part + ((i * s.n_heads + h) * splits + split) * (2 + D);
    if (lane == 0) {
      rec[0] = mm;
      rec[1] = ll;
    }
#pragma unroll
    for (int t = 0; t < P; ++t) {
      const int d = lane + 32 * t;
      if (d < D) rec[2 + d] = o[t];
    }
  }
}

__global__ void ScatterInt32Kernel(const int32_t* __restrict__ src, const int32_t* __restrict__ idx,
                                   int64_t n, int32_t* __restrict__ dst) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[idx[i]] = src[i];
  }
}

bool ShapeOk(const PagedAttnShape& s) {
  return s.n_heads > 0 && s.n_kv_heads > 0 && s.n_heads % s.n_kv_heads == 0 && s.head_dim > 0 &&
         s.head_dim <= 256 && s.block_size > 0 && s.q_stride >= s.n_heads * s.head_dim &&
         s.kv_stride >= s.n_kv_heads * s.head_dim && s.out_stride >= s.n_heads * s.head_dim &&
         s.n_seqs > 0 && s.max_rows >= 0;
}

int PerLane(int64_t head_dim) {
  return head_dim <= 32 ? 1 : head_dim <= 64 ? 2 : head_dim <= 128 ? 4 : 8;
}
int GroupMax(int per_lane) { return per_lane <= 4 ? 8 : 4; }

int Slices(const PagedAttnShape& s) {
  const int64_t group = s.n_heads / s.n_kv_heads;
  return static_cast<int>(CeilDiv(group, GroupMax(PerLane(s.head_dim))));
}

int Splits(const PagedAttnShape& s) {
  const int64_t blocks = s.n * s.n_kv_heads * Slices(s);
  int64_t sp = 1;
  while (blocks * sp < 264 && s.max_rows / (sp * 2) >= 128 && sp < 64) sp *= 2;
  return static_cast<int>(sp);
}

template <int P, typename Tout>
cudaError_t Launch(const void* q, const int32_t* q_pos, const int32_t* q_seq, const void* k,
                   const void* v, const int32_t* pp, const int32_t* tables, const int32_t* toff,
                   const int32_t* srows, const PagedAttnShape& s, int slices, int splits, Tout* out,
                   float* part, cudaStream_t stream) {
  constexpr int kGm = P <= 4 ? 8 : 4;
  const dim3 grid(static_cast<unsigned>(s.n * s.n_kv_heads * slices),
                  static_cast<unsigned>(splits));
  PagedKernel<P, kGm, Tout><<<grid, kWarps * 32, 0, stream>>>(
      static_cast<const bf16*>(q), q_pos, q_seq, static_cast<const bf16*>(k),
      static_cast<const bf16*>(v), pp, tables, toff, srows, s, slices, splits, out, part);
  return cudaGetLastError();
}

}  // namespace

int64_t PagedAttentionWorkspace(const PagedAttnShape& s) {
  if (!ShapeOk(s)) return 0;
  const int sp = Splits(s);
  return sp == 1 ? 0
                 : s.n * s.n_heads * sp * (2 + s.head_dim) * static_cast<int64_t>(sizeof(float));
}

template <typename Tout>
cudaError_t PagedAttention(const void* q, const int32_t* q_pos, const int32_t* q_seq,
                           const void* k_pages, const void* v_pages, const int32_t* pos_pages,
                           const int32_t* block_tables, const int32_t* table_offset,
                           const int32_t* seq_rows, const PagedAttnShape& s, Tout* out,
                           void* workspace, int64_t workspace_bytes, cudaStream_t stream) {
  if (!ShapeOk(s)) return cudaErrorInvalidValue;
  if (s.n <= 0) return cudaSuccess;
  const int slices = Slices(s);
  int splits = Splits(s);
  if (splits > 1 && (workspace == nullptr || workspace_bytes < PagedAttentionWorkspace(s))) {
    splits = 1;
  }
  float* part = static_cast<float*>(workspace);
  cudaError_t e;
  switch (PerLane(s.head_dim)) {
    case 1:
      e = Launch<1, Tout>(q, q_pos, q_seq, k_pages, v_pages, pos_pages, block_tables, table_offset,
                          seq_rows, s, slices, splits, out, part, stream);
      break;
    case 2:
      e = Launch<2, Tout>(q, q_pos, q_seq, k_pages, v_pages, pos_pages, block_tables, table_offset,
                          seq_rows, s, slices, splits, out, part, stream);
      break;
    case 4:
      e = Launch<4, Tout>(q, q_pos, q_seq, k_pages, v_pages, pos_pages, block_tables, table_offset,
                          seq_rows, s, slices, splits, out, part, stream);
      break;
    default:
      e = Launch<8, Tout>(q, q_pos, q_seq, k_pages, v_pages, pos_pages, block_tables, table_offset,
                          seq_rows, s, slices, splits, out, part, stream);
      break;
  }
  if (e != cudaSuccess || splits == 1) return e;
  CombineSplits<Tout>
      <<<static_cast<unsigned>(s.n * s.n_heads), 128, 0, stream>>>(part, s, splits, out);
  return cudaGetLastError();
}

cudaError_t ScatterInt32(const int32_t* src, const int32_t* idx, int64_t n, int32_t* dst,
                         cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(CeilDiv(n, 256), 4096));
  ScatterInt32Kernel<<<blocks, 256, 0, stream>>>(src, idx, n, dst);
  return cudaGetLastError();
}

template cudaError_t PagedAttention<float>(const void*, const int32_t*, const int32_t*, const void*,
                                           const void*, const int32_t*, const int32_t*,
                                           const int32_t*, const int32_t*, const PagedAttnShape&,
                                           float*, void*, int64_t, cudaStream_t);
template cudaError_t PagedAttention<bf16>(const void*, const int32_t*, const int32_t*, const void*,
                                          const void*, const int32_t*, const int32_t*,
                                          const int32_t*, const int32_t*, const PagedAttnShape&,
                                          bf16*, void*, int64_t, cudaStream_t);

}  // namespace semshare::kernels
