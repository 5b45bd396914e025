// A loaded model: config, float32 weights, tokenizer and fingerprint. Immutable after load and
// shared (std::shared_ptr<const Model>) between requests and backends.
#ifndef SEMSHARE_ENGINE_MODEL_MODEL_H_
#define SEMSHARE_ENGINE_MODEL_MODEL_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/model/model_config.h"
#include "engine/model/weights.h"
#include "engine/text/tokenizer.h"

namespace semshare::engine {

struct Model {
  ModelConfig config;
  ModelWeights weights;
  std::unique_ptr<Tokenizer> tokenizer;
  // Stable hash of the config and the tensor data (16 hex digits); names the cache namespace
  // so references are never reused across different weights.
  std::string fingerprint;
  std::string source;  // the path it was loaded from
};

// Loads a .gguf file, or a Hugging Face model directory (config.json + model.safetensors or
// model.safetensors.index.json + tokenizer.json). NotFound, InvalidArgument or Unimplemented
// with a message naming the file and the problem.
absl::StatusOr<std::unique_ptr<Model>> LoadModel(const std::string& path);

// The two format-specific loaders LoadModel dispatches to.
absl::StatusOr<std::unique_ptr<Model>> LoadGgufModel(const std::string& path);
absl::StatusOr<std::unique_ptr<Model>> LoadHfDirectory(const std::string& dir);

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_MODEL_MODEL_H_
