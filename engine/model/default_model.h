// Where the default model lives: the one resolver the CLI, the server and the tests use when no
// --model flag is given. Header-only (getenv and string concatenation) so every layer can call it.
//
// Order: the flag if not empty; else $SEMSHARE_MODEL if set and not empty; else the copy
// scripts/setup installs (scripts/common.sh defines the same path):
//   ${SEMSHARE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/semshare}/models/<kDefaultModelFile>
// Empty variables count as unset, as in the shell's ${VAR:-default}.
#ifndef SEMSHARE_ENGINE_MODEL_DEFAULT_MODEL_H_
#define SEMSHARE_ENGINE_MODEL_DEFAULT_MODEL_H_

#include <cstdlib>
#include <string>
#include <string_view>

namespace semshare::engine {

inline constexpr std::string_view kDefaultModelFile = "SmolLM2-135M-Instruct.Q4_1.gguf";

namespace default_model_internal {
inline std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}
}  // namespace default_model_internal

// The installed default model's path (whether or not the file exists).
inline std::string InstalledDefaultModelPath() {
  using default_model_internal::Env;
  std::string cache = Env("SEMSHARE_CACHE_DIR");
  if (cache.empty()) {
    std::string base = Env("XDG_CACHE_HOME");
    if (base.empty()) base = Env("HOME") + "/.cache";
    cache = base + "/semshare";
  }
  return cache + "/models/" + std::string(kDefaultModelFile);
}

// The model to load: `flag`, else $SEMSHARE_MODEL, else InstalledDefaultModelPath().
inline std::string ResolveModelPath(std::string_view flag) {
  if (!flag.empty()) return std::string(flag);
  if (std::string env = default_model_internal::Env("SEMSHARE_MODEL"); !env.empty()) return env;
  return InstalledDefaultModelPath();
}

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_MODEL_DEFAULT_MODEL_H_
