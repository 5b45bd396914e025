// Prefill (flash, tensor cores) and generic/decode attention (algorithm notes in
// attention.cuh).
#include <mma.h>

#include <climits>

#include "kernels/attention.cuh"
#include "kernels/common.cuh"

namespace semshare::kernels {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kBq = 64;  // queries per block (4 warps x 16 rows)
constexpr int kBk = 64;  // keys per tile
constexpr int kLdS = kBk + 4;
constexpr int kLdP = kBk + 8;

__device__ __forceinline__ bool Visible(int32_t qp, int32_t kp, int64_t window) {
  return kp <= qp && (window <= 0 || static_cast<int64_t>(qp) - kp < window);
}

template <int D>
struct FlashSmem {
  static constexpr int kLd = D + 8;   // bf16 tiles (16-byte multiple rows, 32-byte fragments)
  static constexpr int kLdO = D + 4;  // float accumulator rows
  static constexpr size_t kQ = 0;
  static constexpr size_t kK = kQ + sizeof(bf16) * kBq * kLd;
  static constexpr size_t kV = kK + sizeof(bf16) * kBk * kLd;
  static constexpr size_t kS = kV + sizeof(bf16) * kBk * kLd;
  static constexpr size_t kP = kS + sizeof(float) * kBq * kLdS;
  static constexpr size_t kO = kP + sizeof(bf16) * kBq * kLdP;
  static constexpr size_t kM = kO + sizeof(float) * kBq * kLdO;
  static constexpr size_t kL = kM + sizeof(float) * kBq;
  static constexpr size_t kQp = kL + sizeof(float) * kBq;
  static constexpr size_t kKp = kQp + sizeof(int32_t) * kBq;
  static constexpr size_t kBytes = kKp + sizeof(int32_t) * kBk;
};

template <int D, typename Tout>
__global__ void __launch_bounds__(128)
    FlashKernel(const bf16* __restrict__ q, const int32_t* __restrict__ q_pos,
                const bf16* __restrict__ k, const bf16* __restrict__ v,
                const int32_t* __restrict__ k_pos, AttnShape s, Tout* __restrict__ out) {
  using L = FlashSmem<D>;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* qs = reinterpret_cast<bf16*>(smem + L::kQ);
  bf16* ks = reinterpret_cast<bf16*>(smem + L::kK);
  bf16* vs = reinterpret_cast<bf16*>(smem + L::kV);
  float* ss = reinterpret_cast<float*>(smem + L::kS);
  bf16* ps = reinterpret_cast<bf16*>(smem + L::kP);
  float* os = reinterpret_cast<float*>(smem + L::kO);
  float* row_m = reinterpret_cast<float*>(smem + L::kM);
  float* row_l = reinterpret_cast<float*>(smem + L::kL);
  int32_t* qp = reinterpret_cast<int32_t*>(smem + L::kQp);
  int32_t* kp = reinterpret_cast<int32_t*>(smem + L::kKp);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kBq;
  const int64_t h = blockIdx.y;
  const int64_t kvh = h / (s.n_heads / s.n_kv_heads);
  constexpr int kVec = D / 8;  // 16-byte vectors per head row

  for (int idx = tid; idx < kBq * kVec; idx += blockDim.x) {
    const int r = idx / kVec, c = idx % kVec;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (q0 + r < s.n) {
      val = *reinterpret_cast<const uint4*>(q + (q0 + r) * s.q_stride + h * D + c * 8);
    }
    *reinterpret_cast<uint4*>(qs + r * L::kLd + c * 8) = val;
  }
  for (int idx = tid; idx < kBq * L::kLdO; idx += blockDim.x) os[idx] = 0.0f;
  if (tid < kBq) {
    row_m[tid] = -INFINITY;
    row_l[tid] = 0.0f;
    qp[tid] = q0 + tid < s.n ? q_pos[q0 + tid] : INT_MIN;
  }
  __syncthreads();
  int32_t qmin = INT_MAX, qmax = INT_MIN;
  for (int r = 0; r < kBq && q0 + r < s.n; ++r) {
    qmin = min(qmin, qp[r]);
    qmax = max(qmax, qp[r]);
  }

  for (int64_t t0 = 0; t0 < s.m; t0 += kBk) {
    if (k_pos[t0] > qmax) break;  // ascending: no later row is visible to any query here
    const int64_t last = min(t0 + kBk, s.m) - 1;
    if (s.window > 0 && static_cast<int64_t>(qmin) - k_pos[last] >= s.window) continue;
    __syncthreads();  // the previous tile's K/V/kp are no longer read
    for (int idx = tid; idx < kBk * kVec; idx += blockDim.x) {
      const int r = idx / kVec, c = idx % kVec;
      uint4 kv4 = make_uint4(0, 0, 0, 0), vv4 = make_uint4(0, 0, 0, 0);
      if (t0 + r < s.m) {
        const int64_t off = (t0 + r) * s.kv_stride + kvh * D + c * 8;
        kv4 = *reinterpret_cast<const uint4*>(k + off);
        vv4 = *reinterpret_cast<const uint4*>(v + off);
      }
      *reinterpret_cast<uint4*>(ks + r * L::kLd + c * 8) = kv4;
      *reinterpret_cast<uint4*>(vs + r * L::kLd + c * 8) = vv4;
    }
    if (tid < kBk) kp[tid] = t0 + tid < s.m ? k_pos[t0 + tid] : INT_MAX;
    __syncthreads();

    // S[16 rows of this warp, 64 keys] = Q K^T.
    const int r0 = warp * 16;
#pragma unroll
    for (int ct = 0; ct < kBk / 16; ++ct) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> b;
        wmma::load_matrix_sync(a, qs + r0 * L::kLd + kk * 16, L::kLd);
        wmma::load_matrix_sync(b, ks + ct * 16 * L::kLd + kk * 16, L::kLd);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(ss + r0 * kLdS + ct * 16, acc, kLdS, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax: two lanes per row, 32 columns each.
    {
      const int r = r0 + (lane >> 1), c0 = (lane & 1) * 32;
      const int32_t qpos = qp[r];
      float mx = -INFINITY;
      for (int c = 0; c < 32; ++c) {
        if (Visible(qpos, kp[c0 + c], s.window)) mx = fmaxf(mx, ss[r * kLdS + c0 + c] * s.scale);
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      const float m_old = row_m[r];
      const float m_new = fmaxf(m_old, mx);
      float sum = 0.0f, alpha = 1.0f;
      if (m_new != -INFINITY) {
        alpha = __expf(m_old - m_new);
        for (int c = 0; c < 32; ++c) {
          float p = 0.0f;
          if (Visible(qpos, kp[c0 + c], s.window))
            p = __expf(ss[r * kLdS + c0 + c] * s.scale - m_new);
          const bf16 pb = __float2bfloat16_rn(p);
          ps[r * kLdP + c0 + c] = pb;
          sum += __bfloat162float(pb);
        }
      } else {
        for (int c = 0; c < 32; ++c) ps[r * kLdP + c0 + c] = __float2bfloat16_rn(0.0f);
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      const float l_old = row_l[r];
      __syncwarp();
      if ((lane & 1) == 0) {
        row_m[r] = m_new;
        row_l[r] = l_old * alpha + sum;
      }
      if (alpha != 1.0f) {
        for (int c = (lane & 1) * (D / 2); c < (lane & 1) * (D / 2) + D / 2; ++c) {
          os[r * L::kLdO + c] *= alpha;
        }
      }
    }
    __syncwarp();

    // O[16 rows, D] += P[16, 64] V[64, D].
#pragma unroll
    for (int dt = 0; dt < D / 16; ++dt) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, os + r0 * L::kLdO + dt * 16, L::kLdO, wmma::mem_row_major);
#pragma unroll
      for (int kt = 0; kt < kBk / 16; ++kt) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> b;
        wmma::load_matrix_sync(a, ps + r0 * kLdP + kt * 16, kLdP);
        wmma::load_matrix_sync(b, vs + kt * 16 * L::kLd + dt * 16, L::kLd);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(os + r0 * L::kLdO + dt * 16, acc, L::kLdO, wmma::mem_row_major);
    }
    __syncwarp();
  }
  __syncthreads();

  // out = O / l, zeros for queries that saw nothing.
  for (int idx = tid; idx < kBq * D; idx += blockDim.x) {
    const int r = idx / D, c = idx % D;
    if (q0 + r >= s.n) continue;
    const float l = row_l[r];
    const float val = l > 0.0f ? os[r * L::kLdO + c] / l : 0.0f;
    out[(q0 + r) * s.out_stride + h * D + c] = FromF<Tout>(val);
  }
}

// ---- Generic ----

constexpr int kGenWarps = 4;
constexpr int kMaxPerLane = 8;  // head_dim <= 256

template <typename T, typename Tout>
__global__ void __launch_bounds__(kGenWarps * 32)
    GenericKernel(const T* __restrict__ q, const int32_t* __restrict__ q_pos,
                  const T* __restrict__ k, const T* __restrict__ v,
                  const int32_t* __restrict__ k_pos, AttnShape s, int splits,
                  Tout* __restrict__ out, float* __restrict__ part) {
  __shared__ float sm_m[kGenWarps], sm_l[kGenWarps];
  __shared__ float sm_o[kGenWarps][kMaxPerLane * 32];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t i = blockIdx.x / s.n_heads, h = blockIdx.x % s.n_heads;
  const int split = blockIdx.y;
  const int64_t kvh = h / (s.n_heads / s.n_kv_heads);
  const int D = static_cast<int>(s.head_dim);
  const int32_t qpos = q_pos[i];
  float qv[kMaxPerLane], acc[kMaxPerLane];
#pragma unroll
  for (int t = 0; t < kMaxPerLane; ++t) {
    const int d = lane + 32 * t;
    qv[t] = d < D ? ToF<T>(q[i * s.q_stride + h * D + d]) * s.scale : 0.0f;
    acc[t] = 0.0f;
  }
  const int64_t per = CeilDiv(s.m, splits);
  const int64_t j0 = split * per, j1 = min(s.m, j0 + per);
  float m = -INFINITY, l = 0.0f;
  for (int64_t j = j0 + warp; j < j1; j += kGenWarps) {
    const int32_t kp = k_pos[j];
    if (kp > qpos) break;  // ascending
    if (!Visible(qpos, kp, s.window)) continue;
    const T* kr = k + j * s.kv_stride + kvh * D;
    float dot = 0.0f;
#pragma unroll
    for (int t = 0; t < kMaxPerLane; ++t) {
      const int d = lane + 32 * t;
      if (d < D) dot += qv[t] * ToF<T>(kr[d]);
    }
    dot = WarpSum(dot);
    const float m_new = fmaxf(m, dot);
    const float alpha = __expf(m - m_new), p = __expf(dot - m_new);
    l = l * alpha + p;
    const T* vr = v + j * s.kv_stride + kvh * D;
#pragma unroll
    for (int t = 0; t < kMaxPerLane; ++t) {
      const int d = lane + 32 * t;
      acc[t] = acc[t] * alpha + (d < D ? p * ToF<T>(vr[d]) : 0.0f);
    }
    m = m_new;
  }
  if (lane == 0) {
    sm_m[warp] = m;
    sm_l[warp] = l;
  }
#pragma unroll
  for (int t = 0; t < kMaxPerLane; ++t) sm_o[warp][lane + 32 * t] = acc[t];
  __syncthreads();
  if (warp != 0) return;
  float mm = -INFINITY;
  for (int w = 0; w < kGenWarps; ++w) mm = fmaxf(mm, sm_m[w]);
  float ll = 0.0f, o[kMaxPerLane];
#pragma unroll
  for (int t = 0; t < kMaxPerLane; ++t) o[t] = 0.0f;
  if (mm != -INFINITY) {
    for (int w = 0; w < kGenWarps; ++w) {
      const float f = __expf(sm_m[w] - mm);  // 0 for warps that saw nothing
      ll += sm_l[w] * f;
#pragma unroll
      for (int t = 0; t < kMaxPerLane; ++t) o[t] += sm_o[w][lane + 32 * t] * f;
    }
  }
  if (splits == 1) {
#pragma unroll
    for (int t = 0; t < kMaxPerLane; ++t) {
      const int d = lane + 32 * t;
      if (d < D) out[i * s.out_stride + h * D + d] = FromF<Tout>(ll > 0.0f ? o[t] / ll : 0.0f);
    }
    return;
  }
  // Partial record of this split: [m, l, o[D]].
  float* rec = part + ((i * s.n_heads + h) * splits + split) * (2 + D);
  if (lane == 0) {
    rec[0] = mm;
    rec[1] = ll;
  }
#pragma unroll
  for (int t = 0; t < kMaxPerLane; ++t) {
    const int d = lane + 32 * t;
    if (d < D) rec[2 + d] = o[t];
  }
}

int Splits(const AttnShape& s) {
  const int64_t blocks = s.n * s.n_heads;
  int64_t sp = 1;
  while (blocks * sp < 264 && s.m / (sp * 2) >= 128 && sp < 64) sp *= 2;
  return static_cast<int>(sp);
}

bool ShapeOk(const AttnShape& s) {
  return s.n_heads > 0 && s.n_kv_heads > 0 && s.n_heads % s.n_kv_heads == 0 && s.head_dim > 0 &&
         s.q_stride >= s.n_heads * s.head_dim && s.kv_stride >= s.n_kv_heads * s.head_dim &&
         s.out_stride >= s.n_heads * s.head_dim;
}

template <int D, typename Tout>
cudaError_t LaunchFlash(const void* q, const int32_t* q_pos, const void* k, const void* v,
                        const int32_t* k_pos, const AttnShape& s, Tout* out, cudaStream_t stream) {
  constexpr size_t bytes = FlashSmem<D>::kBytes;
  cudaError_t e = cudaFuncSetAttribute(
      FlashKernel<D, Tout>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (e != cudaSuccess) return e;
  const dim3 grid(static_cast<unsigned>(CeilDiv(s.n, kBq)), static_cast<unsigned>(s.n_heads));
  FlashKernel<D, Tout><<<grid, 128, bytes, stream>>>(static_cast<const bf16*>(q), q_pos,
                                                     static_cast<const bf16*>(k),
                                                     static_cast<const bf16*>(v), k_pos, s, out);
  return cudaGetLastError();
}

}  // namespace

bool FlashPrefillSupported(const AttnShape& s, const void* q, const void* k, const void* v) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return ShapeOk(s) && (s.head_dim == 64 || s.head_dim == 128) && s.q_stride % 8 == 0 &&
         s.kv_stride % 8 == 0 && aligned(q) && aligned(k) && aligned(v) && s.n_heads < 65536;
}

template <typename Tout>
cudaError_t FlashPrefill(const void* q, const int32_t* q_pos, const void* k, const void* v,
                         const int32_t* k_pos, const AttnShape& s, Tout* out, cudaStream_t stream) {
  if (!FlashPrefillSupported(s, q, k, v)) return cudaErrorInvalidValue;
  if (s.n <= 0) return cudaSuccess;
  if (s.m <= 0) {  // nothing visible: the generic kernel writes the zeros
    return GenericAttention<bf16, Tout>(static_cast<const bf16*>(q), q_pos,
                                        static_cast<const bf16*>(k), static_cast<const bf16*>(v),
                                        k_pos, s, out, nullptr, 0, stream);
  }
  return s.head_dim == 64 ? LaunchFlash<64, Tout>(q, q_pos, k, v, k_pos, s, out, stream)
                          : LaunchFlash<128, Tout>(q, q_pos, k, v, k_pos, s, out, stream);
}

int64_t GenericAttentionWorkspace(const AttnShape& s) {
  const int sp = Splits(s);
  return sp == 1 ? 0
                 : s.n * s.n_heads * sp * (2 + s.head_dim) * static_cast<int64_t>(sizeof(float));
}

template <typename T, typename Tout>
cudaError_t GenericAttention(const T* q, const int32_t* q_pos, const T* k, const T* v,
                             const int32_t* k_pos, const AttnShape& s, Tout* out, void* workspace,
                             int64_t workspace_bytes, cudaStream_t stream) {
  if (!ShapeOk(s) || s.head_dim > 32 * kMaxPerLane) return cudaErrorInvalidValue;
  if (s.n <= 0) return cudaSuccess;
  int splits = Splits(s);
  if (splits > 1 && (workspace == nullptr || workspace_bytes < GenericAttentionWorkspace(s))) {
    splits = 1;
  }
  const dim3 grid(static_cast<unsigned>(s.n * s.n_heads), static_cast<unsigned>(splits));
  GenericKernel<T, Tout><<<grid, kGenWarps * 32, 0, stream>>>(q, q_pos, k, v, k_pos, s, splits, out,
                                                              static_cast<float*>(workspace));
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess || splits == 1) return e;
  CombineSplits<Tout><<<static_cast<unsigned>(s.n * s.n_heads), 128, 0, stream>>>(
      static_cast<const float*>(workspace), s, splits, out);
  return cudaGetLastError();
}

