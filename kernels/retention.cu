// Attention mass and KV compaction (algorithm note in retention.cuh).
#include "kernels/common.cuh"
#include "kernels/kv_gather.cuh"
#include "kernels/retention.cuh"

namespace semshare::kernels {
namespace {

__device__ __forceinline__ bool Vis(int32_t qp, int32_t kp, int64_t window) {
  return kp <= qp && (window <= 0 || static_cast<int64_t>(qp) - kp < window);
}

constexpr int kRowsPerTile = 64;   // kv rows per block in the score pass
constexpr int kPairsPerTile = 32;  // (query, head) pairs per block in the score pass

// Pass 1: S[pair, j] = scale * q_pair . k_j for visible rows, -inf otherwise, where pair =
// i * n_heads + h. A block stages 32 pairs of one kv group and 64 kv rows in shared memory
// (rows padded by one float: conflict-free column reads) and each thread forms dot products;
// the writes along j are coalesced.
template <typename T>
__global__ void MassScoresKernel(const T* __restrict__ q, const int32_t* __restrict__ q_pos,
                                 const T* __restrict__ k, const int32_t* __restrict__ k_pos,
                                 AttnShape s, float* __restrict__ scores) {
  extern __shared__ float sm[];
  const int D = static_cast<int>(s.head_dim), ld = D + 1;
  const int64_t group = s.n_heads / s.n_kv_heads;
  const int64_t g = blockIdx.y;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kRowsPerTile;
  const int64_t p0 = static_cast<int64_t>(blockIdx.z) * kPairsPerTile;  // pair within group
  const int64_t group_pairs = s.n * group;
  float* qs = sm;                       // [kPairsPerTile][ld]
  float* ks = sm + kPairsPerTile * ld;  // [kRowsPerTile][ld]
  for (int idx = threadIdx.x; idx < kPairsPerTile * D; idx += blockDim.x) {
    const int pp = idx / D, c = idx % D;
    const int64_t gp = p0 + pp;
    float v = 0.0f;
    if (gp < group_pairs) {
      const int64_t i = gp / group, h = g * group + gp % group;
      v = ToF<T>(q[i * s.q_stride + h * D + c]) * s.scale;
    }
    qs[pp * ld + c] = v;
  }
  for (int idx = threadIdx.x; idx < kRowsPerTile * D; idx += blockDim.x) {
    const int r = idx / D, c = idx % D;
    ks[r * ld + c] = j0 + r < s.m ? ToF<T>(k[(j0 + r) * s.kv_stride + g * D + c]) : 0.0f;
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < kPairsPerTile * kRowsPerTile; idx += blockDim.x) {
    const int pp = idx / kRowsPerTile, r = idx % kRowsPerTile;
    const int64_t gp = p0 + pp, j = j0 + r;
    if (gp >= group_pairs || j >= s.m) continue;
    const int64_t i = gp / group, h = g * group + gp % group;
    float v = -INFINITY;
    if (Vis(q_pos[i], k_pos[j], s.window)) {
      v = 0.0f;
      for (int c = 0; c < D; ++c) v += qs[pp * ld + c] * ks[r * ld + c];
    }
    scores[(i * s.n_heads + h) * s.m + j] = v;
  }
}

// Pass 2: per pair, the softmax max and normaliser over its row of S (one warp per pair).
__global__ void MassStatsKernel(const float* __restrict__ scores, int64_t pairs, int64_t m,
                                float* __restrict__ stats) {
  const int64_t pair = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (pair >= pairs) return;
  const float* row = scores + pair * m;
  float mx = -INFINITY;
  for (int64_t j = lane; j < m; j += 32) mx = fmaxf(mx, row[j]);
  mx = WarpMax(mx);
  float l = 0.0f;
  if (mx != -INFINITY) {
    for (int64_t j = lane; j < m; j += 32) l += __expf(row[j] - mx);  // exp(-inf) = 0
  }
  l = WarpSum(l);
  if (lane == 0) {
    stats[2 * pair] = mx;
    stats[2 * pair + 1] = l;
  }
}

// Pass 3: mass[j] = sum over pairs of exp(S[pair, j] - max) / l (a thread per row j; reads
// along j coalesced).
__global__ void MassSumKernel(const float* __restrict__ scores, const float* __restrict__ stats,
                              int64_t pairs, int64_t m, float* __restrict__ mass) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= m) return;
  float acc = 0.0f;
  for (int64_t p = 0; p < pairs; ++p) {
    const float l = stats[2 * p + 1];
    if (l > 0.0f) acc += __expf(scores[p * m + j] - stats[2 * p]) / l;
  }
  mass[j] = acc;
}

}  // namespace

