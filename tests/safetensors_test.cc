// SafetensorsFile: hand-built files round trip (values checked bit for bit against IEEE
// encodings written here by hand), and every kind of corrupt input is rejected with a status
// that names the problem, never a crash (this test also runs under ASan + UBSan).
#include "engine/model/safetensors.h"

#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace semshare::engine {
namespace {

using ::testing::HasSubstr;

// u64 header length, the header text, then the data bytes.
std::vector<uint8_t> Build(const std::string& header, const std::vector<uint8_t>& data) {
  // Sized once and filled by index: GCC 12 reports a false -Warray-bounds for
  // vector::insert of a string range after an 8-byte vector.
  std::vector<uint8_t> out(8 + header.size() + data.size());
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(n >> (8 * i));
  std::copy(header.begin(), header.end(), out.begin() + 8);
  std::copy(data.begin(), data.end(), out.begin() + 8 + static_cast<int64_t>(header.size()));
  return out;
}

template <typename T>
void Append(std::vector<uint8_t>* out, T v) {
  uint8_t b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out->insert(out->end(), b, b + sizeof(T));
}

// Three tensors of the three convertible dtypes, plus metadata. Values have known bit patterns:
//   f32 [2, 2] = 1.5, -2.25, 1e-30, 3.4e38
//   f16 [5]    = 0x3C00 (1), 0xC100 (-2.5), 0x7BFF (65504), 0x0001 (2^-24), 0x8000 (-0)
//   bf16 [1,3] = 0x3F80 (1), 0xC040 (-3), 0x0080 (2^-126)
// The header length (odd) leaves the data unaligned on purpose.
std::vector<uint8_t> ValidFile() {
  std::vector<uint8_t> data;
  for (float v : {1.5f, -2.25f, 1e-30f, 3.4e38f}) Append(&data, v);
  for (uint16_t v : {0x3C00, 0xC100, 0x7BFF, 0x0001, 0x8000}) Append(&data, v);
  for (uint16_t v : {0x3F80, 0xC040, 0x0080}) Append(&data, v);
  std::string header = R"({"__metadata__": {"format": "pt"},)"
                       R"( "w.bf16": {"dtype": "BF16", "shape": [1, 3], "data_offsets": [26, 32]},)"
                       R"( "a.f32": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},)"
                       R"( "h.f16": {"dtype": "F16", "shape": [5], "data_offsets": [16, 26]}})";
  if (header.size() % 2 == 0) header += ' ';  // trailing whitespace is valid JSON
  return Build(header, data);
}

std::vector<float> ToFloat(const SafetensorsTensor& t) {
  std::vector<float> out(t.n_elements);
  absl::Status s = SafetensorsToFloat32(t, out);
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

TEST(SafetensorsTest, RoundTripValues) {
  auto f = SafetensorsFile::FromBytes(ValidFile(), "valid");
  ASSERT_TRUE(f.ok()) << f.status();
  const SafetensorsFile& file = **f;
  ASSERT_EQ(file.tensors().size(), 3u);
  // Ordered by data offset, not by header order.
  EXPECT_EQ(file.tensors()[0].name, "a.f32");
  EXPECT_EQ(file.tensors()[1].name, "h.f16");
  EXPECT_EQ(file.tensors()[2].name, "w.bf16");
  EXPECT_EQ(file.metadata().at("format"), "pt");

  const SafetensorsTensor* a = file.Find("a.f32");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype, SafetensorsDtype::kF32);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(a->n_elements, 4);
  EXPECT_EQ(ToFloat(*a), (std::vector<float>{1.5f, -2.25f, 1e-30f, 3.4e38f}));

  const SafetensorsTensor* h = file.Find("h.f16");
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->shape, (std::vector<int64_t>{5}));
  std::vector<float> hv = ToFloat(*h);
  EXPECT_EQ(hv[0], 1.0f);
  EXPECT_EQ(hv[1], -2.5f);
  EXPECT_EQ(hv[2], 65504.0f);
  EXPECT_EQ(hv[3], std::ldexp(1.0f, -24));
  EXPECT_EQ(hv[4], 0.0f);
  EXPECT_TRUE(std::signbit(hv[4]));

