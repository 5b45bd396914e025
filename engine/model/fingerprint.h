// Model fingerprint: a stable 64-bit hash (XXH3) of the model config and every tensor's name,
// shape and raw stored bytes, printed as 16 hex digits. Two loads of the same file give the
// same fingerprint; any change to a weight or hyper-parameter changes it. Reference-cache
// namespaces carry it so KV is never reused across different models.
#ifndef SEMSHARE_ENGINE_MODEL_FINGERPRINT_H_
#define SEMSHARE_ENGINE_MODEL_FINGERPRINT_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "engine/model/model_config.h"

namespace semshare::engine {

class FingerprintBuilder {
 public:
  FingerprintBuilder();
  ~FingerprintBuilder();
  void AddConfig(const ModelConfig& config);
  // Tensors may be added in any order; the result does not depend on it.
  void AddTensor(std::string_view name, std::span<const int64_t> shape, const void* bytes,
                 size_t n_bytes);
  std::string Finish() const;

 private:
  uint64_t config_hash_ = 0;
  uint64_t tensor_sum_ = 0;  // order-independent combination of per-tensor hashes
};

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_MODEL_FINGERPRINT_H_
