// Fuzz target: the reference-record codec (cache_store/codec.h) on arbitrary bytes.
//
// Every section of a record carries an XXH3 checksum, so random bytes almost never get past
// the header check. Each input is therefore decoded twice: as given (the checksum and prelude
// checks), and after FixUp below rewrote total_len, the record id and every checksum that fits
// in the bytes, which lets mutations reach the field validation and the section copies behind
// them. (FixUp reads the layout independently of codec.cc, from the format comment in
// codec.h.)
//
// Properties checked (abort = a crash libFuzzer records): DecodeRecord, SummaryPrefixBytes and
// DecodeSummary never crash; a record that decodes re-encodes without error, to the very same
// bytes when written with the encoder's chunk size; its summary decodes from the prefix
// SummaryPrefixBytes asks for and agrees with the record.
#include <xxhash.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "cache_store/codec.h"
#include "cache_store/record.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

namespace store = semshare::store;

template <typename T>
bool Load(const std::string& b, int64_t* pos, int64_t end, T* v) {
  if (*pos < 0 || end - *pos < static_cast<int64_t>(sizeof(T))) return false;
  std::memcpy(v, b.data() + *pos, sizeof(T));
  *pos += sizeof(T);
  return true;
}

template <typename T>
void Store(std::string* b, int64_t pos, T v) {
  std::memcpy(b->data() + pos, &v, sizeof(T));
}

void PutHash(std::string* b, int64_t begin, int64_t end) {
  Store<uint64_t>(b, end, XXH3_64bits(b->data() + begin, static_cast<size_t>(end - begin)));
}

// Rewrites total_len, id and the checksums of `b` to agree with its header fields, as far as
// the bytes go. Leaves `b` alone when the header cannot be read.
void FixUp(std::string* b) {
  const int64_t size = static_cast<int64_t>(b->size());
  if (size < store::kRecordPreludeBytes) return;
  uint32_t header_len = 0;
  int64_t pos = 12;
  Load(*b, &pos, size, &header_len);
  const int64_t header_end = store::kRecordPreludeBytes + header_len;
  if (header_end + 8 > size) return;
  pos = store::kRecordPreludeBytes + 8;  // after the id
  store::Namespace ns;
  uint32_t len = 0;
  if (!Load(*b, &pos, header_end, &len) || len > header_end - pos) return;
  ns.tenant.assign(b->data() + pos, len);
  pos += len;
  if (!Load(*b, &pos, header_end, &len) || len > header_end - pos) return;
  ns.model_fingerprint.assign(b->data() + pos, len);
  pos += len;
  uint64_t n_tokens = 0, seed = 0, n_features = 0, skip64 = 0;
  uint32_t n_layers = 0, kv_dim = 0, chunk_rows = 0;
  uint8_t dtype = 0, ecache = 0, has_codes = 0, pad = 0;
  int32_t bands = 0, bits = 0;
  float rope_base = 0;
  if (!Load(*b, &pos, header_end, &n_tokens) || !Load(*b, &pos, header_end, &n_layers) ||
      !Load(*b, &pos, header_end, &kv_dim) || !Load(*b, &pos, header_end, &dtype) ||
      !Load(*b, &pos, header_end, &ecache) || !Load(*b, &pos, header_end, &has_codes) ||
      !Load(*b, &pos, header_end, &pad) || !Load(*b, &pos, header_end, &bands) ||
      !Load(*b, &pos, header_end, &bits) || !Load(*b, &pos, header_end, &seed) ||
      !Load(*b, &pos, header_end, &rope_base) || !Load(*b, &pos, header_end, &chunk_rows) ||
      !Load(*b, &pos, header_end, &n_features) || !Load(*b, &pos, header_end, &skip64) ||
      !Load(*b, &pos, header_end, &skip64) || !Load(*b, &pos, header_end, &skip64)) {
    return;
  }
  // Limits as loose as the codec's, only to keep this arithmetic from overflowing.
  if (n_tokens > (uint64_t{1} << 22) || n_layers > 1024 || kv_dim > (1u << 16) || chunk_rows == 0 ||
      bands < 0 || bands > 256 || n_features > (uint64_t{1} << 26)) {
    return;
  }
  std::vector<int64_t> rows(n_layers);
  for (int64_t& r : rows) {
    uint64_t v = 0;
    if (!Load(*b, &pos, header_end, &v) || v > n_tokens) return;
    r = static_cast<int64_t>(v);
  }
  const int64_t n = static_cast<int64_t>(n_tokens);
  const int64_t features_off = header_end + 8;
  const int64_t ids_off = features_off + 8 * static_cast<int64_t>(n_features) + 8;
  const int64_t codes_off = ids_off + 4 * n + 8;
  const int64_t kv_off = codes_off + (has_codes ? 4 * n * bands + 8 : 0);
  int64_t end = kv_off;
  for (int64_t r : rows) {
    end += r * (4 + 8 * static_cast<int64_t>(kv_dim)) + 8 * ((r + chunk_rows - 1) / chunk_rows);
  }
  Store<uint64_t>(b, 16, static_cast<uint64_t>(end));
  if (ids_off + 4 * n <= size) {
    std::vector<int32_t> ids(static_cast<size_t>(n));
    if (n > 0) std::memcpy(ids.data(), b->data() + ids_off, static_cast<size_t>(4 * n));
    Store<uint64_t>(b, store::kRecordPreludeBytes, store::RecordId(ns, ids));
  }
  PutHash(b, 0, header_end);
  const auto section = [&](int64_t begin, int64_t section_end) {
    if (section_end + 8 <= size) PutHash(b, begin, section_end);
  };
  section(features_off, ids_off - 8);
  section(ids_off, codes_off - 8);
  if (has_codes) section(codes_off, kv_off - 8);
  int64_t off = kv_off;
  for (int64_t r_total : rows) {
    for (int64_t r0 = 0; r0 < r_total && off < size; r0 += chunk_rows) {
      const int64_t r = std::min<int64_t>(chunk_rows, r_total - r0);
      const int64_t chunk_end = off + r * (4 + 8 * static_cast<int64_t>(kv_dim));
      section(off, chunk_end);
      off = chunk_end + 8;
    }
  }
}

