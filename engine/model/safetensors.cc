#include "engine/model/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "engine/model/dequant.h"

namespace semshare::engine {
namespace {

using Json = nlohmann::json;

constexpr int kMaxDims = 16;
// Larger than any real tensor (2^44 elements = 16 TiB of BF16); keeps products far from
// int64 overflow.
constexpr int64_t kMaxElements = int64_t{1} << 44;

struct DtypeInfo {
  SafetensorsDtype dtype;
  std::string_view name;
  size_t size;
};

constexpr DtypeInfo kDtypes[] = {
    {SafetensorsDtype::kBool, "BOOL", 1},      {SafetensorsDtype::kU8, "U8", 1},
    {SafetensorsDtype::kI8, "I8", 1},          {SafetensorsDtype::kF8E5M2, "F8_E5M2", 1},
    {SafetensorsDtype::kF8E4M3, "F8_E4M3", 1}, {SafetensorsDtype::kI16, "I16", 2},
    {SafetensorsDtype::kU16, "U16", 2},        {SafetensorsDtype::kF16, "F16", 2},
    {SafetensorsDtype::kBF16, "BF16", 2},      {SafetensorsDtype::kI32, "I32", 4},
    {SafetensorsDtype::kU32, "U32", 4},        {SafetensorsDtype::kF32, "F32", 4},
    {SafetensorsDtype::kF64, "F64", 8},        {SafetensorsDtype::kI64, "I64", 8},
    {SafetensorsDtype::kU64, "U64", 8},
};

std::optional<SafetensorsDtype> ParseDtype(std::string_view name) {
  for (const DtypeInfo& d : kDtypes) {
    if (d.name == name) return d.dtype;
  }
  return std::nullopt;
}

// Thrown from the parser callback to stop parsing early; caught in ParseHeaderJson.
struct HeaderRejected {
  std::string reason;
};

// Parses the header text. Rejects duplicate top-level names (nlohmann would silently keep the
// last one) and nesting deeper than the format allows (an entry's shape/data_offsets arrays),
// which also bounds the parser's memory on hostile input.
absl::StatusOr<Json> ParseHeaderJson(std::string_view text) {
  absl::flat_hash_set<std::string> seen;
  auto callback = [&seen](int depth, Json::parse_event_t event, Json& parsed) {
    if ((event == Json::parse_event_t::object_start || event == Json::parse_event_t::array_start) &&
        depth >= 3) {
      throw HeaderRejected{"JSON nested deeper than the format allows"};
    }
    if (event == Json::parse_event_t::key && depth == 1) {
      std::string key = parsed.get<std::string>();
      if (!seen.insert(key).second) {
        throw HeaderRejected{absl::StrCat("duplicate tensor name '", key, "'")};
      }
    }
    return true;
  };
  try {
    return Json::parse(text.begin(), text.end(), callback);
  } catch (const HeaderRejected& e) {
    return absl::InvalidArgumentError(e.reason);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("header is not valid JSON: ", e.what()));
  }
}

// Reads a JSON integer into int64 when it is a non-negative integer that fits.
std::optional<int64_t> NonNegativeInt(const Json& j) {
  if (j.is_number_unsigned()) {
    uint64_t v = j.get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(v);
  }
  if (j.is_number_integer()) {
    int64_t v = j.get<int64_t>();
    if (v < 0) return std::nullopt;
    return v;
  }
  return std::nullopt;
}

}  // namespace

std::string_view SafetensorsDtypeName(SafetensorsDtype dtype) {
  for (const DtypeInfo& d : kDtypes) {
    if (d.dtype == dtype) return d.name;
  }
  return "unknown";
}

