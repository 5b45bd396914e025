// Tests of the GGUF reader (engine/model/gguf.h): files written by tests/gguf_writer.h round-trip
// through FromBytes and Open; corrupt input of every kind the format allows gives a non-OK
// Status whose message names the problem; random byte mutations never crash (this test also
// runs under ASan + UBSan); the real default model opens with the expected shape.
#include "engine/model/gguf.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/model/default_model.h"
#include "engine/model/dequant.h"
#include "tests/gguf_writer.h"

namespace semshare::engine {
namespace {

using ::testing::AllOf;
using ::testing::AnyOf;
using ::testing::HasSubstr;
using testutil::ArrayValue;
using testutil::BoolValue;
using testutil::FloatValue;
using testutil::GgufSpec;
using testutil::IntValue;
using testutil::RawBytes;
using testutil::StringValue;
using testutil::WriteGguf;
using VT = GgufValueType;

std::vector<uint8_t> Iota(size_t n, uint8_t start = 1) {
  std::vector<uint8_t> b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(start + i);
  return b;
}

// Q8_0 data for `blocks` blocks with finite scales (so that dequantised values are finite).
std::vector<uint8_t> Q8Blocks(int blocks) {
  std::vector<uint8_t> b = Iota(34 * blocks, 3);
  for (int k = 0; k < blocks; ++k) {
    b[34 * k] = 0x00;
    b[34 * k + 1] = 0x38;  // d = 0.5
  }
  return b;
}

// Every metadata value type: all scalar widths at their extremes, bool, strings (empty, with a
// NUL byte, UTF-8), arrays of each, an empty array, arrays of strings and nested arrays.
GgufSpec AllTypesSpec() {
  GgufSpec s;
  s.Add("u8", IntValue(VT::kUint8, 255))
      .Add("i8", IntValue(VT::kInt8, -128))
      .Add("u16", IntValue(VT::kUint16, 65535))
      .Add("i16", IntValue(VT::kInt16, -32768))
      .Add("u32", IntValue(VT::kUint32, 4294967295))
      .Add("i32", IntValue(VT::kInt32, std::numeric_limits<int32_t>::min()))
      .Add("u64", IntValue(VT::kUint64, std::numeric_limits<int64_t>::max()))
      .Add("u64_max", IntValue(VT::kUint64, -1))  // 2^64 - 1, stored bit-cast
      .Add("i64", IntValue(VT::kInt64, std::numeric_limits<int64_t>::min()))
      .Add("f32", FloatValue(VT::kFloat32, 0.1f))
      .Add("f64", FloatValue(VT::kFloat64, -1e300))
      .Add("yes", BoolValue(true))
      .Add("no", BoolValue(false))
      .Add("str", StringValue("llama"))
      .Add("empty_str", StringValue(""))
      .Add("odd_str", StringValue(std::string("a\0b\xC3\xA9\n", 6)))
      .Add("", StringValue("empty key"));
  std::vector<VT> scalars = {VT::kUint8,   VT::kInt8,    VT::kUint16, VT::kInt16,
                             VT::kUint32,  VT::kInt32,   VT::kUint64, VT::kInt64,
                             VT::kFloat32, VT::kFloat64, VT::kBool};
  for (VT t : scalars) {
    std::vector<GgufValue> e;
    for (int k = 0; k < 3; ++k) {
      if (t == VT::kFloat32 || t == VT::kFloat64) {
        e.push_back(FloatValue(t, 0.5 * k - 1));
      } else if (t == VT::kBool) {
        e.push_back(BoolValue(k == 1));
      } else {
        e.push_back(IntValue(
            t, (t == VT::kUint8 || t == VT::kUint16 || t == VT::kUint32 || t == VT::kUint64)
                   ? k + 1
                   : k - 1));
      }
    }
    s.Add(absl::StrCat("arr.", std::string(GgufValueTypeName(t))), ArrayValue(t, std::move(e)));
  }
  s.Add("arr.empty", ArrayValue(VT::kInt32, {}));
  s.Add("arr.u64_big", ArrayValue(VT::kUint64, {IntValue(VT::kUint64, 1),
                                                IntValue(VT::kUint64, -1)}));  // 2^64 - 1
  s.Add("arr.str",
        ArrayValue(VT::kString, {StringValue("<s>"), StringValue(""), StringValue("\xC4\xA0the")}));
  s.Add("arr.nested",
        ArrayValue(
            VT::kArray,
            {ArrayValue(VT::kInt32, {IntValue(VT::kInt32, 7), IntValue(VT::kInt32, -7)}),
             ArrayValue(VT::kString, {StringValue("x")}), ArrayValue(VT::kUint8, {}),
             ArrayValue(VT::kArray, {ArrayValue(VT::kFloat64, {FloatValue(VT::kFloat64, 2.5)})})}));
  s.AddTensor("a.f32", {5}, GgmlType::kF32, Iota(20))
      .AddTensor("b.q8", {32, 2}, GgmlType::kQ8_0, Q8Blocks(2))
      .AddTensor("c.f16", {3, 1, 2, 1}, GgmlType::kF16, Iota(12, 40));
  return s;
}

void ExpectSameValue(const GgufValue& got, const GgufValue& want, const std::string& where) {
  ASSERT_EQ(got.type, want.type) << where;
  switch (want.type) {
    case VT::kString:
      ASSERT_EQ(got.s, want.s) << where;
      break;
    case VT::kFloat32:
      ASSERT_EQ(got.f, static_cast<double>(static_cast<float>(want.f))) << where;
      break;
    case VT::kFloat64:
      ASSERT_EQ(got.f, want.f) << where;
      break;
    case VT::kArray:
      ASSERT_EQ(got.elem_type, want.elem_type) << where;
      ASSERT_EQ(got.arr.size(), want.arr.size()) << where;
      for (size_t k = 0; k < want.arr.size(); ++k) {
        ExpectSameValue(got.arr[k], want.arr[k], absl::StrCat(where, "[", k, "]"));
      }
      break;
    default:
      ASSERT_EQ(got.i, want.i) << where;
  }
}

void ExpectMatchesSpec(const GgufFile& f, const GgufSpec& spec, uint64_t alignment) {
  EXPECT_EQ(f.version(), spec.version);
  EXPECT_EQ(f.alignment(), alignment);
  ASSERT_EQ(f.metadata().size(), spec.kvs.size());
  for (const auto& kv : spec.kvs) {
    const GgufValue* v = f.Find(kv.key);
    ASSERT_NE(v, nullptr) << kv.key;
    ExpectSameValue(*v, kv.value, kv.key);
  }
  ASSERT_EQ(f.tensors().size(), spec.tensors.size());
  for (size_t k = 0; k < spec.tensors.size(); ++k) {
    const auto& want = spec.tensors[k];
    const GgufTensor& t = f.tensors()[k];
    EXPECT_EQ(t.name, want.name);
    EXPECT_EQ(f.FindTensor(want.name), &t);
    EXPECT_EQ(static_cast<uint32_t>(t.type), want.type);
    ASSERT_EQ(t.ne.size(), want.ne.size());
    int64_t n = 1;
    for (size_t d = 0; d < want.ne.size(); ++d) {
      EXPECT_EQ(t.ne[d], static_cast<int64_t>(want.ne[d]));
      n *= t.ne[d];
    }
    EXPECT_EQ(t.n_elements, n);
    EXPECT_EQ(t.n_bytes, static_cast<int64_t>(want.data.size()));
    EXPECT_EQ(t.offset % alignment, 0u);
    // The data pointer is aligned within the file and holds exactly the bytes written.
    EXPECT_EQ(static_cast<uint64_t>(t.data - f.bytes().data()) % alignment, 0u);
    EXPECT_EQ(std::vector<uint8_t>(t.data, t.data + t.n_bytes), want.data) << want.name;
  }
  EXPECT_EQ(f.FindTensor("missing"), nullptr);
  EXPECT_EQ(f.Find("missing"), nullptr);
}

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          absl::StrCat("semshare_gguf_test_", getpid(), "_", name))
      .string();
}

