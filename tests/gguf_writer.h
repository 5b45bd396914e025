// Test utility: writes GGUF bytes (the layout engine/model/gguf.h documents) from a description, so
// that tests can build valid files with any metadata and tensors, and invalid ones by setting
// the raw fields a reader must check (magic, version, counts, value-type ids, n_dims, ggml type
// ids, offsets) to bad values.
//
// Metadata values are described with the reader's own GgufValue tree (engine/model/gguf.h), so a
// round-trip test can compare what it wrote with what it read. A KeyValue can instead carry a
// raw type id and raw payload bytes, for corrupt values.
//
// Layout written: header, metadata, tensor infos, zero padding up to `alignment` (taken from
// the `alignment` field, which need not match a general.alignment entry: tests set both), then
// each tensor's bytes at its offset within the data section. Nothing follows the last tensor,
// so every proper prefix of the output is a truncated file.
#ifndef SEMSHARE_TESTS_GGUF_WRITER_H_
#define SEMSHARE_TESTS_GGUF_WRITER_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/model/ggml_type.h"
#include "engine/model/gguf.h"

namespace semshare::engine::testutil {

// Little-endian byte sink.
class ByteWriter {
 public:
  template <typename T>
  void Put(T v) {
    uint8_t b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));
    bytes_.insert(bytes_.end(), b, b + sizeof(T));
  }
  void PutBytes(const std::vector<uint8_t>& b) { bytes_.insert(bytes_.end(), b.begin(), b.end()); }
  void PutString(std::string_view s) {
    Put<uint64_t>(s.size());
    bytes_.insert(bytes_.end(), s.begin(), s.end());
  }
  void PadTo(uint64_t alignment) {
    while (bytes_.size() % alignment != 0) bytes_.push_back(0);
  }
  size_t size() const { return bytes_.size(); }
  std::vector<uint8_t>& bytes() { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
};

// Writes the payload of `v` (without its type id), taking the width from v.type.
inline void PutValue(ByteWriter& w, const GgufValue& v) {
  switch (v.type) {
    case GgufValueType::kUint8:
      w.Put(static_cast<uint8_t>(v.i));
      break;
    case GgufValueType::kInt8:
      w.Put(static_cast<int8_t>(v.i));
      break;
    case GgufValueType::kUint16:
      w.Put(static_cast<uint16_t>(v.i));
      break;
    case GgufValueType::kInt16:
      w.Put(static_cast<int16_t>(v.i));
      break;
    case GgufValueType::kUint32:
      w.Put(static_cast<uint32_t>(v.i));
      break;
    case GgufValueType::kInt32:
      w.Put(static_cast<int32_t>(v.i));
      break;
    case GgufValueType::kUint64:
      w.Put(static_cast<uint64_t>(v.i));
      break;
    case GgufValueType::kInt64:
      w.Put(static_cast<int64_t>(v.i));
      break;
    case GgufValueType::kFloat32:
      w.Put(static_cast<float>(v.f));
      break;
    case GgufValueType::kFloat64:
      w.Put(static_cast<double>(v.f));
      break;
    case GgufValueType::kBool:
      w.Put(static_cast<uint8_t>(v.i));
      break;
    case GgufValueType::kString:
      w.PutString(v.s);
      break;
    case GgufValueType::kArray:
      w.Put(static_cast<uint32_t>(v.elem_type));
      w.Put<uint64_t>(v.arr.size());
      for (const GgufValue& e : v.arr) PutValue(w, e);
      break;
  }
}

// Value constructors, so tests read like the data they describe.
inline GgufValue IntValue(GgufValueType t, int64_t i) {
  GgufValue v;
  v.type = t;
  v.i = i;
  return v;
}
inline GgufValue FloatValue(GgufValueType t, double f) {
  GgufValue v;
  v.type = t;
  v.f = f;
  return v;
}
inline GgufValue BoolValue(bool b) { return IntValue(GgufValueType::kBool, b ? 1 : 0); }
inline GgufValue StringValue(std::string s) {
  GgufValue v;
  v.type = GgufValueType::kString;
  v.s = std::move(s);
  return v;
}
inline GgufValue ArrayValue(GgufValueType elem_type, std::vector<GgufValue> elems) {
  GgufValue v;
  v.type = GgufValueType::kArray;
  v.elem_type = elem_type;
  v.arr = std::move(elems);
  return v;
}