template <typename Tout>
cudaError_t Attention(const void* q, const int32_t* q_pos, const void* k, const void* v,
                      const int32_t* k_pos, const AttnShape& s, Tout* out, void* workspace,
                      int64_t workspace_bytes, cudaStream_t stream) {
  if (s.n >= 16 && FlashPrefillSupported(s, q, k, v)) {
    return FlashPrefill<Tout>(q, q_pos, k, v, k_pos, s, out, stream);
  }
  return GenericAttention<bf16, Tout>(static_cast<const bf16*>(q), q_pos,
                                      static_cast<const bf16*>(k), static_cast<const bf16*>(v),
                                      k_pos, s, out, workspace, workspace_bytes, stream);
}

template cudaError_t FlashPrefill<float>(const void*, const int32_t*, const void*, const void*,
                                         const int32_t*, const AttnShape&, float*, cudaStream_t);
template cudaError_t FlashPrefill<bf16>(const void*, const int32_t*, const void*, const void*,
                                        const int32_t*, const AttnShape&, bf16*, cudaStream_t);
template cudaError_t GenericAttention<float, float>(const float*, const int32_t*, const float*,
                                                    const float*, const int32_t*, const AttnShape&,
                                                    float*, void*, int64_t, cudaStream_t);
template cudaError_t GenericAttention<bf16, float>(const bf16*, const int32_t*, const bf16*,
                                                   const bf16*, const int32_t*, const AttnShape&,
                                                   float*, void*, int64_t, cudaStream_t);
template cudaError_t GenericAttention<bf16, bf16>(const bf16*, const int32_t*, const bf16*,
                                                  const bf16*, const int32_t*, const AttnShape&,
                                                  bf16*, void*, int64_t, cudaStream_t);
template cudaError_t Attention<float>(const void*, const int32_t*, const void*, const void*,
                                      const int32_t*, const AttnShape&, float*, void*, int64_t,
                                      cudaStream_t);
template cudaError_t Attention<bf16>(const void*, const int32_t*, const void*, const void*,
                                     const int32_t*, const AttnShape&, bf16*, void*, int64_t,
                                     cudaStream_t);

}  // namespace semshare::kernels
