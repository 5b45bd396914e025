#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "engine/cpu/thread_pool.h"
#include "engine/model/default_model.h"
#include "tools/commands.h"

namespace semshare::tools {

absl::StatusOr<std::unique_ptr<engine::Model>> LoadModelForCli(const std::string& flag_value,
                                                               double* load_ms) {
  const std::string path = engine::ResolveModelPath(flag_value);
  std::error_code ec;
  if (flag_value.empty() && !std::filesystem::exists(path, ec)) {
    return absl::NotFoundError(absl::StrCat(
        "no model: the default model ", path,
        " is not installed (run scripts/setup), or pass --model PATH (a .gguf file or a Hugging "
        "Face directory) or set SEMSHARE_MODEL"));
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto model = engine::LoadModel(path);
  *load_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return model;
}

double Median(std::vector<double> v) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void SetThreads(int64_t threads) {
  if (threads <= 0) return;
  engine::ThreadPool::SetDefaultThreads(static_cast<int>(threads));
}

}  // namespace semshare::tools