int64_t AttentionMassWorkspace(const AttnShape& s) {
  return s.n * s.n_heads * (s.m + 2);  // scores [pairs, m] + stats [pairs, 2]
}

template <typename T>
cudaError_t AttentionMass(const T* q, const int32_t* q_pos, const T* k, const int32_t* k_pos,
                          const AttnShape& s, float* mass, float* workspace, cudaStream_t stream) {
  if (s.n_heads <= 0 || s.n_kv_heads <= 0 || s.n_heads % s.n_kv_heads != 0 || s.head_dim <= 0 ||
      s.head_dim > 512) {
    return cudaErrorInvalidValue;
  }
  if (s.m <= 0) return cudaSuccess;
  if (s.n <= 0) return cudaMemsetAsync(mass, 0, s.m * sizeof(float), stream);
  const int64_t pairs = s.n * s.n_heads;
  float* scores = workspace;
  float* stats = workspace + pairs * s.m;
  const int64_t group_pairs = s.n * (s.n_heads / s.n_kv_heads);
  const size_t smem = sizeof(float) * (kPairsPerTile + kRowsPerTile) * (s.head_dim + 1);
  cudaError_t e = cudaFuncSetAttribute(
      MassScoresKernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (e != cudaSuccess) return e;
  // gridDim.y and gridDim.z are limited to 65535: n_kv_heads is small, and the pair tiles only
  // exceed it past ~2M (query, head) pairs per kv group, far beyond a retention window.
  if (s.n_kv_heads > 65535 || CeilDiv(group_pairs, kPairsPerTile) > 65535) {
    return cudaErrorInvalidValue;
  }
  const dim3 grid(static_cast<unsigned>(CeilDiv(s.m, kRowsPerTile)),
                  static_cast<unsigned>(s.n_kv_heads),
                  static_cast<unsigned>(CeilDiv(group_pairs, kPairsPerTile)));
  MassScoresKernel<T><<<grid, 256, smem, stream>>>(q, q_pos, k, k_pos, s, scores);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;
  MassStatsKernel<<<static_cast<unsigned>(CeilDiv(pairs * 32, 256)), 256, 0, stream>>>(
      scores, pairs, s.m, stats);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;
  MassSumKernel<<<static_cast<unsigned>(CeilDiv(s.m, 256)), 256, 0, stream>>>(scores, stats, pairs,
                                                                              s.m, mass);
  return cudaGetLastError();
}

template <typename T>
cudaError_t CompactRows(const T* k, const T* v, const int32_t* pos, int64_t row_len,
                        const int32_t* idx, int64_t count, T* k_out, T* v_out, int32_t* pos_out,
                        cudaStream_t stream) {
  cudaError_t e = GatherRows<T>(k, row_len, idx, count, k_out, stream);
  if (e == cudaSuccess) e = GatherRows<T>(v, row_len, idx, count, v_out, stream);
  if (e == cudaSuccess) e = GatherRows<int32_t>(pos, 1, idx, count, pos_out, stream);
  return e;
}

template cudaError_t AttentionMass<float>(const float*, const int32_t*, const float*,
                                          const int32_t*, const AttnShape&, float*, float*,
                                          cudaStream_t);
template cudaError_t AttentionMass<bf16>(const bf16*, const int32_t*, const bf16*, const int32_t*,
                                         const AttnShape&, float*, float*, cudaStream_t);
template cudaError_t CompactRows<float>(const float*, const float*, const int32_t*, int64_t,
                                        const int32_t*, int64_t, float*, float*, int32_t*,
                                        cudaStream_t);
template cudaError_t CompactRows<bf16>(const bf16*, const bf16*, const int32_t*, int64_t,
                                       const int32_t*, int64_t, bf16*, bf16*, int32_t*,
                                       cudaStream_t);

}  // namespace semshare::kernels
