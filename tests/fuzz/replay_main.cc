// Replay driver for the fuzz targets in builds without libFuzzer (gcc, the ASan + UBSan build):
// runs LLVMFuzzerTestOneInput once on every regular file under each argument (a file or a
// directory, walked recursively, in sorted order so runs are reproducible) and prints counts.
//
// Contract: exit 0 when every input ran; exit 1 when an argument does not exist or names no
// input at all (an empty corpus would make the regression test pass vacuously). A crash or a
// sanitizer report in a target ends the process, which is what makes the ctest fail.
// LLVMFuzzerInitialize runs first when the target defines it (weak reference).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) __attribute__((weak));

namespace {

namespace fs = std::filesystem;

bool ReadFile(const fs::path& path, std::vector<uint8_t>* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  out->assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (LLVMFuzzerInitialize != nullptr) LLVMFuzzerInitialize(&argc, &argv);
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR_OR_FILE...\n", argv[0]);
    return 1;
  }
  int64_t total_inputs = 0, total_bytes = 0;
  bool ok = true;
  for (int a = 1; a < argc; ++a) {
    const fs::path root(argv[a]);
    std::error_code ec;
    std::vector<fs::path> files;
    if (fs::is_regular_file(root, ec)) {
      files.push_back(root);
    } else if (fs::is_directory(root, ec)) {
      for (const auto& e : fs::recursive_directory_iterator(root, ec)) {
        if (e.is_regular_file()) files.push_back(e.path());
      }
    }
    if (files.empty()) {
      std::fprintf(stderr, "%s: no inputs (missing or empty)\n", argv[a]);
      ok = false;
      continue;
    }
    std::sort(files.begin(), files.end());
    int64_t bytes = 0;
    std::vector<uint8_t> data;
    for (const fs::path& p : files) {
      if (!ReadFile(p, &data)) {
        std::fprintf(stderr, "%s: cannot read\n", p.c_str());
        ok = false;
        continue;
      }
      // An exact-size heap copy, so ASan catches a read one byte past the input.
      std::unique_ptr<uint8_t[]> copy(new uint8_t[std::max<size_t>(data.size(), 1)]);
      std::copy(data.begin(), data.end(), copy.get());
      LLVMFuzzerTestOneInput(copy.get(), data.size());
      bytes += static_cast<int64_t>(data.size());
    }
    std::printf("%s: %zu inputs, %lld bytes replayed\n", argv[a], files.size(),
                static_cast<long long>(bytes));
    total_inputs += static_cast<int64_t>(files.size());
    total_bytes += bytes;
  }
  std::printf("total: %lld inputs, %lld bytes\n", static_cast<long long>(total_inputs),
              static_cast<long long>(total_bytes));
  return ok ? 0 : 1;
}