size_t SafetensorsDtypeSize(SafetensorsDtype dtype) {
  for (const DtypeInfo& d : kDtypes) {
    if (d.dtype == dtype) return d.size;
  }
  return 0;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  auto mapped = MappedFile::Open(path, "safetensors file");
  if (!mapped.ok()) return mapped.status();
  auto file = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  file->path_ = path;
  file->mapping_ = std::move(*mapped);
  file->base_ = file->mapping_.data();
  file->size_ = file->mapping_.size();
  if (auto s = file->Parse(); !s.ok()) return s;
  return file;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::FromBytes(
    std::span<const uint8_t> bytes, std::string_view name) {
  auto file = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  file->path_ = std::string(name);
  file->owned_.assign(bytes.begin(), bytes.end());
  file->base_ = file->owned_.data();
  file->size_ = file->owned_.size();
  if (auto s = file->Parse(); !s.ok()) return s;
  return file;
}

SafetensorsFile::~SafetensorsFile() = default;

const SafetensorsTensor* SafetensorsFile::Find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

absl::Status SafetensorsFile::Parse() {
  auto fail = [this](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("safetensors '", path_, "': ", what));
  };
  auto tensor_fail = [&fail](absl::string_view name, absl::string_view what) {
    return fail(absl::StrCat("tensor '", name, "': ", what));
  };

  if (size_ < 8) {
    return fail(
        absl::StrCat("file of ", size_, " bytes is too short for the 8-byte header length"));
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base_[i];
  if (header_len > size_ - 8) {
    return fail(absl::StrCat("header length ", header_len, " runs past the end of the file (",
                             size_ - 8, " bytes follow the length)"));
  }
  if (header_len > kMaxHeaderBytes) {
    return fail(absl::StrCat("header length ", header_len, " exceeds the limit of ",
                             kMaxHeaderBytes, " bytes"));
  }
  const std::string_view text(reinterpret_cast<const char*>(base_ + 8), header_len);
  const uint8_t* data = base_ + 8 + header_len;
  const uint64_t data_size = size_ - 8 - header_len;

  absl::StatusOr<Json> parsed = ParseHeaderJson(text);
  if (!parsed.ok()) return fail(parsed.status().message());
  const Json& header = *parsed;
  if (!header.is_object()) return fail("header JSON is not an object");

  std::vector<std::pair<uint64_t, uint64_t>> ranges;  // [begin, end) per tensor, by tensor
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) return fail("__metadata__ is not an object");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string())
          return fail(absl::StrCat("__metadata__ '", key, "' is not a string"));
        metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    if (name.empty()) return fail("a tensor has an empty name");
    if (!entry.is_object()) return tensor_fail(name, "entry is not an object");
    auto dtype_it = entry.find("dtype");
    auto shape_it = entry.find("shape");
    auto offsets_it = entry.find("data_offsets");
    if (dtype_it == entry.end() || !dtype_it->is_string()) {
      return tensor_fail(name, "missing or non-string \"dtype\"");
    }
    if (shape_it == entry.end() || !shape_it->is_array()) {
      return tensor_fail(name, "missing or non-array \"shape\"");
    }
    if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2) {
      return tensor_fail(name, "\"data_offsets\" must be an array [begin, end]");
    }
    SafetensorsTensor t;
    t.name = name;
    const std::string dtype_name = dtype_it->get<std::string>();
    std::optional<SafetensorsDtype> dtype = ParseDtype(dtype_name);
    if (!dtype) return tensor_fail(name, absl::StrCat("unknown dtype \"", dtype_name, "\""));
    t.dtype = *dtype;
    if (shape_it->size() > static_cast<size_t>(kMaxDims)) {
      return tensor_fail(name,
                         absl::StrCat(shape_it->size(), " dims exceed the limit of ", kMaxDims));
    }
    t.n_elements = 1;
    // Product of the non-zero dims: a zero dim must not let absurd others through.
    int64_t nonzero_product = 1;
    for (const Json& dim : *shape_it) {
      std::optional<int64_t> d = NonNegativeInt(dim);
      if (!d)
        return tensor_fail(name, absl::StrCat("shape entry ", dim.dump(),
                                              " is not a "
                                              "non-negative integer"));
      if (*d > kMaxElements || (*d > 0 && nonzero_product > kMaxElements / *d)) {
        return tensor_fail(name, absl::StrCat("shape ", shape_it->dump(), " is absurdly large"));
      }
      t.shape.push_back(*d);
      t.n_elements *= *d;
      if (*d > 0) nonzero_product *= *d;
    }
    std::optional<int64_t> begin = NonNegativeInt((*offsets_it)[0]);
    std::optional<int64_t> end = NonNegativeInt((*offsets_it)[1]);
    if (!begin || !end || *begin > *end) {
      return tensor_fail(name, absl::StrCat("data_offsets ", offsets_it->dump(),
                                            " are not non-negative integers with begin <= end"));
    }
    if (static_cast<uint64_t>(*end) > data_size) {
      return tensor_fail(name, absl::StrCat("data_offsets ", offsets_it->dump(),
                                            " run past the data section of ", data_size, " bytes"));
    }
    const int64_t expected = t.n_elements * static_cast<int64_t>(SafetensorsDtypeSize(t.dtype));
    if (*end - *begin != expected) {
      return tensor_fail(name, absl::StrCat("shape ", shape_it->dump(), " of ", dtype_name,
                                            " needs ", expected, " bytes but data_offsets ",
                                            offsets_it->dump(), " hold ", *end - *begin));
    }
    t.bytes = std::span<const uint8_t>(data + *begin, static_cast<size_t>(*end - *begin));
    ranges.emplace_back(*begin, *end);
    tensors_.push_back(std::move(t));
  }

  // Sort by offset and reject overlaps (empty tensors overlap nothing).
  std::vector<size_t> order(tensors_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return ranges[a] < ranges[b] || (ranges[a] == ranges[b] && a < b);
  });
  std::vector<SafetensorsTensor> sorted;
  sorted.reserve(tensors_.size());
  uint64_t prev_end = 0;
  const SafetensorsTensor* prev = nullptr;
  for (size_t i : order) {
    const auto [b, e] = ranges[i];
    if (b == e) {
      sorted.push_back(std::move(tensors_[i]));
      continue;
    }
    if (prev != nullptr && b < prev_end) {
      return tensor_fail(tensors_[i].name, absl::StrCat("data [", b, ", ", e, ") overlaps tensor '",
                                                        prev->name, "' ending at ", prev_end));
    }
    prev = &tensors_[i];
    prev_end = e;
    sorted.push_back(tensors_[i]);
  }
  tensors_ = std::move(sorted);
  for (size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
  return absl::OkStatus();
}

absl::Status SafetensorsToFloat32(const SafetensorsTensor& t, std::span<float> dst) {
  if (static_cast<int64_t>(dst.size()) != t.n_elements) {
    return absl::InvalidArgumentError(absl::StrCat("safetensors tensor '", t.name, "': has ",
                                                   t.n_elements, " elements, destination ",
                                                   dst.size()));
  }
  const uint8_t* src = t.bytes.data();
  const size_t n = dst.size();
  switch (t.dtype) {
    case SafetensorsDtype::kF32:
      if (n > 0) std::memcpy(dst.data(), src, n * sizeof(float));
      return absl::OkStatus();
    case SafetensorsDtype::kF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = HalfToFloat(h);
      }
      return absl::OkStatus();
    case SafetensorsDtype::kBF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = Bf16ToFloat(h);
      }
      return absl::OkStatus();
    default:
      return absl::UnimplementedError(absl::StrCat("safetensors tensor '", t.name, "': dtype ",
                                                   std::string(SafetensorsDtypeName(t.dtype)),
                                                   " cannot be converted to float32"));
  }
}

}  // namespace semshare::engine
