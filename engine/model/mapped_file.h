// A read-only memory mapping of a whole file (RAII, move-only): what the GGUF and safetensors
// readers parse in place. Thread-safe to read once opened.
#ifndef SEMSHARE_ENGINE_MODEL_MAPPED_FILE_H_
#define SEMSHARE_ENGINE_MODEL_MAPPED_FILE_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace semshare::engine {

class MappedFile {
 public:
  MappedFile() = default;
  // Maps `path` (`what` names it in errors, e.g. "model file"). NotFound / PermissionDenied for
  // the file, InvalidArgument for a non-regular file, ResourceExhausted when mmap fails. An
  // empty file maps to size 0 and a null data pointer.
  static absl::StatusOr<MappedFile> Open(const std::string& path, const std::string& what);

  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return static_cast<const uint8_t*>(addr_); }
  size_t size() const { return size_; }

 private:
  void* addr_ = nullptr;
  size_t size_ = 0;
};

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_MODEL_MAPPED_FILE_H_
