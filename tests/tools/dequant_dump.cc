// Test helper for tests/oracle/dequant_oracle_test.py: dequantises raw ggml bytes with
// engine/model/dequant.h so that Python can compare the result with gguf-py.
//
//   dequant_dump TYPE_NAME N IN.bin OUT.f32   reads N elements of TYPE_NAME (e.g. Q4_K) from
//                                             IN.bin (exactly their size) and writes N float32
//   dequant_dump --bench MODEL.gguf           dequantises every supported tensor of a model and
//                                             prints the time taken (a measurement, not a test)
// Exit status 0 on success, 1 with a message on stderr otherwise.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "engine/model/dequant.h"
#include "engine/model/ggml_type.h"
#include "engine/model/gguf.h"

namespace {

using semshare::engine::GgmlType;

std::optional<GgmlType> TypeFromName(const std::string& name) {
  for (uint32_t id = 0; id < 64; ++id) {
    auto traits = semshare::engine::GetGgmlTypeTraits(id);
    if (traits && traits->name == name) return static_cast<GgmlType>(id);
  }
  return std::nullopt;
}

int Fail(const std::string& msg) {
  std::fprintf(stderr, "dequant_dump: %s\n", msg.c_str());
  return 1;
}

int Bench(const std::string& path) {
  auto file = semshare::engine::GgufFile::Open(path);
  if (!file.ok()) return Fail(std::string(file.status().message()));
  std::vector<float> out;
  int64_t elements = 0;
  double seconds = 0;
  for (const auto& t : (*file)->tensors()) {
    out.resize(static_cast<size_t>(t.n_elements));
    const auto start = std::chrono::steady_clock::now();
    absl::Status s = semshare::engine::Dequantize(t.type, t.data, t.n_elements, out.data());
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!s.ok()) return Fail(t.name + ": " + std::string(s.message()));
    elements += t.n_elements;
  }
  std::printf("dequantised %zu tensors, %lld elements in %.3f s (%.0f M elements/s)\n",
              (*file)->tensors().size(), static_cast<long long>(elements), seconds,
              elements / seconds / 1e6);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--bench") return Bench(argv[2]);
  if (argc != 5) {
    return Fail("usage: dequant_dump TYPE_NAME N IN.bin OUT.f32 | dequant_dump --bench MODEL");
  }
  const auto type = TypeFromName(argv[1]);
  if (!type) return Fail(std::string("unknown type name ") + argv[1]);
  char* end = nullptr;
  const long long n = std::strtoll(argv[2], &end, 10);
  if (end == argv[2] || *end != '\0' || n < 0) return Fail(std::string("bad count ") + argv[2]);
  const int64_t want_bytes = semshare::engine::GgmlRowBytes(*type, n);
  if (want_bytes < 0) return Fail("count is not a whole number of blocks");

  std::ifstream in(argv[3], std::ios::binary);
  if (!in) return Fail(std::string("cannot read ") + argv[3]);
  std::vector<uint8_t> raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (static_cast<int64_t>(raw.size()) != want_bytes) {
    return Fail(std::string(argv[3]) + " has " + std::to_string(raw.size()) + " bytes, expected " +
                std::to_string(want_bytes));
  }
  std::vector<float> out(static_cast<size_t>(n));
  absl::Status s = semshare::engine::Dequantize(*type, raw.data(), n, out.data());
  if (!s.ok()) return Fail(std::string(s.message()));
  std::ofstream o(argv[4], std::ios::binary);
  o.write(reinterpret_cast<const char*>(out.data()),
          static_cast<std::streamsize>(out.size() * sizeof(float)));
  if (!o.good()) return Fail(std::string("cannot write ") + argv[4]);
  return 0;
}
