// RoPE (algorithm note in rope.cuh).
#include "kernels/common.cuh"
#include "kernels/rope.cuh"

namespace semshare::kernels {
namespace {

template <typename Tin, typename Tout>
__global__ void RopeKernel(const Tin* x, int64_t x_stride, const int32_t* __restrict__ pos,
                           RopeArgs a, Tout* y, int64_t y_stride, const int32_t* rows) {
  const int64_t i = blockIdx.x;
  const Tin* xr = x + i * x_stride;
  Tout* yr = y + (rows != nullptr ? static_cast<int64_t>(rows[i]) : i) * y_stride;
  const int64_t half = a.rope_dim / 2;
  const double p = static_cast<double>(pos[i]);
  // Rotated pairs.
  for (int64_t t = threadIdx.x; t < a.heads * half; t += blockDim.x) {
    const int64_t h = t / half, k = t - h * half;
    double s, c;
    sincos(p * static_cast<double>(a.inv_freq[k]), &s, &c);
    const float cs = static_cast<float>(c), sn = static_cast<float>(s);
    const int64_t i0 = h * a.head_dim + (a.kind == RopeKind::kAdjacent ? 2 * k : k);
    const int64_t i1 = i0 + (a.kind == RopeKind::kAdjacent ? 1 : half);
    const float u = ToF<Tin>(xr[i0]), v = ToF<Tin>(xr[i1]);
    yr[i0] = FromF<Tout>(u * cs - v * sn);
    yr[i1] = FromF<Tout>(u * sn + v * cs);
  }
  // Unrotated tail dims of each head (none for Llama-family models).
  const int64_t tail = a.head_dim - a.rope_dim;
  for (int64_t t = threadIdx.x; t < a.heads * tail; t += blockDim.x) {
    const int64_t h = t / tail, c = a.rope_dim + (t - h * tail);
    yr[h * a.head_dim + c] = FromF<Tout>(ToF<Tin>(xr[h * a.head_dim + c]));
  }
}

}  // namespace

template <typename Tin, typename Tout>
cudaError_t Rope(const Tin* x, int64_t x_stride, const int32_t* pos, int64_t n,
                 const RopeArgs& args, Tout* y, int64_t y_stride, const int32_t* rows,
                 cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (args.rope_dim % 2 != 0 || args.rope_dim > args.head_dim) return cudaErrorInvalidValue;
  RopeKernel<Tin, Tout>
      <<<static_cast<unsigned>(n), 128, 0, stream>>>(x, x_stride, pos, args, y, y_stride, rows);
  return cudaGetLastError();
}

#define SEMSHARE_INST(TI, TO)                                                                     \
  template cudaError_t Rope<TI, TO>(const TI*, int64_t, const int32_t*, int64_t, const RopeArgs&, \
                                    TO*, int64_t, const int32_t*, cudaStream_t);
SEMSHARE_INST(float, float)
SEMSHARE_INST(float, bf16)
SEMSHARE_INST(bf16, bf16)
#undef SEMSHARE_INST

}  // namespace semshare::kernels
