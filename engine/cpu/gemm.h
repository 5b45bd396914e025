// Float GEMM for the CPU backend: OpenBLAS sgemm/sgemv run single-threaded on the backend's own
// ThreadPool (engine/cpu/thread_pool.h), each thread computing one block of C.
//
// Why not OpenBLAS' threads: the backend alternates pool work (dequantised weight tiles, decode
// attention, norms) with GEMMs many times per layer. With both thread sets live, OpenBLAS'
// idle workers spin in sched_yield for up to 2^28 cycles after each call and compete for the
// cores with the pool's workers: at 16 batched decode streams on 2 cores, 38% of the server's
// CPU time went to yields and context switches (perf, 2026-12-05). So OpenBLAS is set to one
// thread (PinBlasToOneThread: the CpuBackend's constructor and every Gemm call make sure of it,
// for the whole process) and the split happens here.
//
// A split along C's rows or columns leaves each element's sum over k to the same kernel, in the
// same order as an unsplit call on the same shape block; results may differ from one
// multithreaded OpenBLAS call by float summation order (tests bound that: kGemmOrderRelBound).
#ifndef SEMSHARE_ENGINE_CPU_GEMM_H_
#define SEMSHARE_ENGINE_CPU_GEMM_H_

#include <cstdint>

namespace semshare::engine {

// Sets OpenBLAS to one thread for the process (idempotent, thread-safe).
void PinBlasToOneThread();

enum class GemmB {
  kTransposed,  // B is [n, k] (row-major), C = A B^T: a weight matrix as stored
  kPlain,       // B is [k, n] (row-major), C = A B
};

// C[m, n] = alpha * A[m, k] op(B) + beta * C, row-major with leading dimensions lda, ldb, ldc.
// Splits the larger of m and n across ThreadPool::Default() when the product is large enough to
// pay for it. Must not be called from inside a ParallelFor of the default pool.
void Gemm(GemmB b_layout, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// The same product on the calling thread only (single-threaded OpenBLAS): for callers that run
// beside the engine's pool (token matching on a front worker) or inside one of its ranges.
void GemmOnThisThread(GemmB b_layout, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                      int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_CPU_GEMM_H_