  const SafetensorsTensor* b = file.Find("w.bf16");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->dtype, SafetensorsDtype::kBF16);
  EXPECT_EQ(ToFloat(*b), (std::vector<float>{1.0f, -3.0f, std::ldexp(1.0f, -126)}));

  EXPECT_EQ(file.Find("missing"), nullptr);
  std::vector<float> wrong(3);
  EXPECT_EQ(SafetensorsToFloat32(*a, wrong).code(), absl::StatusCode::kInvalidArgument);
}

TEST(SafetensorsTest, OpenFromDisk) {
  const std::filesystem::path path = std::filesystem::temp_directory_path() /
                                     ("safetensors_test_" + std::to_string(::getpid()) + ".st");
  std::vector<uint8_t> bytes = ValidFile();
  {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }
  auto f = SafetensorsFile::Open(path.string());
  std::filesystem::remove(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(ToFloat(*(*f)->Find("a.f32"))[1], -2.25f);

  auto missing = SafetensorsFile::Open(path.string());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr(path.string()));
}

TEST(SafetensorsTest, EmptyScalarAndOtherDtypes) {
  std::vector<uint8_t> data;
  Append<float>(&data, 7.0f);
  Append<int32_t>(&data, 3);
  const std::string header =
      R"({"empty": {"dtype": "F32", "shape": [0, 4], "data_offsets": [4, 4]},)"
      R"( "scalar": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]},)"
      R"( "ints": {"dtype": "I32", "shape": [1], "data_offsets": [4, 8]}})";
  auto f = SafetensorsFile::FromBytes(Build(header, data));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->Find("empty")->n_elements, 0);
  EXPECT_TRUE(ToFloat(*(*f)->Find("empty")).empty());
  EXPECT_EQ(ToFloat(*(*f)->Find("scalar")), std::vector<float>{7.0f});
  std::vector<float> out(1);
  absl::Status s = SafetensorsToFloat32(*(*f)->Find("ints"), out);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(s.message(), HasSubstr("I32"));
  EXPECT_THAT(s.message(), HasSubstr("ints"));
}

// Expects InvalidArgument whose message contains every fragment in `want`.
void ExpectRejected(const std::vector<uint8_t>& bytes, std::vector<std::string> want) {
  auto f = SafetensorsFile::FromBytes(bytes, "bad.safetensors");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << f.status();
  EXPECT_THAT(f.status().message(), HasSubstr("bad.safetensors"));
  for (const std::string& w : want) EXPECT_THAT(f.status().message(), HasSubstr(w));
}

std::vector<uint8_t> OneTensor(const std::string& entry, size_t data_bytes) {
  return Build(R"({"t": )" + entry + "}", std::vector<uint8_t>(data_bytes, 0));
}

