// Fuzz target: the GGUF reader (engine/model/gguf.h) on arbitrary bytes, and everything that reads
// a parsed file's metadata without weights: every typed getter on every key, the tokenizer loader
// (Tokenizer::FromGguf), and dequantisation of the small tensors whose data the reader handed out.
//
// Properties checked beyond "no crash, no sanitizer report": a tensor the reader accepts lies
// inside the bytes it was given, and its n_bytes agrees with its type and element count.
#include <cstdint>
#include <span>
#include <vector>

#include "engine/model/dequant.h"
#include "engine/model/gguf.h"
#include "engine/text/tokenizer.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using semshare::engine::GgufFile;

// Dequantise at most this many elements per tensor: enough to reach every block kind, small
// enough to keep executions fast.
constexpr int64_t kMaxDequantElements = 1 << 14;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = GgufFile::FromBytes(std::span<const uint8_t>(data, size));
  if (!file.ok()) return 0;
  const GgufFile& f = **file;
  for (const auto& [key, value] : f.metadata()) {
    (void)f.GetInt(key);
    (void)f.GetFloat(key);
    (void)f.GetBool(key);
    (void)f.GetString(key);
    (void)f.GetStringArray(key);
    (void)f.GetIntArray(key);
    (void)f.GetFloatArray(key);
    FUZZ_CHECK(f.Find(key) == &value);
  }
  const std::span<const uint8_t> bytes = f.bytes();
  std::vector<float> out;
  for (const auto& t : f.tensors()) {
    FUZZ_CHECK(f.FindTensor(t.name) != nullptr);
    FUZZ_CHECK(t.n_bytes >= 0 && t.data >= bytes.data() &&
               t.data + t.n_bytes <= bytes.data() + bytes.size());
    FUZZ_CHECK(t.n_bytes == semshare::engine::GgmlRowBytes(t.type, t.n_elements));
    if (t.n_elements <= kMaxDequantElements) {
      out.resize(static_cast<size_t>(t.n_elements));
      (void)semshare::engine::Dequantize(t.type, t.data, t.n_elements, out.data());
    }
  }
  auto tok = semshare::engine::Tokenizer::FromGguf(f);
  if (tok.ok()) {
    // A loaded tokenizer must survive its own vocabulary.
    const std::vector<int32_t> ids = (*tok)->Encode("Hello <|im_start|> 123", true);
    (void)(*tok)->Decode(ids);
  }
  return 0;
}