void WriteFile(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

TEST(GgufTest, EveryValueTypeRoundTripsFromBytes) {
  const GgufSpec spec = AllTypesSpec();
  auto f = GgufFile::FromBytes(WriteGguf(spec));
  ASSERT_TRUE(f.ok()) << f.status();
  ExpectMatchesSpec(**f, spec, 32);
}

TEST(GgufTest, EveryValueTypeRoundTripsThroughOpen) {
  const GgufSpec spec = AllTypesSpec();
  const std::string path = TempPath("all_types.gguf");
  WriteFile(path, WriteGguf(spec));
  auto f = GgufFile::Open(path);
  std::remove(path.c_str());  // the mapping stays valid after unlink
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->path(), path);
  ExpectMatchesSpec(**f, spec, 32);
}

TEST(GgufTest, Version2AndCustomAlignment) {
  for (uint64_t alignment : {1, 8, 64, 4096}) {
    GgufSpec spec;
    spec.version = 2;
    spec.alignment = alignment;
    spec.Add("general.alignment", IntValue(VT::kUint32, static_cast<int64_t>(alignment)));
    spec.AddTensor("x", {7}, GgmlType::kF32, Iota(28))
        .AddTensor("y", {32}, GgmlType::kQ8_0, Q8Blocks(1))
        .AddTensor("z", {2}, GgmlType::kBF16, Iota(4));
    auto f = GgufFile::FromBytes(WriteGguf(spec));
    ASSERT_TRUE(f.ok()) << alignment << ": " << f.status();
    ExpectMatchesSpec(**f, spec, alignment);
    if (alignment == 4096) {
      EXPECT_EQ((*f)->tensors()[2].offset, 8192u);
    }
  }
}

