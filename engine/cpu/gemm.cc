#include "engine/cpu/gemm.h"

#include <cblas.h>

#include <algorithm>

#include "engine/cpu/thread_pool.h"

namespace semshare::engine {
namespace {

// Multiply-adds below which a GEMM runs on one thread: a fork-join costs a few microseconds.
constexpr int64_t kMinParallelMacs = int64_t{1} << 17;

}  // namespace

void PinBlasToOneThread() {
  static const bool once = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)once;
}

void GemmOnThisThread(GemmB b_layout, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                      int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  PinBlasToOneThread();
  if (m == 1 && b_layout == GemmB::kTransposed) {
    // One row against a weight matrix: y[n] = B[n, k] a, OpenBLAS' gemv kernel.
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(n), static_cast<int>(k), alpha, b,
                static_cast<int>(ldb), a, 1, beta, c, 1);
    return;
  }
  if (m == 1) {
    // One row times a plain [k, n] matrix: y[n] = B^T a, gemv on B's rows (nothing packed).
    cblas_sgemv(CblasRowMajor, CblasTrans, static_cast<int>(k), static_cast<int>(n), alpha, b,
                static_cast<int>(ldb), a, 1, beta, c, 1);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans,
              b_layout == GemmB::kTransposed ? CblasTrans : CblasNoTrans, static_cast<int>(m),
              static_cast<int>(n), static_cast<int>(k), alpha, a, static_cast<int>(lda), b,
              static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
}

void Gemm(GemmB b_layout, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  ThreadPool& pool = ThreadPool::Default();
  if (pool.size() == 1 || m * n * k < kMinParallelMacs) {
    GemmOnThisThread(b_layout, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  if (n >= m) {
    // Column blocks of C, one per thread: block [n0, n1) reads B's rows n0.. (transposed) or
    // columns n0.. (plain). `chunk` only keeps a block from being too small to pay for its thread.
    const int64_t chunk = std::max<int64_t>(16, kMinParallelMacs / std::max<int64_t>(m * k, 1));
    pool.ParallelFor(n, chunk, [&](int64_t n0, int64_t n1) {
      const float* bb = b_layout == GemmB::kTransposed ? b + n0 * ldb : b + n0;
      GemmOnThisThread(b_layout, m, n1 - n0, k, alpha, a, lda, bb, ldb, beta, c + n0, ldc);
    });
  } else {
    const int64_t chunk = std::max<int64_t>(4, kMinParallelMacs / std::max<int64_t>(n * k, 1));
    pool.ParallelFor(m, chunk, [&](int64_t m0, int64_t m1) {
      GemmOnThisThread(b_layout, m1 - m0, n, k, alpha, a + m0 * lda, lda, b, ldb, beta,
                       c + m0 * ldc, ldc);
    });
  }
}

}  // namespace semshare::engine
