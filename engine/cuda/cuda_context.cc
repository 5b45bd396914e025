#include "engine/cuda/cuda_context.h"

#include "engine/cuda/cuda_status.h"

namespace semshare::engine::cuda {

int DeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear: no driver / no device is not a sticky error for callers
    return 0;
  }
  return n;
}

ScopedDevice::ScopedDevice(int device) {
  int current = -1;
  if (cudaGetDevice(&current) != cudaSuccess) {
    cudaGetLastError();
    return;
  }
  if (current != device && cudaSetDevice(device) == cudaSuccess) previous_ = current;
}

ScopedDevice::~ScopedDevice() {
  if (previous_ >= 0) cudaSetDevice(previous_);
}

absl::StatusOr<std::unique_ptr<CudaContext>> CudaContext::Create(int device) {
  const int count = DeviceCount();
  if (device < 0 || device >= count) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA device ", device, " requested but ", count, " device(s) visible"));
  }
  std::unique_ptr<CudaContext> c(new CudaContext());
  c->device_ = device;
  c->pool_.BindDevice(device);
  // Also leaves `device` current on the creating thread (single-device callers rely on it).
  SEMSHARE_CUDA_RETURN(cudaSetDevice(device));
  cudaDeviceProp prop{};
  SEMSHARE_CUDA_RETURN(cudaGetDeviceProperties(&prop, device));
  c->name_ = prop.name;
  c->sm_count_ = prop.multiProcessorCount;
  SEMSHARE_CUDA_RETURN(cudaStreamCreateWithFlags(&c->stream_, cudaStreamNonBlocking));
  SEMSHARE_CUDA_RETURN(cudaStreamCreateWithFlags(&c->copy_stream_, cudaStreamNonBlocking));
  absl::StatusOr<const CublasApi*> blas = LoadCublas();
  if (!blas.ok()) return blas.status();
  c->blas_ = *blas;
  SEMSHARE_CUBLAS_RETURN(c->blas_->create(&c->cublas_));
  SEMSHARE_CUBLAS_RETURN(c->blas_->set_stream(c->cublas_, c->stream_));
  // A fixed workspace keeps cuBLAS from allocating behind the pool's accounting.
  auto ws = c->pool_.Allocate(32 << 20);
  if (!ws.ok()) return ws.status();
  c->cublas_workspace_ = std::move(*ws);
  SEMSHARE_CUBLAS_RETURN(c->blas_->set_workspace(c->cublas_, c->cublas_workspace_.data(),
                                                 c->cublas_workspace_.bytes()));
  SEMSHARE_CUBLAS_RETURN(c->blas_->set_math_mode(c->cublas_, CUBLAS_DEFAULT_MATH));
  return c;
}

CudaContext::~CudaContext() {
  ScopedDevice on(device_);
  if (copy_stream_ != nullptr) cudaStreamSynchronize(copy_stream_);
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  if (cublas_ != nullptr) blas_->destroy(cublas_);
  cublas_workspace_.Reset();
  if (copy_stream_ != nullptr) cudaStreamDestroy(copy_stream_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

absl::Status CudaContext::Gemm(const void* x, int64_t ldx, int64_t n, const void* w, int64_t out,
                               int64_t in, void* y, int64_t ldy, bool y_bf16, float alpha,
                               float beta) {
  if (n <= 0) return absl::OkStatus();
  // Row-major y[n, out] = x[n, in] w[out, in]^T is column-major y^T[out, n] = w^T x^T: with w
  // read as a column-major [in, out] matrix (lda = in) transposed, and x^T column-major
  // [in, n] (ldb = ldx).
  SEMSHARE_CUBLAS_RETURN(blas_->gemm_ex(
      cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out), static_cast<int>(n),
      static_cast<int>(in), &alpha, w, CUDA_R_16BF, static_cast<int>(in), x, CUDA_R_16BF,
      static_cast<int>(ldx), &beta, y, y_bf16 ? CUDA_R_16BF : CUDA_R_32F, static_cast<int>(ldy),
      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return absl::OkStatus();
}

absl::Status CudaContext::Upload(void* dst, const void* src, int64_t bytes) {
  if (bytes <= 0) return absl::OkStatus();
  SEMSHARE_CUDA_RETURN(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
  return absl::OkStatus();
}

absl::Status CudaContext::Download(void* dst, const void* src, int64_t bytes) {
  if (bytes <= 0) return absl::OkStatus();
  SEMSHARE_CUDA_RETURN(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
  return absl::OkStatus();
}

absl::Status CudaContext::Sync() {
  SEMSHARE_CUDA_RETURN(cudaStreamSynchronize(stream_));
  return absl::OkStatus();
}

absl::Status CudaContext::Check(const char* what) { return CudaStatus(cudaGetLastError(), what); }

}  // namespace semshare::engine::cuda
