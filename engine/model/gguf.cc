#include "engine/model/gguf.h"

#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"

namespace semshare::engine {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little-endian
constexpr int kMaxDims = 4;
constexpr int kMaxArrayDepth = 8;
// No real model has more; bounds allocations driven by counts read from the file.
constexpr uint64_t kMaxTensors = 1u << 20;
constexpr uint64_t kMaxKv = 1u << 20;
constexpr int64_t kMaxElements = int64_t{1} << 42;

// Debian 12's abseil is built with its own absl::string_view (ABSL_OPTION_USE_STD_STRING_VIEW
// is 0), which does not convert from std::string_view, so StrCat needs this explicit bridge.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Bounds-checked little-endian cursor over the file bytes.
class Cursor {
 public:
  Cursor(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }
  // Metadata array elements still allowed. Each becomes a GgufValue of ~90 bytes, so without
  // a cap a crafted file could make the reader allocate ~90x its own size. Real vocabularies
  // (tokens + types + merges) stay well under a million elements.
  uint64_t elements_left = uint64_t{1} << 24;

  template <typename T>
  absl::Status Read(T* out, std::string_view what) {
    if (remaining() < sizeof(T)) return Truncated(what);
    std::memcpy(out, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return absl::OkStatus();
  }
  absl::Status ReadString(std::string* out, std::string_view what) {
    uint64_t len = 0;
    if (auto s = Read(&len, what); !s.ok()) return s;
    if (len > remaining()) {
      return absl::InvalidArgumentError(absl::StrCat("GGUF: ", Sv(what), " at byte ", pos_,
                                                     " has length ", len, " but only ", remaining(),
                                                     " bytes remain"));
    }
    out->assign(reinterpret_cast<const char*>(data_ + pos_), len);
    pos_ += len;
    return absl::OkStatus();
  }
  absl::Status Truncated(std::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat("GGUF: file truncated while reading ", Sv(what), " at byte ", pos_));
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// Size in bytes of a fixed-size scalar type; 0 for string and array.
size_t ScalarSize(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
      return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32:
      return 4;
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64:
      return 8;
    default:
      return 0;
  }
}

bool KnownType(uint32_t t) { return t <= static_cast<uint32_t>(GgufValueType::kFloat64); }

absl::Status ReadValue(Cursor& c, GgufValueType type, int depth, GgufValue* v,
                       std::string_view key) {
  v->type = type;
  switch (type) {
    case GgufValueType::kUint8: {
      uint8_t x{};
      auto s = c.Read(&x, key);
      v->i = x;
      return s;
    }
    case GgufValueType::kInt8: {
      int8_t x{};
      auto s = c.Read(&x, key);
      v->i = x;
      return s;
    }
    case GgufValueType::kUint16: {
      uint16_t x{};
      auto s = c.Read(&x, key);
      v->i = x;
      return s;
    }
    case GgufValueType::kInt16: {
      int16_t x{};
      auto s = c.Read(&x, key);
      v->i = x;
      return s;
    }
    case GgufValueType::kUint32: {
      uint32_t x{};
      auto s = c.Read(&x, key);
      v->i = x;
      return s;
    }
    case GgufValueType::kInt32: {
      int32_t x{};
      auto s = c.Read(&x, key);
      v->i = x;
      return s;
    }
    case GgufValueType::kUint64: {
      uint64_t x = 0;
      auto s = c.Read(&x, key);
      v->i = static_cast<int64_t>(x);
      return s;
    }
    case GgufValueType::kInt64: {
      int64_t x{};
      auto s = c.Read(&x, key);
      v->i = x;
      return s;
    }
    case GgufValueType::kFloat32: {
      float x{};
      auto s = c.Read(&x, key);
      v->f = x;
      return s;
    }
    case GgufValueType::kFloat64: {
      double x{};
      auto s = c.Read(&x, key);
      v->f = x;
      return s;
    }
    case GgufValueType::kBool: {
      uint8_t x = 0;
      if (auto s = c.Read(&x, key); !s.ok()) return s;
      if (x > 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("GGUF: metadata '", Sv(key), "' has bool value ", x, " (must be 0 or 1)"));
      }
      v->i = x;
      return absl::OkStatus();
    }
    case GgufValueType::kString:
      return c.ReadString(&v->s, key);
    case GgufValueType::kArray: {
      if (depth >= kMaxArrayDepth) {
        return absl::InvalidArgumentError(absl::StrCat(
            "GGUF: metadata '", Sv(key), "' nests arrays deeper than ", kMaxArrayDepth));
      }
      uint32_t et = 0;
      uint64_t n = 0;
      if (auto s = c.Read(&et, key); !s.ok()) return s;
      if (!KnownType(et)) {
        return absl::InvalidArgumentError(
            absl::StrCat("GGUF: metadata '", Sv(key), "' has unknown array element type ", et));
      }
      if (auto s = c.Read(&n, key); !s.ok()) return s;
      v->elem_type = static_cast<GgufValueType>(et);
      // Every element takes at least one byte (strings 8): reject counts the file cannot hold
      // before allocating for them.
      size_t min_elem = ScalarSize(v->elem_type);
      if (min_elem == 0) min_elem = v->elem_type == GgufValueType::kString ? 8 : 12;
      if (n > c.remaining() / min_elem) {
        return absl::InvalidArgumentError(absl::StrCat("GGUF: metadata '", Sv(key), "' claims ", n,
                                                       " array elements but only ", c.remaining(),
                                                       " bytes remain"));
      }
      if (n > c.elements_left) {
        return absl::InvalidArgumentError(absl::StrCat("GGUF: metadata '", Sv(key),
                                                       "' exceeds the limit of ", uint64_t{1} << 24,
                                                       " array elements in all"));
      }
      c.elements_left -= n;
      v->arr.resize(n);
      for (uint64_t k = 0; k < n; ++k) {
        if (auto s = ReadValue(c, v->elem_type, depth + 1, &v->arr[k], key); !s.ok()) return s;
      }
      return absl::OkStatus();
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "GGUF: metadata '", Sv(key), "' has unknown value type ", static_cast<int>(type)));
}

bool IsIntegerType(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
      return true;
    default:
      return false;
  }
}