TEST(SafetensorsTest, RejectsBadHeaders) {
  ExpectRejected({}, {"too short"});
  ExpectRejected({1, 0, 0}, {"too short"});
  std::vector<uint8_t> past_eof = Build("{}", {});
  past_eof[0] = 3;  // claims 3 header bytes, 2 follow
  ExpectRejected(past_eof, {"past the end"});
  std::vector<uint8_t> huge = Build("{}", {});
  huge[7] = 0x80;
  ExpectRejected(huge, {"header length"});
  std::vector<uint8_t> over_cap(8 + SafetensorsFile::kMaxHeaderBytes + 1, ' ');
  uint64_t n = SafetensorsFile::kMaxHeaderBytes + 1;
  for (int i = 0; i < 8; ++i) over_cap[i] = static_cast<uint8_t>(n >> (8 * i));
  ExpectRejected(over_cap, {"exceeds the limit"});
  ExpectRejected(Build(R"({"t": {"dtype": )", {}), {"not valid JSON"});
  ExpectRejected(Build("", {}), {"not valid JSON"});
  ExpectRejected(Build("[1, 2]", {}), {"not an object"});
  ExpectRejected(Build("\"str\"", {}), {"not an object"});
  ExpectRejected(Build(R"({"t": [[[[1]]]]})", {}), {"nested"});
  ExpectRejected(Build(R"({"__metadata__": {"k": 1}})", {}), {"__metadata__"});
  ExpectRejected(Build(R"({"__metadata__": [1]})", {}), {"__metadata__"});
  ExpectRejected(Build(R"({"t": 5})", {}), {"'t'", "not an object"});
  ExpectRejected(Build(R"({"": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}})",
                       std::vector<uint8_t>(4)),
                 {"empty name"});
  // Duplicate names (nlohmann would silently keep the second).
  ExpectRejected(Build(R"({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},)"
                       R"( "t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                       std::vector<uint8_t>(8)),
                 {"duplicate", "'t'"});
}

TEST(SafetensorsTest, RejectsBadEntries) {
  ExpectRejected(OneTensor(R"({"shape": [1], "data_offsets": [0, 4]})", 4), {"'t'", "dtype"});
  ExpectRejected(OneTensor(R"({"dtype": "F32", "data_offsets": [0, 4]})", 4), {"'t'", "shape"});
  ExpectRejected(OneTensor(R"({"dtype": "F32", "shape": [1]})", 4), {"'t'", "data_offsets"});
  ExpectRejected(OneTensor(R"({"dtype": "F32", "shape": [1], "data_offsets": [0]})", 4),
                 {"data_offsets"});
  ExpectRejected(OneTensor(R"({"dtype": "Q4_0", "shape": [1], "data_offsets": [0, 4]})", 4),
                 {"'t'", "unknown dtype", "Q4_0"});
  ExpectRejected(OneTensor(R"({"dtype": 3, "shape": [1], "data_offsets": [0, 4]})", 4), {"dtype"});
  // Offsets out of range, reversed, negative, non-integer.
  ExpectRejected(OneTensor(R"({"dtype": "F32", "shape": [2], "data_offsets": [4, 12]})", 8),
                 {"'t'", "past the data section"});
  ExpectRejected(OneTensor(R"({"dtype": "F32", "shape": [1], "data_offsets": [8, 4]})", 8),
                 {"begin <= end"});
  ExpectRejected(OneTensor(R"({"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]})", 8),
                 {"data_offsets"});
  ExpectRejected(OneTensor(R"({"dtype": "F32", "shape": [1], "data_offsets": [0.5, 4]})", 8),
                 {"data_offsets"});
  ExpectRejected(OneTensor(R"({"dtype": "F32", "shape": [1], )"
                           R"("data_offsets": [0, 18446744073709551615]})",
                           8),
                 {"data_offsets"});
  // Size mismatch both ways.
  ExpectRejected(OneTensor(R"({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]})", 8),
                 {"'t'", "needs 12 bytes", "hold 8"});
  ExpectRejected(OneTensor(R"({"dtype": "BF16", "shape": [3], "data_offsets": [0, 8]})", 8),
                 {"needs 6 bytes"});
  // Negative, fractional, absurd dims; too many dims.
  ExpectRejected(OneTensor(R"({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]})", 4),
                 {"'t'", "shape entry -1"});
  ExpectRejected(OneTensor(R"({"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]})", 4),
                 {"shape entry"});
  ExpectRejected(OneTensor(R"({"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]})", 8),
                 {"shape entry"});
  ExpectRejected(
      OneTensor(R"({"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]})",
                0),
      {"absurdly large"});
  ExpectRejected(OneTensor(R"({"dtype": "U8", "shape": [18446744073709551615],)"
                           R"( "data_offsets": [0, 0]})",
                           0),
                 {"shape entry"});
  // A zero dim must not hide an overflowing product of the others.
  ExpectRejected(OneTensor(R"({"dtype": "F32", "shape": [0, 4294967296, 4294967296, 4294967296],)"
                           R"( "data_offsets": [0, 0]})",
                           0),
                 {"absurdly large"});
  ExpectRejected(OneTensor(R"({"dtype": "F32", "shape": [1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],)"
                           R"( "data_offsets": [0, 4]})",
                           4),
                 {"dims exceed"});
}

