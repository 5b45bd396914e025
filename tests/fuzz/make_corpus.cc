// Writes the seed corpus of the fuzz targets (tests/fuzz/corpus/<target>/) from real inputs:
//   gguf/         small GGUF files from tests/gguf_writer.h (every metadata type, tensors of
//                 every type the reader knows, a byte-level tokenizer), and a truncated but
//                 valid copy of the default model: its scalar and string metadata and its
//                 1-D tensors with their real bytes (no vocabulary arrays, no matrices);
//   safetensors/  hand-built files (F32/F16/BF16, scalars, empty tensors, metadata) and, when
//                 a real checkpoint is given, its header with its 1-D tensors' real bytes;
//   codec/        records encoded by cache_store/codec.h (codes or not, trimmed layers, two
//                 KV chunks, an empty record);
//   chat_template/ and tokenizer/ are plain text, written by hand and from MRPC sentences.
// Usage: fuzz_make_corpus OUT_DIR MODEL_GGUF [MODEL_SAFETENSORS]
// Run once by hand when the formats change; the output is committed.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cache_store/codec.h"
#include "cache_store/record.h"
#include "engine/model/gguf.h"
#include "nlohmann/json.hpp"
#include "tests/gguf_writer.h"

namespace {

namespace fs = std::filesystem;
using namespace semshare::engine::testutil;  // NOLINT: the writer's vocabulary
using semshare::engine::GgmlType;
using semshare::engine::GgufFile;
using semshare::engine::GgufValue;
using semshare::engine::GgufValueType;

void Write(const fs::path& path, const void* data, size_t n) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary).write(static_cast<const char*>(data), n);
}
void Write(const fs::path& path, const std::vector<uint8_t>& b) { Write(path, b.data(), b.size()); }
void Write(const fs::path& path, const std::string& s) { Write(path, s.data(), s.size()); }

std::vector<uint8_t> Bytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> b(n);
  for (uint8_t& x : b) x = static_cast<uint8_t>(rng() & 0x3f);  // small, finite halves/floats
  return b;
}

