// Random ggml weight blocks for kernel and upload tests: random code bytes with scale fields of
// trained-weight magnitude. Any such byte pattern is a valid block, and random codes reach every
// nibble and bit layout.
#ifndef SEMSHARE_TESTS_RANDOM_BLOCKS_H_
#define SEMSHARE_TESTS_RANDOM_BLOCKS_H_

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "engine/model/dequant.h"

namespace semshare::testing {

inline void PutHalf(uint8_t* p, float f) {
  const uint16_t h = engine::FloatToHalf(f);
  std::memcpy(p, &h, 2);
}

// `rows` random rows of `cols` elements of `type`: random code bytes, then scale fields set to
// magnitudes typical of trained weights (|w| ~ 0.01 .. 0.1), so no term overflows.
inline std::vector<uint8_t> RandomBlocks(engine::GgmlType type, int64_t rows, int64_t cols,
                                         uint64_t seed) {
  const auto tr = *engine::GetGgmlTypeTraits(static_cast<uint32_t>(type));
  const int64_t nb = rows * cols / tr.block_size;
  std::vector<uint8_t> v(static_cast<size_t>(nb * tr.type_size));
  std::mt19937_64 rng(seed);
  for (uint8_t& b : v) b = static_cast<uint8_t>(rng());
  std::uniform_real_distribution<float> u01(0.0f, 1.0f);
  for (int64_t b = 0; b < nb; ++b) {
    uint8_t* p = v.data() + b * tr.type_size;
    switch (type) {
      case engine::GgmlType::kQ4_0:
      case engine::GgmlType::kQ5_0:
      case engine::GgmlType::kQ8_0:
        PutHalf(p, (u01(rng) - 0.5f) * (type == engine::GgmlType::kQ8_0 ? 0.002f : 0.02f));
        break;
      case engine::GgmlType::kQ4_1:
      case engine::GgmlType::kQ5_1:
        PutHalf(p, u01(rng) * 0.01f);
        PutHalf(p + 2, -u01(rng) * 0.1f);
        break;
      case engine::GgmlType::kQ4_K:
      case engine::GgmlType::kQ5_K:
        PutHalf(p, u01(rng) * 0.0005f);
        PutHalf(p + 2, u01(rng) * 0.002f);
        break;
      case engine::GgmlType::kQ6_K:
        PutHalf(p + 208, (u01(rng) - 0.5f) * 0.0005f);
        break;
      case engine::GgmlType::kF16:
        for (int64_t j = 0; j < tr.type_size; j += 2) PutHalf(p + j, (u01(rng) - 0.5f) * 0.2f);
        break;
      case engine::GgmlType::kBF16:
        for (int64_t j = 0; j < tr.type_size; j += 2) {
          const uint16_t h = engine::FloatToBf16((u01(rng) - 0.5f) * 0.2f);
          std::memcpy(p + j, &h, 2);
        }
        break;
      default:
        break;
    }
  }
  return v;
}

}  // namespace semshare::testing

#endif  // SEMSHARE_TESTS_RANDOM_BLOCKS_H_