TEST(SafetensorsTest, RejectsOverlaps) {
  ExpectRejected(Build(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                       R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                       std::vector<uint8_t>(12)),
                 {"'b'", "overlaps tensor 'a'"});
  // Identical ranges overlap too.
  ExpectRejected(Build(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},)"
                       R"( "b": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]}})",
                       std::vector<uint8_t>(4)),
                 {"overlaps"});
  // One range inside another, listed second-first.
  ExpectRejected(Build(R"({"inner": {"dtype": "U8", "shape": [2], "data_offsets": [4, 6]},)"
                       R"( "outer": {"dtype": "U8", "shape": [16], "data_offsets": [0, 16]}})",
                       std::vector<uint8_t>(16)),
                 {"overlaps"});
  // Touching ranges and empty tensors anywhere are fine.
  auto ok = SafetensorsFile::FromBytes(
      Build(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},)"
            R"( "e": {"dtype": "F32", "shape": [0], "data_offsets": [2, 2]},)"
            R"( "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
            std::vector<uint8_t>(8)));
  EXPECT_TRUE(ok.ok()) << ok.status();
}

TEST(SafetensorsTest, EveryTruncationIsRejected) {
  const std::vector<uint8_t> full = ValidFile();
  ASSERT_TRUE(SafetensorsFile::FromBytes(full).ok());
  for (size_t n = 0; n < full.size(); ++n) {
    std::vector<uint8_t> prefix(full.begin(), full.begin() + n);
    auto f = SafetensorsFile::FromBytes(prefix);
    EXPECT_FALSE(f.ok()) << "prefix of " << n << " bytes was accepted";
    if (!f.ok()) {
      EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

// Random byte mutations of a valid file: whatever parses must have every tensor inside the
// buffer (converting them touches every byte, which ASan checks); the rest must be rejected.
TEST(SafetensorsTest, RandomMutationsNeverCrash) {
  const std::vector<uint8_t> full = ValidFile();
  std::mt19937 rng(20240611);
  int accepted = 0, rejected = 0;
  for (int iter = 0; iter < 4000; ++iter) {
    std::vector<uint8_t> bytes = full;
    const int n_mut = 1 + static_cast<int>(rng() % 4);
    for (int m = 0; m < n_mut; ++m) {
      const size_t pos = rng() % bytes.size();
      switch (rng() % 4) {
        case 0:
          bytes[pos] = static_cast<uint8_t>(rng());
          break;
        case 1:
          bytes[pos] ^= static_cast<uint8_t>(1u << (rng() % 8));
          break;
        // Digits and JSON punctuation mutate the header into near-valid variants.
        case 2:
          bytes[pos] = "0123456789[]{},:\"-"[rng() % 18];
          break;
        default:
          bytes.resize(pos + 1);
          break;
      }
    }
    auto f = SafetensorsFile::FromBytes(bytes);
    if (!f.ok()) {
      ++rejected;
      continue;
    }
    ++accepted;
    for (const SafetensorsTensor& t : (*f)->tensors()) {
      std::vector<float> out(t.n_elements);
      (void)SafetensorsToFloat32(t, out);
    }
  }
  // Both outcomes occur, so the loop exercises the accept path too.
  EXPECT_GT(accepted, 0);
  EXPECT_GT(rejected, 0);
}

}  // namespace
}  // namespace semshare::engine
