// Reader of the safetensors format (Hugging Face checkpoints), memory-mapped.
//
// File layout: u64 little-endian header length N, then N bytes of UTF-8 JSON
//   {"name": {"dtype": "F16", "shape": [d0, d1, ...], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "value", ...}}   (metadata optional, string -> string)
// then the data section; offsets are relative to its start, shapes are in numpy order
// (slowest dimension first), data is little-endian and row-major.
//
// Everything is validated before a tensor is handed out: header length within the file and
// below kMaxHeaderBytes, a JSON object, no duplicate names, a known dtype, non-negative dims
// whose product times the dtype size equals end - begin, offsets within the data section and
// no two tensors overlapping. Errors are absl::Status values naming the file, the tensor and the
// problem; corrupt input never crashes or allocates without bound.
// A SafetensorsFile is immutable after Open and safe to share between threads.
#ifndef SEMSHARE_ENGINE_MODEL_SAFETENSORS_H_
#define SEMSHARE_ENGINE_MODEL_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/model/mapped_file.h"

namespace semshare::engine {

// Every dtype the format defines. Only kF32, kF16 and kBF16 convert to float32 (what Llama-
// family checkpoints use); the others parse but ToFloat32 answers Unimplemented.
enum class SafetensorsDtype {
  kBool,
  kU8,
  kI8,
  kF8E5M2,
  kF8E4M3,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kF64,
  kI64,
  kU64,
};

std::string_view SafetensorsDtypeName(SafetensorsDtype dtype);  // "F16", "BF16", ...
size_t SafetensorsDtypeSize(SafetensorsDtype dtype);            // bytes per element

struct SafetensorsTensor {
  std::string name;
  SafetensorsDtype dtype = SafetensorsDtype::kF32;
  std::vector<int64_t> shape;      // numpy order: shape[0] slowest; empty for a scalar
  int64_t n_elements = 0;          // product of shape (1 for a scalar)
  std::span<const uint8_t> bytes;  // [n_elements * dtype size], into the file's mapping;
                                   // valid while the SafetensorsFile lives; may be unaligned
};

class SafetensorsFile {
 public:
  // Header cap: real checkpoints have headers of a few hundred KB; this bounds the memory a
  // hostile header can make the JSON parser use.
  static constexpr uint64_t kMaxHeaderBytes = 100u << 20;

  // Maps and parses `path`. NotFound / PermissionDenied for the file, InvalidArgument for
  // corrupt content.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  // Parses bytes held in memory (tests, fuzzers); the bytes are copied. `name` is used in
  // error messages in place of a path.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> FromBytes(
      std::span<const uint8_t> bytes, std::string_view name = "<memory>");

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  // Tensors in the order of their data offsets.
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  const SafetensorsTensor* Find(std::string_view name) const;
  // The "__metadata__" object (empty when absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  absl::Status Parse();

  std::string path_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  MappedFile mapping_;          // the file (Open), or empty
  std::vector<uint8_t> owned_;  // copied bytes (FromBytes)
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
};

// Converts `tensor` (F32, F16 or BF16) to float32 into dst, which must hold exactly
// tensor.n_elements values. Exact for all three (F16 and BF16 widen losslessly).
// Errors: InvalidArgument for a size mismatch, Unimplemented for other dtypes.
absl::Status SafetensorsToFloat32(const SafetensorsTensor& tensor, std::span<float> dst);

}  // namespace semshare::engine

#endif  // SEMSHARE_ENGINE_MODEL_SAFETENSORS_H_