struct KeyValue {
  std::string key;
  GgufValue value;
  // When set, written instead of value's type id and payload.
  std::optional<uint32_t> raw_type;
  std::vector<uint8_t> raw_payload;
};

struct TensorSpec {
  std::string name;
  std::vector<uint64_t> ne;  // written as given (n_dims = ne.size())
  uint32_t type = static_cast<uint32_t>(GgmlType::kF32);
  std::optional<uint64_t> offset;  // default: next multiple of alignment after the previous data
  std::vector<uint8_t> data;       // written at the offset (may be shorter or longer than ne says)
};

struct GgufSpec {
  uint32_t magic = 0x46554747;  // "GGUF"
  uint32_t version = 3;
  uint64_t alignment = 32;               // used for padding and default offsets only
  std::optional<uint64_t> tensor_count;  // default: tensors.size()
  std::optional<uint64_t> kv_count;      // default: kvs.size()
  std::vector<KeyValue> kvs;
  std::vector<TensorSpec> tensors;

  GgufSpec& Add(std::string key, GgufValue v) {
    kvs.push_back({std::move(key), std::move(v), std::nullopt, {}});
    return *this;
  }
  GgufSpec& AddRaw(std::string key, uint32_t type, std::vector<uint8_t> payload) {
    kvs.push_back({std::move(key), GgufValue{}, type, std::move(payload)});
    return *this;
  }
  GgufSpec& AddTensor(std::string name, std::vector<uint64_t> ne, GgmlType type,
                      std::vector<uint8_t> data) {
    tensors.push_back({std::move(name), std::move(ne), static_cast<uint32_t>(type), std::nullopt,
                       std::move(data)});
    return *this;
  }
};

// Little-endian bytes of `values` (for raw payloads).
template <typename T>
std::vector<uint8_t> RawBytes(std::initializer_list<T> values) {
  ByteWriter w;
  for (T v : values) w.Put(v);
  return w.bytes();
}

inline std::vector<uint8_t> WriteGguf(const GgufSpec& spec) {
  ByteWriter w;
  w.Put(spec.magic);
  w.Put(spec.version);
  w.Put<uint64_t>(spec.tensor_count.value_or(spec.tensors.size()));
  w.Put<uint64_t>(spec.kv_count.value_or(spec.kvs.size()));
  for (const KeyValue& kv : spec.kvs) {
    w.PutString(kv.key);
    if (kv.raw_type) {
      w.Put(*kv.raw_type);
      w.PutBytes(kv.raw_payload);
    } else {
      w.Put(static_cast<uint32_t>(kv.value.type));
      PutValue(w, kv.value);
    }
  }
  // Offsets: explicit, or packed in order at multiples of the alignment.
  std::vector<uint64_t> offsets;
  uint64_t next = 0;
  for (const TensorSpec& t : spec.tensors) {
    uint64_t off = t.offset.value_or(next);
    offsets.push_back(off);
    next = (off + t.data.size() + spec.alignment - 1) / spec.alignment * spec.alignment;
  }
  for (size_t k = 0; k < spec.tensors.size(); ++k) {
    const TensorSpec& t = spec.tensors[k];
    w.PutString(t.name);
    w.Put<uint32_t>(t.ne.size());
    for (uint64_t d : t.ne) w.Put(d);
    w.Put(t.type);
    w.Put(offsets[k]);
  }
  if (spec.tensors.empty()) return std::move(w.bytes());
  w.PadTo(spec.alignment);
  const size_t data_start = w.size();
  std::vector<uint8_t>& out = w.bytes();
  for (size_t k = 0; k < spec.tensors.size(); ++k) {
    const TensorSpec& t = spec.tensors[k];
    // Explicit offsets in bad-input tests may be huge; they get no data at all, nor does a tensor
    // without data (so that a file can end at the data section's start).
    if (t.data.empty() || offsets[k] > (uint64_t{1} << 24)) continue;
    const size_t end = data_start + offsets[k] + t.data.size();
    if (out.size() < end) out.resize(end, 0);
    std::copy(t.data.begin(), t.data.end(), out.begin() + data_start + offsets[k]);
  }
  return std::move(out);
}

}  // namespace semshare::engine::testutil

#endif  // SEMSHARE_TESTS_GGUF_WRITER_H_