TEST(GgufTest, NoTensors) {
  GgufSpec spec;
  spec.Add("k", StringValue("v"));
  auto f = GgufFile::FromBytes(WriteGguf(spec));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE((*f)->tensors().empty());
  EXPECT_EQ(*(*f)->GetString("k"), "v");
}

TEST(GgufTest, TypedGetters) {
  auto parsed = GgufFile::FromBytes(WriteGguf(AllTypesSpec()));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const GgufFile& f = **parsed;
  EXPECT_EQ(*f.GetInt("u8"), 255);
  EXPECT_EQ(*f.GetInt("i8"), -128);
  EXPECT_EQ(*f.GetInt("u16"), 65535);
  EXPECT_EQ(*f.GetInt("i16"), -32768);
  EXPECT_EQ(*f.GetInt("u32"), 4294967295);
  EXPECT_EQ(*f.GetInt("i32"), std::numeric_limits<int32_t>::min());
  EXPECT_EQ(*f.GetInt("u64"), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(*f.GetInt("i64"), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(f.GetInt("u64_max").status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(std::string(f.GetInt("u64_max").status().message()), HasSubstr("exceeds int64"));
  EXPECT_THAT(std::string(f.GetInt("str").status().message()),
              HasSubstr("'str' is string, not an integer"));
  EXPECT_THAT(std::string(f.GetInt("yes").status().message()), HasSubstr("not an integer"));

  EXPECT_EQ(*f.GetFloat("f32"), static_cast<double>(0.1f));
  EXPECT_EQ(*f.GetFloat("f64"), -1e300);
  EXPECT_EQ(*f.GetFloat("i16"), -32768.0);
  EXPECT_THAT(std::string(f.GetFloat("arr.str").status().message()),
              HasSubstr("is array, not a number"));

  EXPECT_TRUE(*f.GetBool("yes"));
  EXPECT_FALSE(*f.GetBool("no"));
  EXPECT_THAT(std::string(f.GetBool("u8").status().message()), HasSubstr("is uint8, not bool"));

  EXPECT_EQ(*f.GetString("str"), "llama");
  EXPECT_EQ(*f.GetString("odd_str"), std::string("a\0b\xC3\xA9\n", 6));
  EXPECT_EQ(*f.GetString(""), "empty key");
  EXPECT_THAT(std::string(f.GetString("f32").status().message()),
              HasSubstr("is float32, not string"));

  EXPECT_THAT(*f.GetStringArray("arr.str"), ::testing::ElementsAre("<s>", "", "\xC4\xA0the"));
  EXPECT_THAT(std::string(f.GetStringArray("arr.int32").status().message()),
              HasSubstr("not an array of strings"));
  EXPECT_THAT(std::string(f.GetStringArray("str").status().message()),
              HasSubstr("not an array of strings"));

  EXPECT_THAT(*f.GetIntArray("arr.int8"), ::testing::ElementsAre(-1, 0, 1));
  EXPECT_THAT(*f.GetIntArray("arr.uint64"), ::testing::ElementsAre(1, 2, 3));
  EXPECT_TRUE(f.GetIntArray("arr.empty")->empty());
  EXPECT_EQ(f.GetIntArray("arr.u64_big").status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(std::string(f.GetIntArray("arr.float32").status().message()),
              HasSubstr("not an array of integers"));

  EXPECT_THAT(*f.GetFloatArray("arr.float64"), ::testing::ElementsAre(-1.0, -0.5, 0.0));
  EXPECT_THAT(*f.GetFloatArray("arr.int32"), ::testing::ElementsAre(-1.0, 0.0, 1.0));
  EXPECT_THAT(std::string(f.GetFloatArray("arr.str").status().message()),
              HasSubstr("not a number"));
  EXPECT_THAT(std::string(f.GetFloatArray("u8").status().message()), HasSubstr("not an array"));

  for (const char* missing : {"nope", "general.architecture"}) {
    EXPECT_EQ(f.GetInt(missing).status().code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(f.GetFloat(missing).status().code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(f.GetBool(missing).status().code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(f.GetString(missing).status().code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(f.GetStringArray(missing).status().code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(f.GetIntArray(missing).status().code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(f.GetFloatArray(missing).status().code(), absl::StatusCode::kNotFound);
    EXPECT_THAT(std::string(f.GetString(missing).status().message()),
                HasSubstr(absl::StrCat("'", missing, "' is missing")));
  }
  EXPECT_TRUE(f.Has("u8"));
  EXPECT_FALSE(f.Has("nope"));
}

// A small valid file used by the truncation and mutation tests: metadata of several kinds and
// three tensors, ending exactly at the end of the last tensor's data.
std::vector<uint8_t> SmallValidFile() {
  GgufSpec s;
  s.Add("general.architecture", StringValue("llama"))
      .Add("n", IntValue(VT::kUint32, 30))
      .Add("eps", FloatValue(VT::kFloat32, 1e-5))
      .Add("flag", BoolValue(true))
      .Add("tokens", ArrayValue(VT::kString, {StringValue("a"), StringValue("bc")}))
      .Add("nested", ArrayValue(VT::kArray, {ArrayValue(VT::kInt8, {IntValue(VT::kInt8, 1)})}));
  s.AddTensor("w", {32, 2}, GgmlType::kQ8_0, Q8Blocks(2))
      .AddTensor("n", {4}, GgmlType::kF32, Iota(16))
      .AddTensor("h", {2, 2}, GgmlType::kF16, Iota(8));
  return WriteGguf(s);
}

absl::Status ParseStatus(const GgufSpec& spec) {
  return GgufFile::FromBytes(WriteGguf(spec)).status();
}

void ExpectError(const GgufSpec& spec, const std::string& substr,
                 absl::StatusCode code = absl::StatusCode::kInvalidArgument) {
  const absl::Status s = ParseStatus(spec);
  EXPECT_EQ(s.code(), code) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(substr));
}

TEST(GgufBadInputTest, EveryTruncationFails) {
  const std::vector<uint8_t> full = SmallValidFile();
  ASSERT_TRUE(GgufFile::FromBytes(full).ok());
  for (size_t n = 0; n < full.size(); ++n) {
    const absl::Status s = GgufFile::FromBytes(std::span<const uint8_t>(full.data(), n)).status();
    ASSERT_FALSE(s.ok()) << "prefix of " << n << " bytes parsed";
    ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << n << ": " << s;
    // Each names the shortage: a read past the end, a length or count larger than what is
    // left, or tensor data outside the file.
    ASSERT_THAT(std::string(s.message()),
                AnyOf(HasSubstr("truncated"), HasSubstr("bytes remain"), HasSubstr("bytes left")))
        << n << ": " << s;
  }
}

TEST(GgufBadInputTest, HeaderErrors) {
  EXPECT_THAT(std::string(GgufFile::FromBytes({}).status().message()), HasSubstr("truncated"));
  GgufSpec spec;
  spec.magic = 0x46554746;
  ExpectError(spec, "bad magic");
  spec = GgufSpec();
  spec.version = 1;
  ExpectError(spec, "version 1 is not supported", absl::StatusCode::kUnimplemented);
  spec.version = 4;
  ExpectError(spec, "version 4 is not supported", absl::StatusCode::kUnimplemented);
  spec = GgufSpec();
  spec.tensor_count = uint64_t{1} << 40;
  ExpectError(spec, "absurd counts");
  spec = GgufSpec();
  spec.kv_count = ~uint64_t{0};
  ExpectError(spec, "absurd counts");
  // Plausible counts that the bytes cannot hold.
  spec = GgufSpec();
  spec.tensor_count = 1000;
  ExpectError(spec, "tensor count 1000 cannot fit");
  spec = GgufSpec();
  spec.kv_count = 3;
  ExpectError(spec, "truncated while reading metadata key");
}

TEST(GgufBadInputTest, TensorErrors) {
  auto one = [](std::vector<uint64_t> ne, uint32_t type, std::vector<uint8_t> data) {
    GgufSpec s;
    s.tensors.push_back({"t", std::move(ne), type, std::nullopt, std::move(data)});
    return s;
  };
  const uint32_t f32 = static_cast<uint32_t>(GgmlType::kF32);
  ASSERT_TRUE(ParseStatus(one({4}, f32, Iota(16))).ok());
  // Shape errors.
  ExpectError(one({}, f32, Iota(16)), "'t' has 0 dims (1..4 allowed)");
  ExpectError(one({1, 1, 1, 1, 1}, f32, Iota(4)), "'t' has 5 dims");
  ExpectError(one({0}, f32, {}), "absurd dimension 0");
  ExpectError(one({4, 0}, f32, {}), "absurd dimension 0");
  ExpectError(one({uint64_t{1} << 50}, f32, {}), "absurd dimension 1125899906842624");
  ExpectError(one({~uint64_t{0}}, f32, {}), "absurd dimension");
  // Each dimension is plausible, their product is not (and would overflow int64).
  ExpectError(one({uint64_t{1} << 21, uint64_t{1} << 21, uint64_t{1} << 21}, f32, {}),
              "absurd dimension");
  ExpectError(one({uint64_t{1} << 32, uint64_t{1} << 32, 16, 16}, f32, {}), "absurd dimension");
  // Type errors.
  ExpectError(one({4}, 99, Iota(16)), "unknown ggml type 99", absl::StatusCode::kUnimplemented);
  ExpectError(one({4}, 4, Iota(16)), "unknown ggml type 4", absl::StatusCode::kUnimplemented);
  ExpectError(one({33}, static_cast<uint32_t>(GgmlType::kQ8_0), Iota(68)),
              "not a whole number of Q8_0 blocks of 32");
  // Size and offset errors.
  ExpectError(one({5}, f32, Iota(16)), "lies outside the 16-byte data section");
  ExpectError(one({uint64_t{1} << 40}, f32, Iota(16)), "lies outside");
  GgufSpec s = one({4}, f32, {});  // no data written at all
  s.tensors[0].offset = 32;
  ExpectError(s, "data [32, 48) lies outside the 0-byte data section");
  s.tensors[0].data = Iota(16);
  s.tensors[0].offset = ~uint64_t{0} - 31;  // aligned, and offset + size overflows uint64
  ExpectError(s, "lies outside");
  s.tensors[0].offset = 4;
  ExpectError(s, "offset 4 is not aligned to 32");
  // Duplicate names.
  s = one({4}, f32, Iota(16));
  s.AddTensor("t", {4}, GgmlType::kF32, Iota(16));
  ExpectError(s, "duplicate tensor 't'");
}

TEST(GgufBadInputTest, MetadataErrors) {
  GgufSpec s;
  s.AddRaw("k", 13, RawBytes<uint8_t>({0}));
  ExpectError(s, "'k' has unknown value type 13");
  s = GgufSpec();
  s.AddRaw("k", 0xFFFFFFFF, {});
  ExpectError(s, "unknown value type 4294967295");
  s = GgufSpec();
  s.AddRaw("arr", 9, RawBytes<uint32_t>({13, 0, 0}));
  ExpectError(s, "'arr' has unknown array element type 13");
  // Counts and lengths far beyond the file: rejected before any allocation.
  for (uint32_t et : {0u, 6u, 8u, 9u, 12u}) {
    s = GgufSpec();
    std::vector<uint8_t> payload = RawBytes<uint32_t>({et});
    for (uint8_t b : RawBytes<uint64_t>({uint64_t{1} << 60})) payload.push_back(b);
    s.AddRaw("arr", 9, payload);
    ExpectError(s, "'arr' claims 1152921504606846976 array elements");
  }
  s = GgufSpec();
  s.AddRaw("s", 8, RawBytes<uint64_t>({uint64_t{1} << 62, 0}));
  ExpectError(s, "has length 4611686018427387904 but only 8 bytes remain");
  // An array of one string whose length is absurd.
  testutil::ByteWriter w;
  w.Put<uint32_t>(8);
  w.Put<uint64_t>(1);
  w.Put<uint64_t>(~uint64_t{0});
  s = GgufSpec();
  s.AddRaw("arr", 9, w.bytes());
  ExpectError(s, "has length 18446744073709551615");
  // A key whose length is absurd: the u64 at byte 24 (after magic, version and the counts).
  std::vector<uint8_t> bytes = WriteGguf(GgufSpec().Add("key", IntValue(VT::kUint8, 1)));
  bytes[24] = 0xFF;
  bytes[31] = 0x7F;  // length 0x7F000000000000FF
  EXPECT_THAT(std::string(GgufFile::FromBytes(bytes).status().message()),
              HasSubstr("metadata key"));
  // Duplicate key.
  s = GgufSpec();
  s.Add("dup", IntValue(VT::kUint8, 1)).Add("dup", StringValue("x"));
  ExpectError(s, "duplicate metadata key 'dup'");
  // Bool other than 0 or 1, as a value and inside an array.
  s = GgufSpec();
  s.AddRaw("b", 7, RawBytes<uint8_t>({2}));
  ExpectError(s, "'b' has bool value 2 (must be 0 or 1)");
  s = GgufSpec();
  s.AddRaw("ba", 9, RawBytes<uint32_t>({7, 2, 0}));  // two bools: 0, then...
  s.kvs.back().raw_payload.push_back(1);
  s.kvs.back().raw_payload.push_back(255);
  ExpectError(s, "'ba' has bool value 255");
  // Arrays nested deeper than the reader allows.
  GgufValue deep = ArrayValue(VT::kUint8, {});
  for (int d = 0; d < 9; ++d) deep = ArrayValue(VT::kArray, {deep});
  s = GgufSpec();
  s.Add("deep", deep);
  ExpectError(s, "'deep' nests arrays deeper than 8");
  // Alignment.
  for (int64_t a : {0, 3, 24, 48, 1 << 21}) {
    s = GgufSpec();
    s.Add("general.alignment", IntValue(VT::kUint32, a));
    ExpectError(s, absl::StrCat("general.alignment ", a, " is not a power of two"));
  }
  s = GgufSpec();
  s.Add("general.alignment", StringValue("32"));
  ExpectError(s, "'general.alignment' is string, not an integer");
}

TEST(GgufBadInputTest, OpenErrors) {
  auto missing = GgufFile::Open("/nonexistent/dir/model.gguf");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("/nonexistent/dir/model.gguf"));
  auto dir = GgufFile::Open(std::filesystem::temp_directory_path().string());
  EXPECT_THAT(std::string(dir.status().message()), HasSubstr("not a regular file"));
  // Parse errors from Open name the file.
  const std::string path = TempPath("bad.gguf");
  std::vector<uint8_t> bytes = SmallValidFile();
  bytes.resize(bytes.size() - 1);
  WriteFile(path, bytes);
  auto bad = GgufFile::Open(path);
  std::remove(path.c_str());
  EXPECT_THAT(std::string(bad.status().message()), AllOf(HasSubstr("outside"), HasSubstr(path)));
  const std::string empty = TempPath("empty.gguf");
  WriteFile(empty, {});
  auto e = GgufFile::Open(empty);
  std::remove(empty.c_str());
  EXPECT_THAT(std::string(e.status().message()), HasSubstr("truncated while reading magic"));
}

// Touches everything a parsed file exposes, so that ASan sees any out-of-bounds pointer.
uint64_t Consume(const GgufFile& f) {
  uint64_t sum = 0;
  for (const auto& [key, v] : f.metadata()) sum += key.size() + v.s.size() + v.arr.size();
  std::vector<float> buf;
  for (const GgufTensor& t : f.tensors()) {
    for (int64_t i = 0; i < t.n_bytes; ++i) sum += t.data[i];
    auto traits = GetGgmlTypeTraits(static_cast<uint32_t>(t.type));
    if (traits && traits->can_dequantize && t.n_elements <= (1 << 20)) {
      buf.resize(t.n_elements);
      EXPECT_TRUE(Dequantize(t.type, t.data, t.n_elements, buf.data()).ok()) << t.name;
    }
  }
  return sum;
}

TEST(GgufFuzzTest, RandomMutationsNeverCrash) {
  const std::vector<uint8_t> valid = SmallValidFile();
  std::mt19937 rng(20240613);
  int ok = 0, failed = 0;
  uint64_t sink = 0;
  for (int iter = 0; iter < 4000; ++iter) {
    std::vector<uint8_t> b = valid;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) {
      const size_t pos = rng() % b.size();
      switch (rng() % 3) {
        case 0:
          b[pos] ^= static_cast<uint8_t>(1u << (rng() % 8));
          break;  // bit flip
        case 1:
          b[pos] = static_cast<uint8_t>(rng());
          break;  // random byte
        default:
          b[pos] = (rng() & 1) ? 0xFF : 0x00;
          break;  // extreme byte
      }
    }
    if (rng() % 8 == 0) b.resize(rng() % b.size());  // sometimes truncated too
    auto f = GgufFile::FromBytes(b);
    if (f.ok()) {
      ++ok;
      sink += Consume(**f);
    } else {
      ++failed;
      EXPECT_FALSE(f.status().message().empty());
    }
  }
  // The loop exercised both outcomes (mutations in tensor data stay valid).
  EXPECT_GT(ok, 100);
  EXPECT_GT(failed, 100);
  EXPECT_GT(sink, 0u);
}

TEST(GgufModelTest, DefaultModelOpens) {
  const std::string path = ResolveModelPath("");  // $SEMSHARE_MODEL or the installed model
  auto f = GgufFile::Open(path);
  ASSERT_TRUE(f.ok()) << path << ": " << f.status() << " (run scripts/setup or set SEMSHARE_MODEL)";
  EXPECT_EQ(*(*f)->GetString("general.architecture"), "llama");
  EXPECT_EQ(*(*f)->GetInt("llama.block_count"), 30);
  EXPECT_EQ((*f)->tensors().size(), 272u);
  const GgufTensor* emb = (*f)->FindTensor("token_embd.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->type, GgmlType::kQ8_0);
  EXPECT_EQ(emb->ne, (std::vector<int64_t>{576, 49152}));
  EXPECT_EQ(emb->n_bytes, int64_t{49152} * 576 / 32 * 34);
  // The vocabulary arrays are as long as the embedding has rows.
  auto tokens = (*f)->GetStringArray("tokenizer.ggml.tokens");
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_EQ(tokens->size(), 49152u);
  // A row of the embedding dequantises to finite, non-constant values.
  std::vector<float> row(576);
  ASSERT_TRUE(Dequantize(emb->type, emb->data + 34 * 18 * 100, 576, row.data()).ok());
  float lo = row[0], hi = row[0];
  for (float x : row) {
    ASSERT_TRUE(std::isfinite(x));
    lo = std::min(lo, x), hi = std::max(hi, x);
  }
  EXPECT_LT(lo, hi);
}

}  // namespace
}  // namespace semshare::engine