absl::StatusOr<int64_t> AsInt(const GgufValue& v, std::string_view key) {
  if (!IsIntegerType(v.type)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GGUF: metadata '", Sv(key), "' is ", Sv(GgufValueTypeName(v.type)), ", not an integer"));
  }
  if (v.type == GgufValueType::kUint64 && v.i < 0) {
    return absl::OutOfRangeError(absl::StrCat("GGUF: metadata '", Sv(key), "' exceeds int64"));
  }
  return v.i;
}

absl::StatusOr<double> AsFloat(const GgufValue& v, std::string_view key) {
  if (v.type == GgufValueType::kFloat32 || v.type == GgufValueType::kFloat64) return v.f;
  if (IsIntegerType(v.type)) return static_cast<double>(v.i);
  return absl::InvalidArgumentError(absl::StrCat("GGUF: metadata '", Sv(key), "' is ",
                                                 Sv(GgufValueTypeName(v.type)), ", not a number"));
}

absl::Status NotFound(std::string_view key) {
  return absl::NotFoundError(absl::StrCat("GGUF: metadata key '", Sv(key), "' is missing"));
}

}  // namespace

std::string_view GgufValueTypeName(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8:
      return "uint8";
    case GgufValueType::kInt8:
      return "int8";
    case GgufValueType::kUint16:
      return "uint16";
    case GgufValueType::kInt16:
      return "int16";
    case GgufValueType::kUint32:
      return "uint32";
    case GgufValueType::kInt32:
      return "int32";
    case GgufValueType::kFloat32:
      return "float32";
    case GgufValueType::kBool:
      return "bool";
    case GgufValueType::kString:
      return "string";
    case GgufValueType::kArray:
      return "array";
    case GgufValueType::kUint64:
      return "uint64";
    case GgufValueType::kInt64:
      return "int64";
    case GgufValueType::kFloat64:
      return "float64";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  auto mapped = MappedFile::Open(path, "model file");
  if (!mapped.ok()) return mapped.status();
  auto file = std::unique_ptr<GgufFile>(new GgufFile());
  file->path_ = path;
  file->mapping_ = std::move(*mapped);
  file->base_ = file->mapping_.data();
  file->size_ = file->mapping_.size();
  if (auto s = file->Parse(); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat(s.message(), " (file '", path, "')"));
  }
  return file;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::FromBytes(std::span<const uint8_t> bytes) {
  auto file = std::unique_ptr<GgufFile>(new GgufFile());
  file->owned_.assign(bytes.begin(), bytes.end());
  file->base_ = file->owned_.data();
  file->size_ = file->owned_.size();
  if (auto s = file->Parse(); !s.ok()) return s;
  return file;
}