void GgufSeeds(const fs::path& dir, const std::string& model) {
  GgufSpec all;
  all.Add("general.architecture", StringValue("llama"))
      .Add("u8", IntValue(GgufValueType::kUint8, 200))
      .Add("i8", IntValue(GgufValueType::kInt8, -100))
      .Add("u16", IntValue(GgufValueType::kUint16, 60000))
      .Add("i16", IntValue(GgufValueType::kInt16, -30000))
      .Add("u32", IntValue(GgufValueType::kUint32, 4000000000))
      .Add("i32", IntValue(GgufValueType::kInt32, -2000000000))
      .Add("u64", IntValue(GgufValueType::kUint64, -1))
      .Add("i64", IntValue(GgufValueType::kInt64, -5))
      .Add("f32", FloatValue(GgufValueType::kFloat32, 1.5))
      .Add("f64", FloatValue(GgufValueType::kFloat64, -2.25))
      .Add("bool", BoolValue(true))
      .Add("general.alignment", IntValue(GgufValueType::kUint32, 64))
      .Add("ints", ArrayValue(GgufValueType::kInt32, {IntValue(GgufValueType::kInt32, 1),
                                                      IntValue(GgufValueType::kInt32, -2)}))
      .Add("strs", ArrayValue(GgufValueType::kString, {StringValue("a b"), StringValue("")}))
      .Add("nested", ArrayValue(GgufValueType::kArray,
                                {ArrayValue(GgufValueType::kFloat32,
                                            {FloatValue(GgufValueType::kFloat32, 0.5)})}));
  all.alignment = 64;
  // One tensor of each type with a block layout dequant.h supports: {type, block, bytes/block}.
  const struct {
    GgmlType type;
    int64_t block, bytes;
  } kTypes[] = {
      {GgmlType::kF32, 1, 4},      {GgmlType::kF16, 1, 2},     {GgmlType::kBF16, 1, 2},
      {GgmlType::kQ8_0, 32, 34},   {GgmlType::kQ4_0, 32, 18},  {GgmlType::kQ4_1, 32, 20},
      {GgmlType::kQ5_0, 32, 22},   {GgmlType::kQ5_1, 32, 24},  {GgmlType::kQ4_K, 256, 144},
      {GgmlType::kQ5_K, 256, 176}, {GgmlType::kQ6_K, 256, 210}};
  int k = 0;
  for (const auto& t : kTypes) {
    all.AddTensor(absl::StrCat("t", k), {static_cast<uint64_t>(t.block), 2}, t.type,
                  Bytes(static_cast<size_t>(2 * t.bytes), k));
    ++k;
  }
  Write(dir / "all_types.gguf", WriteGguf(all));

  GgufSpec v2;
  v2.version = 2;
  v2.Add("general.name", StringValue("v2"))
      .AddTensor("x", {4, 3, 2, 1}, GgmlType::kF32, Bytes(96, 7));
  Write(dir / "v2_4d.gguf", WriteGguf(v2));
  GgufSpec empty;
  Write(dir / "empty.gguf", WriteGguf(empty));

  // A byte-level BPE tokenizer: the 256 byte tokens, two merges, two control tokens.
  GgufSpec tok;
  std::vector<GgufValue> tokens, types;
  int shifted = 0;
  for (int b = 0; b < 256; ++b) {
    // GPT-2 byte alphabet: printable Latin-1 bytes map to themselves, others to U+0100 + i.
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
    const uint32_t cp = printable ? b : 256 + shifted++;
    std::string s;
    if (cp < 0x80) {
      s.push_back(static_cast<char>(cp));
    } else {
      s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    tokens.push_back(StringValue(s));
    types.push_back(IntValue(GgufValueType::kInt32, 1));
  }
  for (const char* extra : {"ab", "abc", "<|im_start|>", "<|im_end|>"}) {
    tokens.push_back(StringValue(extra));
    types.push_back(IntValue(GgufValueType::kInt32, extra[0] == '<' ? 3 : 1));
  }
  tok.Add("tokenizer.ggml.model", StringValue("gpt2"))
      .Add("tokenizer.ggml.pre", StringValue("smollm"))
      .Add("tokenizer.ggml.tokens", ArrayValue(GgufValueType::kString, tokens))
      .Add("tokenizer.ggml.token_type", ArrayValue(GgufValueType::kInt32, types))
      .Add("tokenizer.ggml.merges",
           ArrayValue(GgufValueType::kString, {StringValue("a b"), StringValue("ab c")}))
      .Add("tokenizer.ggml.bos_token_id", IntValue(GgufValueType::kUint32, 258))
      .Add("tokenizer.ggml.eos_token_id", IntValue(GgufValueType::kUint32, 259))
      .Add("tokenizer.ggml.add_bos_token", BoolValue(false))
      .Add("tokenizer.chat_template", StringValue("{{'<|im_start|>' + m + '<|im_end|>'}}"));
  Write(dir / "tokenizer.gguf", WriteGguf(tok));

  // The default model, cut down: scalar/string metadata and its 1-D (norm) tensors.
  auto f = GgufFile::Open(model);
  if (!f.ok()) {
    std::fprintf(stderr, "%s: %s\n", model.c_str(), std::string(f.status().message()).c_str());
    std::exit(1);
  }
  GgufSpec cut;
  for (const auto& [key, value] : (*f)->metadata()) {
    if (value.type == GgufValueType::kArray && value.arr.size() > 16) continue;
    cut.Add(key, value);
  }
  int n1d = 0;
  for (const auto& t : (*f)->tensors()) {
    if (t.ne.size() != 1 || n1d >= 3) continue;
    cut.AddTensor(t.name, {static_cast<uint64_t>(t.ne[0])}, t.type,
                  std::vector<uint8_t>(t.data, t.data + t.n_bytes));
    ++n1d;
  }
  Write(dir / "default_model_cut.gguf", WriteGguf(cut));
}

std::vector<uint8_t> Safetensors(const nlohmann::json& header, const std::vector<uint8_t>& data) {
  const std::string text = header.dump();
  std::vector<uint8_t> out(8);
  const uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(n >> (8 * i));
  out.insert(out.end(), text.begin(), text.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

void SafetensorsSeeds(const fs::path& dir, const std::string& real) {
  using nlohmann::json;
  json h = {{"__metadata__", {{"format", "pt"}}},
            {"w", {{"dtype", "F32"}, {"shape", {2, 3}}, {"data_offsets", {0, 24}}}},
            {"h", {{"dtype", "F16"}, {"shape", {4}}, {"data_offsets", {24, 32}}}},
            {"b", {{"dtype", "BF16"}, {"shape", json::array()}, {"data_offsets", {32, 34}}}},
            {"e", {{"dtype", "I64"}, {"shape", {0, 5}}, {"data_offsets", {34, 34}}}},
            {"u", {{"dtype", "U8"}, {"shape", {3}}, {"data_offsets", {34, 37}}}}};
  Write(dir / "small.safetensors", Safetensors(h, Bytes(37, 1)));
  json one = {{"x", {{"dtype", "F64"}, {"shape", {1, 1}}, {"data_offsets", {0, 8}}}}};
  Write(dir / "one.safetensors", Safetensors(one, Bytes(8, 2)));
  Write(dir / "empty.safetensors", Safetensors(json::object(), {}));
  if (real.empty()) return;
  // A real checkpoint's header: kept whole with the data cut off (rejected, but the JSON is
  // real), and rebuilt with its 1-D tensors only and their real bytes (valid).
  std::ifstream f(real, std::ios::binary);
  uint64_t n = 0;
  f.read(reinterpret_cast<char*>(&n), 8);
  std::string text(n, '\0');
  f.read(text.data(), static_cast<std::streamsize>(n));
  std::vector<uint8_t> cut(8 + n);
  std::memcpy(cut.data(), &n, 8);
  std::memcpy(cut.data() + 8, text.data(), n);
  Write(dir / "real_header_no_data.safetensors", cut);
  const json real_h = json::parse(text);
  json small = {{"__metadata__", real_h.value("__metadata__", json::object())}};
  std::vector<uint8_t> data;
  int kept = 0;
  for (const auto& [name, e] : real_h.items()) {
    if (name == "__metadata__" || e["shape"].size() != 1 || kept >= 4) continue;
    const uint64_t b = e["data_offsets"][0], end = e["data_offsets"][1];
    std::vector<uint8_t> bytes(end - b);
    f.seekg(static_cast<std::streamoff>(8 + n + b));
    f.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    json entry = e;
    entry["data_offsets"] = {data.size(), data.size() + bytes.size()};
    data.insert(data.end(), bytes.begin(), bytes.end());
    small[name] = entry;
    ++kept;
  }
  Write(dir / "real_1d.safetensors", Safetensors(small, data));
}

namespace store = semshare::store;

store::Record MakeRecord(int64_t n, int64_t layers, int64_t kv_dim, bool codes, bool trim,
                         uint64_t seed) {
  std::mt19937_64 rng(seed);
  store::Record r;
  r.ns = {absl::StrCat("tenant-", seed), "fp0123456789abcdef"};
  for (int64_t i = 0; i < n; ++i) r.ids.push_back(static_cast<int32_t>(rng() % 49152));
  r.id = store::RecordId(r.ns, r.ids);
  r.lsh = {codes ? 2 : 0, codes ? 12 : 0, 0x5e5a4e2025ull, true, 10000.0f};
  if (codes) {
    for (int64_t i = 0; i < n * 2; ++i) r.codes.push_back(static_cast<uint32_t>(rng() % 4096));
  }
  for (int64_t i = 0; i < 2 * n; ++i) r.features.push_back(rng());
  std::sort(r.features.begin(), r.features.end());
  r.features.erase(std::unique(r.features.begin(), r.features.end()), r.features.end());
  r.kv = semshare::engine::KvCache(layers, kv_dim);
  for (int64_t l = 0; l < layers; ++l) {
    auto& layer = r.kv.layer(l);
    const int step = (trim && l == layers - 1) ? 2 : 1;
    for (int64_t p = 0; p < n; p += step) {
      layer.pos.push_back(static_cast<int32_t>(p));
      for (int64_t d = 0; d < kv_dim; ++d) {
        layer.k.push_back(static_cast<float>(static_cast<int>(rng() % 201) - 100) / 8.0f);
        layer.v.push_back(static_cast<float>(static_cast<int>(rng() % 201) - 100) / 8.0f);
      }
    }
  }
  r.created_ms = 1700000000123;
  r.last_used_ms = 1700000000456;
  r.hit_count = 3;
  return r;
}

void CodecSeeds(const fs::path& dir) {
  const struct {
    const char* name;
    int64_t n, layers, kv_dim;
    bool codes, trim;
  } kRecords[] = {{"small_codes", 5, 2, 4, true, false},
                  {"small_plain", 3, 1, 2, false, false},
                  {"trimmed", 6, 3, 2, true, true},
                  {"two_chunks", 300, 1, 1, false, false},
                  {"empty", 0, 0, 1, false, false}};
  for (const auto& c : kRecords) {
    auto bytes = store::EncodeRecord(MakeRecord(c.n, c.layers, c.kv_dim, c.codes, c.trim, c.n));
    if (!bytes.ok()) {
      std::fprintf(stderr, "%s: %s\n", c.name, std::string(bytes.status().message()).c_str());
      std::exit(1);
    }
    Write(dir / absl::StrCat(c.name, ".rec"), *bytes);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s OUT_DIR MODEL_GGUF [MODEL_SAFETENSORS]\n", argv[0]);
    return 1;
  }
  const fs::path out(argv[1]);
  GgufSeeds(out / "gguf", argv[2]);
  SafetensorsSeeds(out / "safetensors", argc > 3 ? argv[3] : "");
  CodecSeeds(out / "codec");
  return 0;
}
