// Reader of GGUF v2/v3 files (the llama.cpp model format), memory-mapped.
//
// File layout (little-endian): magic "GGUF", u32 version, u64 tensor_count, u64 kv_count,
// kv_count metadata pairs (string key, u32 value type, value), tensor_count tensor infos
// (string name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset), padding to
// `general.alignment` (default 32), then the tensor data; each offset is relative to the data
// section and aligned. Strings are u64 length + bytes (no terminator).
//
// Every read is bounds-checked: truncated, corrupt or unsupported input gives an absl::Status
// naming what is wrong and where, never a crash or an unbounded allocation.
// A GgufFile is immutable after Open and safe to share between threads.
#ifndef SEMSHARE_ENGINE_MODEL_GGUF_H_
#define SEMSHARE_ENGINE_MODEL_GGUF_H_

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/model/ggml_type.h"
#include "engine/model/mapped_file.h"

namespace semshare::engine {

enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

std::string_view GgufValueTypeName(GgufValueType type);

// One metadata value. Scalars live in the field of their kind (all integer types and bool in
// `i` (uint64 values bit-cast), floats in `f`, strings in `s`); an array has `elem_type` and
// its elements in `arr` (strings and nested arrays included).
struct GgufValue {
  GgufValueType type = GgufValueType::kUint8;
  int64_t i = 0;
  double f = 0;
  std::string s;
  GgufValueType elem_type = GgufValueType::kUint8;
  std::vector<GgufValue> arr;
};

struct GgufTensor {
  std::string name;
  GgmlType type = GgmlType::kF32;
  std::vector<int64_t> ne;  // dims, ne[0] fastest (row length); ggml order, reverse of numpy's
  int64_t n_elements = 0;
  int64_t n_bytes = 0;
  uint64_t offset = 0;            // within the data section
  const uint8_t* data = nullptr;  // into the mapping; valid while the GgufFile lives
};

class GgufFile {
 public:
  // Maps and parses `path`. NotFound / PermissionDenied for the file, InvalidArgument for
  // corrupt content, Unimplemented for a version or tensor type this reader does not support.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);
  // Parses bytes held in memory (tests, fuzzers); the bytes are copied.
  static absl::StatusOr<std::unique_ptr<GgufFile>> FromBytes(std::span<const uint8_t> bytes);

  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  const std::string& path() const { return path_; }
  std::span<const uint8_t> bytes() const { return {base_, size_}; }

  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const GgufValue* Find(std::string_view key) const;
  bool Has(std::string_view key) const { return Find(key) != nullptr; }
  // Typed getters: NotFound when absent, InvalidArgument when the stored type does not fit
  // (integers of any width convert to int64 when in range; float accepts float32/64).
  absl::StatusOr<int64_t> GetInt(std::string_view key) const;
  absl::StatusOr<double> GetFloat(std::string_view key) const;
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  absl::StatusOr<std::string> GetString(std::string_view key) const;
  absl::StatusOr<std::vector<std::string>> GetStringArray(std::string_view key) const;
  absl::StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const;
  absl::StatusOr<std::vector<double>> GetFloatArray(std::string_view key) const;

  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* FindTensor(std::string_view name) const;

 private:
  GgufFile() = default;
  absl::Status Parse();

  std::string path_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  MappedFile mapping_;          // the file (Open), or empty
  std::vector<uint8_t> owned_;  // copied bytes (FromBytes)
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::map<std::string, GgufValue> metadata_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_MODEL_GGUF_H_
