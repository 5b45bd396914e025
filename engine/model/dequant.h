// Dequantisation of GGUF tensor data to float32, bit-exact with ggml's reference
// `dequantize_row_*` functions (and gguf-py's numpy port, which tests/oracle checks against).
#ifndef SEMSHARE_ENGINE_MODEL_DEQUANT_H_
#define SEMSHARE_ENGINE_MODEL_DEQUANT_H_

#include <cstdint>

#include "absl/status/status.h"
#include "engine/model/ggml_type.h"

namespace semshare::engine {

// Converts `n` consecutive elements starting at `src` (raw bytes of type `type`) into dst[n].
// n must be a whole number of blocks. Supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
// Q4_K, Q5_K, Q6_K. Thread-safe; no allocation.
// Errors: InvalidArgument for a partial block, Unimplemented for other types.
absl::Status Dequantize(GgmlType type, const void* src, int64_t n, float* dst);

// IEEE half and bfloat16 to float (exact).
float HalfToFloat(uint16_t h);
float Bf16ToFloat(uint16_t h);
uint16_t FloatToHalf(float f);  // round to nearest even
uint16_t FloatToBf16(float f);  // round to nearest even

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_MODEL_DEQUANT_H_