GgufFile::~GgufFile() = default;

absl::Status GgufFile::Parse() {
  Cursor c(base_, size_);
  uint32_t magic = 0;
  if (auto s = c.Read(&magic, "magic"); !s.ok()) return s;
  if (magic != kMagic) {
    return absl::InvalidArgumentError(
        absl::StrCat("GGUF: bad magic 0x", absl::Hex(magic), " (not a GGUF file)"));
  }
  if (auto s = c.Read(&version_, "version"); !s.ok()) return s;
  if (version_ != 2 && version_ != 3) {
    return absl::UnimplementedError(
        absl::StrCat("GGUF: version ", version_, " is not supported (only 2 and 3)"));
  }
  uint64_t n_tensors = 0, n_kv = 0;
  if (auto s = c.Read(&n_tensors, "tensor count"); !s.ok()) return s;
  if (auto s = c.Read(&n_kv, "metadata count"); !s.ok()) return s;
  if (n_tensors > kMaxTensors || n_kv > kMaxKv) {
    return absl::InvalidArgumentError(
        absl::StrCat("GGUF: absurd counts: ", n_tensors, " tensors, ", n_kv, " metadata entries"));
  }
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key;
    if (auto s = c.ReadString(&key, "metadata key"); !s.ok()) return s;
    uint32_t type = 0;
    if (auto s = c.Read(&type, key); !s.ok()) return s;
    if (!KnownType(type)) {
      return absl::InvalidArgumentError(
          absl::StrCat("GGUF: metadata '", Sv(key), "' has unknown value type ", type));
    }
    GgufValue v;
    if (auto s = ReadValue(c, static_cast<GgufValueType>(type), 0, &v, key); !s.ok()) return s;
    if (!metadata_.emplace(key, std::move(v)).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("GGUF: duplicate metadata key '", Sv(key), "'"));
    }
  }
  if (const GgufValue* a = Find("general.alignment")) {
    auto al = AsInt(*a, "general.alignment");
    if (!al.ok()) return al.status();
    if (*al <= 0 || *al > (1 << 20) || (*al & (*al - 1)) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("GGUF: general.alignment ", *al, " is not a power of two up to 2^20"));
    }
    alignment_ = static_cast<uint64_t>(*al);
  }

  // A tensor info takes at least 32 bytes (name length, n_dims, one dim, type, offset): reject
  // counts the rest of the file cannot hold before allocating for them.
  constexpr uint64_t kMinTensorInfo = 8 + 4 + 8 + 4 + 8;
  if (n_tensors > c.remaining() / kMinTensorInfo) {
    return absl::InvalidArgumentError(absl::StrCat("GGUF: tensor count ", n_tensors,
                                                   " cannot fit in the ", c.remaining(),
                                                   " bytes left after the metadata"));
  }
  tensors_.resize(n_tensors);
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensor& t = tensors_[k];
    if (auto s = c.ReadString(&t.name, "tensor name"); !s.ok()) return s;
    uint32_t n_dims = 0;
    if (auto s = c.Read(&n_dims, t.name); !s.ok()) return s;
    if (n_dims == 0 || n_dims > kMaxDims) {
      return absl::InvalidArgumentError(
          absl::StrCat("GGUF: tensor '", t.name, "' has ", n_dims, " dims (1..4 allowed)"));
    }
    t.ne.resize(n_dims);
    int64_t n = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t dim = 0;
      if (auto s = c.Read(&dim, t.name); !s.ok()) return s;
      if (dim == 0 || dim > static_cast<uint64_t>(kMaxElements) ||
          n > kMaxElements / static_cast<int64_t>(dim)) {
        return absl::InvalidArgumentError(
            absl::StrCat("GGUF: tensor '", t.name, "' has absurd dimension ", dim));
      }
      t.ne[d] = static_cast<int64_t>(dim);
      n *= t.ne[d];
    }
    t.n_elements = n;
    uint32_t type = 0;
    if (auto s = c.Read(&type, t.name); !s.ok()) return s;
    auto traits = GetGgmlTypeTraits(type);
    if (!traits) {
      return absl::UnimplementedError(
          absl::StrCat("GGUF: tensor '", t.name, "' has unknown ggml type ", type));
    }
    t.type = static_cast<GgmlType>(type);
    if (t.ne[0] % traits->block_size != 0) {
      return absl::InvalidArgumentError(absl::StrCat("GGUF: tensor '", t.name, "' row of ", t.ne[0],
                                                     " elements is not a "
                                                     "whole number of ",
                                                     Sv(traits->name), " blocks of ",
                                                     traits->block_size));
    }
    t.n_bytes = n / traits->block_size * traits->type_size;
    if (auto s = c.Read(&t.offset, t.name); !s.ok()) return s;
    if (t.offset % alignment_ != 0) {
      return absl::InvalidArgumentError(absl::StrCat("GGUF: tensor '", t.name, "' offset ",
                                                     t.offset, " is not aligned to ", alignment_));
    }
    if (!tensor_index_.emplace(t.name, k).second) {
      return absl::InvalidArgumentError(absl::StrCat("GGUF: duplicate tensor '", t.name, "'"));
    }
  }
  uint64_t data_start = (c.pos() + alignment_ - 1) / alignment_ * alignment_;
  if (n_tensors > 0 && data_start > size_) return c.Truncated("tensor data");
  uint64_t data_size = n_tensors > 0 ? size_ - data_start : 0;
  for (GgufTensor& t : tensors_) {
    if (t.offset > data_size || static_cast<uint64_t>(t.n_bytes) > data_size - t.offset) {
      return absl::InvalidArgumentError(
          absl::StrCat("GGUF: tensor '", t.name, "' data [", t.offset, ", ", t.offset + t.n_bytes,
                       ") lies outside the ", data_size, "-byte data section (truncated file?)"));
    }
    t.data = base_ + data_start + t.offset;
  }
  return absl::OkStatus();
}

