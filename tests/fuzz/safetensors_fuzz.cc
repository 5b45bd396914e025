// Fuzz target: the safetensors header parser (engine/model/safetensors.h) on arbitrary bytes, plus
// the float32 conversion of the small tensors it accepts.
//
// Properties checked beyond "no crash, no sanitizer report": every accepted tensor holds exactly
// n_elements * dtype-size bytes, its first and last bytes are readable (under ASan: inside the
// parser's copy of the input), and the non-empty tensors, in the order tensors() gives, do not
// overlap and span no more than the input.
#include <cstdint>
#include <span>
#include <vector>

#include "engine/model/safetensors.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using semshare::engine::SafetensorsFile;

constexpr int64_t kMaxConvertElements = 1 << 14;  // keep executions fast

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = SafetensorsFile::FromBytes(std::span<const uint8_t>(data, size), "<fuzz>");
  if (!file.ok()) return 0;
  const SafetensorsFile& f = **file;
  const uint8_t* lo = nullptr;
  const uint8_t* prev_end = nullptr;
  std::vector<float> out;
  for (const auto& t : f.tensors()) {
    FUZZ_CHECK(f.Find(t.name) == &t);
    FUZZ_CHECK(t.n_elements >= 0);
    FUZZ_CHECK(static_cast<int64_t>(t.bytes.size()) ==
               t.n_elements *
                   static_cast<int64_t>(semshare::engine::SafetensorsDtypeSize(t.dtype)));
    if (!t.bytes.empty()) {
      volatile uint8_t probe = t.bytes.front();
      probe = t.bytes.back();
      (void)probe;
      if (lo == nullptr) lo = t.bytes.data();
      FUZZ_CHECK(prev_end == nullptr || t.bytes.data() >= prev_end);
      prev_end = t.bytes.data() + t.bytes.size();
      // Sorted by offset, so the first non-empty tensor starts lowest; all lie within `size`.
      FUZZ_CHECK(static_cast<size_t>(prev_end - lo) <= size);
    }
    if (t.n_elements <= kMaxConvertElements) {
      out.resize(static_cast<size_t>(t.n_elements));
      (void)semshare::engine::SafetensorsToFloat32(t, std::span<float>(out));
    }
  }
  return 0;
}