void DecodeAndCheck(const std::string& b) {
  (void)store::SummaryPrefixBytes(b);
  (void)store::DecodeSummary(b, static_cast<int64_t>(b.size()));
  auto rec = store::DecodeRecord(b);
  if (!rec.ok()) return;
  auto again = store::EncodeRecord(*rec);
  FUZZ_CHECK(again.ok());
  // The encoder always writes kKvChunkRows rows per KV chunk, so byte equality is only owed
  // for records written with it; chunk_rows follows the namespace and nine fixed fields.
  uint32_t chunk_rows = 0;
  int64_t pos = store::kRecordPreludeBytes + 8 + 4 + static_cast<int64_t>(rec->ns.tenant.size()) +
                4 + static_cast<int64_t>(rec->ns.model_fingerprint.size()) + 8 + 4 + 4 + 4 + 4 + 4 +
                8 + 4;
  Load(b, &pos, static_cast<int64_t>(b.size()), &chunk_rows);
  if (chunk_rows == store::kKvChunkRows) FUZZ_CHECK(*again == b);
  auto need = store::SummaryPrefixBytes(b);
  FUZZ_CHECK(need.ok() && *need <= static_cast<int64_t>(b.size()));
  auto sum =
      store::DecodeSummary(std::string_view(b).substr(0, *need), static_cast<int64_t>(b.size()));
  FUZZ_CHECK(sum.ok());
  FUZZ_CHECK(sum->id == rec->id && sum->ns == rec->ns && sum->features == rec->features &&
             sum->n_tokens == static_cast<int64_t>(rec->ids.size()) &&
             sum->total_len == static_cast<int64_t>(b.size()));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  DecodeAndCheck(bytes);
  FixUp(&bytes);
  DecodeAndCheck(bytes);
  return 0;
}