const GgufValue* GgufFile::Find(std::string_view key) const {
  auto it = metadata_.find(std::string(key));
  return it == metadata_.end() ? nullptr : &it->second;
}

const GgufTensor* GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<int64_t> GgufFile::GetInt(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return NotFound(key);
  return AsInt(*v, key);
}

absl::StatusOr<double> GgufFile::GetFloat(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return NotFound(key);
  return AsFloat(*v, key);
}

absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return NotFound(key);
  if (v->type != GgufValueType::kBool) {
    return absl::InvalidArgumentError(absl::StrCat("GGUF: metadata '", Sv(key), "' is ",
                                                   Sv(GgufValueTypeName(v->type)), ", not bool"));
  }
  return v->i != 0;
}

absl::StatusOr<std::string> GgufFile::GetString(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return NotFound(key);
  if (v->type != GgufValueType::kString) {
    return absl::InvalidArgumentError(absl::StrCat("GGUF: metadata '", Sv(key), "' is ",
                                                   Sv(GgufValueTypeName(v->type)), ", not string"));
  }
  return v->s;
}

absl::StatusOr<std::vector<std::string>> GgufFile::GetStringArray(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return NotFound(key);
  if (v->type != GgufValueType::kArray || v->elem_type != GgufValueType::kString) {
    return absl::InvalidArgumentError(
        absl::StrCat("GGUF: metadata '", Sv(key), "' is not an array of strings"));
  }
  std::vector<std::string> out;
  out.reserve(v->arr.size());
  for (const GgufValue& e : v->arr) out.push_back(e.s);
  return out;
}

absl::StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return NotFound(key);
  if (v->type != GgufValueType::kArray || !IsIntegerType(v->elem_type)) {
    return absl::InvalidArgumentError(
        absl::StrCat("GGUF: metadata '", Sv(key), "' is not an array of integers"));
  }
  std::vector<int64_t> out;
  out.reserve(v->arr.size());
  for (const GgufValue& e : v->arr) {
    auto x = AsInt(e, key);  // rejects uint64 elements above INT64_MAX, as GetInt does
    if (!x.ok()) return x.status();
    out.push_back(*x);
  }
  return out;
}

absl::StatusOr<std::vector<double>> GgufFile::GetFloatArray(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return NotFound(key);
  if (v->type != GgufValueType::kArray) {
    return absl::InvalidArgumentError(
        absl::StrCat("GGUF: metadata '", Sv(key), "' is not an array"));
  }
  std::vector<double> out;
  out.reserve(v->arr.size());
  for (const GgufValue& e : v->arr) {
    auto x = AsFloat(e, key);
    if (!x.ok()) return x.status();
    out.push_back(*x);
  }
  return out;
}

}  // namespace semshare::engine
