// Tensor element types of the GGUF format (values are ggml's `enum ggml_type`) and their block
// layouts. A quantised type stores `block_size` consecutive elements of a row in `type_size`
// bytes; rows are a whole number of blocks.
#ifndef SEMSHARE_ENGINE_MODEL_GGML_TYPE_H_
#define SEMSHARE_ENGINE_MODEL_GGML_TYPE_H_

#include <cstdint>
#include <optional>
#include <string_view>

namespace semshare::engine {

enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kBF16 = 30,
};

struct GgmlTypeTraits {
  std::string_view name;
  int64_t block_size;   // elements per block (1 for plain types)
  int64_t type_size;    // bytes per block
  bool can_dequantize;  // Dequantize() (dequant.h) supports it
};

// Traits of a raw type id read from a file; nullopt for ids this build does not know.
std::optional<GgmlTypeTraits> GetGgmlTypeTraits(uint32_t type);

// Bytes of a row of `n` elements; -1 when n is not a whole number of blocks or type unknown.
int64_t GgmlRowBytes(GgmlType type, int64_t n);

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_MODEL_GGML_TYPE_H_
