#include "cache_store/codec.h"

#include <xxhash.h>

#include <algorithm>
#include <bit>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace semshare::store {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the record codec writes host-order integers and floats: add byte swaps first");

// Longest header any valid record can have (two namespace fields and one u64 per layer, plus
// the fixed fields); a larger header_len is refused before anything is read.
constexpr int64_t kFixedHeaderBytes = 8 + 4 + 4 + 8 + 4 + 4 + 4 + 4 + 4 + 8 + 4 + 4 + 8 + 8 + 8 + 8;
constexpr int64_t kMaxHeaderBytes =
    kFixedHeaderBytes + 2 * kMaxNamespaceField + 8 * kMaxRecordLayers;
constexpr int64_t kMaxChunkRows = 65536;

uint64_t Hash(std::string_view bytes, int64_t begin, int64_t end) {
  return XXH3_64bits(bytes.data() + begin, static_cast<size_t>(end - begin));
}

class Writer {
 public:
  template <typename T>
  void Put(T v) {
    out_.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  void PutBytes(const void* p, size_t n) { out_.append(static_cast<const char*>(p), n); }
  void PutString(const std::string& s) {
    Put<uint32_t>(static_cast<uint32_t>(s.size()));
    out_.append(s);
  }
  // Appends the XXH3_64 of bytes [begin, now).
  void PutChecksum(size_t begin) {
    Put<uint64_t>(XXH3_64bits(out_.data() + begin, out_.size() - begin));
  }
  std::string& out() { return out_; }

 private:
  std::string out_;
};

// Bounds-checked little-endian reads within [pos, end).
class Reader {
 public:
  Reader(std::string_view bytes, int64_t pos, int64_t end) : b_(bytes), pos_(pos), end_(end) {}
  template <typename T>
  bool Get(T* v) {
    if (end_ - pos_ < static_cast<int64_t>(sizeof(T))) return false;
    std::memcpy(v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool GetString(std::string* s, int64_t max_len) {
    uint32_t len = 0;
    if (!Get(&len) || len > max_len || end_ - pos_ < len) return false;
    s->assign(b_.data() + pos_, len);
    pos_ += len;
    return true;
  }
  int64_t pos() const { return pos_; }

 private:
  std::string_view b_;
  int64_t pos_, end_;
};

struct Header {
  uint32_t header_len = 0;
  uint64_t total_len = 0;
  uint64_t id = 0;
  Namespace ns;
  uint64_t n_tokens = 0;
  uint32_t n_layers = 0, kv_dim = 0;
  uint8_t dtype = 0, ecache_rope = 0, has_codes = 0, pad = 0;
  int32_t bands = 0, bits = 0;
  uint64_t seed = 0;
  float rope_base = 0;
  uint32_t chunk_rows = 0;
  uint64_t n_features = 0;
  int64_t created_ms = 0, last_used_ms = 0;
  uint64_t hit_count = 0;
  std::vector<int64_t> rows;  // [n_layers]
  // Section offsets (each section's checksum follows its data).
  int64_t features_off = 0, ids_off = 0, codes_off = 0, kv_off = 0, end = 0;
};

absl::Status Truncated(int64_t have, int64_t need, const char* what) {
  return absl::DataLossError(
      absl::StrCat("record truncated: ", have, " bytes, the ", what, " needs ", need));
}

// Parses and verifies the prelude and header; the bytes after the header are not needed.
absl::StatusOr<Header> ParseHeader(std::string_view b) {
  const int64_t size = static_cast<int64_t>(b.size());
  if (size < kRecordPreludeBytes) return Truncated(size, kRecordPreludeBytes, "prelude");
  if (std::memcmp(b.data(), kRecordMagic, sizeof(kRecordMagic)) != 0) {
    return absl::InvalidArgumentError("not a semshare reference record (bad magic)");
  }
  Header h;
  uint32_t version = 0;
  uint64_t reserved = 0;
  Reader pre(b, 8, kRecordPreludeBytes);
  pre.Get(&version);
  pre.Get(&h.header_len);
  pre.Get(&h.total_len);
  pre.Get(&reserved);
  if (version != kRecordVersion) {
    return absl::InvalidArgumentError(absl::StrCat("unsupported record version ", version,
                                                   " (this build reads ", kRecordVersion, ")"));
  }
  if (h.header_len > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat("record header of ", h.header_len,
                                                   " bytes exceeds the limit ", kMaxHeaderBytes));
  }
  const int64_t header_end = kRecordPreludeBytes + h.header_len;
  if (size < header_end + 8) return Truncated(size, header_end + 8, "header");
  uint64_t sum = 0;
  std::memcpy(&sum, b.data() + header_end, 8);
  if (sum != Hash(b, 0, header_end)) {
    return absl::DataLossError("record header checksum mismatch");
  }
  if (reserved != 0) return absl::DataLossError("record prelude reserved field is not zero");

  const auto bad = [](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("record header: ", parts...));
  };
  Reader r(b, kRecordPreludeBytes, header_end);
  if (!r.Get(&h.id) || !r.GetString(&h.ns.tenant, kMaxNamespaceField) ||
      !r.GetString(&h.ns.model_fingerprint, kMaxNamespaceField) || !r.Get(&h.n_tokens) ||
      !r.Get(&h.n_layers) || !r.Get(&h.kv_dim) || !r.Get(&h.dtype) || !r.Get(&h.ecache_rope) ||
      !r.Get(&h.has_codes) || !r.Get(&h.pad) || !r.Get(&h.bands) || !r.Get(&h.bits) ||
      !r.Get(&h.seed) || !r.Get(&h.rope_base) || !r.Get(&h.chunk_rows) || !r.Get(&h.n_features) ||
      !r.Get(&h.created_ms) || !r.Get(&h.last_used_ms) || !r.Get(&h.hit_count)) {
    return absl::DataLossError("record header is shorter than its fields");
  }
  if (h.dtype != static_cast<uint8_t>(KvDtype::kF32)) {
    return bad("unknown KV dtype ", h.dtype, " (this build reads 1 = f32)");
  }
  if (h.n_tokens > static_cast<uint64_t>(kMaxRecordTokens)) {
    return bad(h.n_tokens, " tokens exceeds the limit ", kMaxRecordTokens);
  }
  if (h.n_layers > kMaxRecordLayers) return bad(h.n_layers, " layers exceeds ", kMaxRecordLayers);
  if (h.kv_dim > kMaxRecordKvDim) return bad("kv_dim ", h.kv_dim, " exceeds ", kMaxRecordKvDim);
  if (h.bands < 0 || h.bands > kMaxLshBands) return bad("LSH bands ", h.bands, " out of range");
  if (h.bits < 0 || h.bits > 32) return bad("LSH bits per band ", h.bits, " out of range");
  if (h.ecache_rope > 1 || h.has_codes > 1 || h.pad != 0) return bad("flag bytes are not 0/1");
  // The encoder sets has_codes only for a non-empty codes section; accepting an empty one would
  // give a record two encodings (found by tests/fuzz/codec_fuzz.cc).
  if (h.has_codes && (h.n_tokens == 0 || h.bands == 0)) {
    return bad("has_codes is set but tokens * bands is 0");
  }
  if (h.chunk_rows == 0 || h.chunk_rows > kMaxChunkRows) {
    return bad("chunk rows ", h.chunk_rows, " out of range [1, ", kMaxChunkRows, "]");
  }
  if (h.n_features > static_cast<uint64_t>(kMaxRecordFeatures)) {
    return bad(h.n_features, " features exceeds the limit ", kMaxRecordFeatures);
  }
  h.rows.resize(h.n_layers);  // <= kMaxRecordLayers, and the reads below are bounds-checked
  for (int64_t& rows : h.rows) {
    uint64_t v = 0;
    if (!r.Get(&v)) return absl::DataLossError("record header is shorter than its row counts");
    if (v > h.n_tokens) return bad("a layer holds ", v, " rows, more than ", h.n_tokens, " tokens");
    rows = static_cast<int64_t>(v);
  }
  if (r.pos() != header_end) {
    return absl::DataLossError(
        absl::StrCat("record header has ", header_end - r.pos(), " unexplained trailing bytes"));
  }

  // Layout; every term is bounded by the limits above, so int64 cannot overflow.
  const int64_t n = static_cast<int64_t>(h.n_tokens);
  const int64_t elem = KvDtypeBytes(static_cast<KvDtype>(h.dtype));
  h.features_off = header_end + 8;
  h.ids_off = h.features_off + 8 * static_cast<int64_t>(h.n_features) + 8;
  h.codes_off = h.ids_off + 4 * n + 8;
  h.kv_off = h.codes_off + (h.has_codes ? 4 * n * h.bands + 8 : 0);
  int64_t end = h.kv_off;
  for (int64_t rows : h.rows) {
    const int64_t chunks = (rows + h.chunk_rows - 1) / h.chunk_rows;
    end += rows * (4 + 2 * elem * static_cast<int64_t>(h.kv_dim)) + 8 * chunks;
  }
  h.end = end;
  if (h.total_len != static_cast<uint64_t>(end)) {
    return absl::DataLossError(absl::StrCat("record header is inconsistent: its fields add up to ",
                                            end, " bytes but total_len says ", h.total_len));
  }
  return h;
}

absl::Status CheckSection(std::string_view b, int64_t begin, int64_t end, const char* what) {
  uint64_t sum = 0;
  std::memcpy(&sum, b.data() + end, 8);
  if (sum != Hash(b, begin, end)) {
    return absl::DataLossError(absl::StrCat("record ", what, " checksum mismatch"));
  }
  return absl::OkStatus();
}

template <typename T>
void CopyOut(std::string_view b, int64_t off, int64_t count, std::vector<T>* out) {
  out->resize(static_cast<size_t>(count));
  if (count > 0) std::memcpy(out->data(), b.data() + off, static_cast<size_t>(count) * sizeof(T));
}

}  // namespace

absl::StatusOr<std::string> EncodeRecord(const Record& rec) {
  if (absl::Status s = ValidateRecord(rec); !s.ok()) return s;
  const int64_t n = static_cast<int64_t>(rec.ids.size());
  const bool has_codes = !rec.codes.empty();
  Writer w;
  w.PutBytes(kRecordMagic, sizeof(kRecordMagic));
  w.Put<uint32_t>(kRecordVersion);
  w.Put<uint32_t>(0);  // header_len, patched below
  w.Put<uint64_t>(0);  // total_len, patched below
  w.Put<uint64_t>(0);
  w.Put<uint64_t>(rec.id);
  w.PutString(rec.ns.tenant);
  w.PutString(rec.ns.model_fingerprint);
  w.Put<uint64_t>(static_cast<uint64_t>(n));
  w.Put<uint32_t>(static_cast<uint32_t>(rec.kv.n_layers()));
  w.Put<uint32_t>(static_cast<uint32_t>(rec.kv.kv_dim()));
  w.Put<uint8_t>(static_cast<uint8_t>(rec.dtype));
  w.Put<uint8_t>(rec.lsh.ecache_rope ? 1 : 0);
  w.Put<uint8_t>(has_codes ? 1 : 0);
  w.Put<uint8_t>(0);
  w.Put<int32_t>(rec.lsh.bands);
  w.Put<int32_t>(rec.lsh.bits_per_band);
  w.Put<uint64_t>(rec.lsh.seed);
  w.Put<float>(rec.lsh.rope_base);
  w.Put<uint32_t>(static_cast<uint32_t>(kKvChunkRows));
  w.Put<uint64_t>(rec.features.size());
  w.Put<int64_t>(rec.created_ms);
  w.Put<int64_t>(rec.last_used_ms);
  w.Put<uint64_t>(rec.hit_count);
  for (int64_t l = 0; l < rec.kv.n_layers(); ++l) {
    w.Put<uint64_t>(static_cast<uint64_t>(rec.kv.layer(l).rows()));
  }
  const uint32_t header_len = static_cast<uint32_t>(w.out().size() - kRecordPreludeBytes);
  std::memcpy(w.out().data() + 12, &header_len, 4);
  // total_len is patched before the header checksum is taken, so compute it from the layout.
  int64_t total = kRecordPreludeBytes + header_len + 8;
  total += 8 * static_cast<int64_t>(rec.features.size()) + 8 + 4 * n + 8;
  if (has_codes) total += 4 * static_cast<int64_t>(rec.codes.size()) + 8;
  const int64_t elem = KvDtypeBytes(rec.dtype);
  for (int64_t l = 0; l < rec.kv.n_layers(); ++l) {
    const int64_t rows = rec.kv.layer(l).rows();
    total +=
        rows * (4 + 2 * elem * rec.kv.kv_dim()) + 8 * ((rows + kKvChunkRows - 1) / kKvChunkRows);
  }
  const uint64_t total_len = static_cast<uint64_t>(total);
  std::memcpy(w.out().data() + 16, &total_len, 8);
  w.out().reserve(static_cast<size_t>(total));
  w.PutChecksum(0);

  size_t begin = w.out().size();
  w.PutBytes(rec.features.data(), rec.features.size() * sizeof(uint64_t));
  w.PutChecksum(begin);
  begin = w.out().size();
  w.PutBytes(rec.ids.data(), rec.ids.size() * sizeof(int32_t));
  w.PutChecksum(begin);
  if (has_codes) {
    begin = w.out().size();
    w.PutBytes(rec.codes.data(), rec.codes.size() * sizeof(uint32_t));
    w.PutChecksum(begin);
  }
  const int64_t dim = rec.kv.kv_dim();
  for (int64_t l = 0; l < rec.kv.n_layers(); ++l) {
    const engine::LayerKv& layer = rec.kv.layer(l);
    for (int64_t r0 = 0; r0 < layer.rows(); r0 += kKvChunkRows) {
      const int64_t r = std::min(kKvChunkRows, layer.rows() - r0);
      begin = w.out().size();
      w.PutBytes(layer.pos.data() + r0, static_cast<size_t>(r) * sizeof(int32_t));
      w.PutBytes(layer.k.data() + r0 * dim, static_cast<size_t>(r * dim) * sizeof(float));
      w.PutBytes(layer.v.data() + r0 * dim, static_cast<size_t>(r * dim) * sizeof(float));
      w.PutChecksum(begin);
    }
  }
  if (static_cast<int64_t>(w.out().size()) != total) {
    return absl::InternalError(
        absl::StrCat("record encoder wrote ", w.out().size(), " bytes, layout says ", total));
  }
  return std::move(w.out());
}

absl::StatusOr<Record> DecodeRecord(std::string_view b) {
  absl::StatusOr<Header> hs = ParseHeader(b);
  if (!hs.ok()) return hs.status();
  const Header& h = *hs;
  const int64_t size = static_cast<int64_t>(b.size());
  if (size < h.end) return Truncated(size, h.end, "record");
  if (size > h.end) {
    return absl::DataLossError(absl::StrCat("record has ", size - h.end, " trailing bytes"));
  }
  const int64_t n = static_cast<int64_t>(h.n_tokens);
  Record rec;
  rec.id = h.id;
  rec.ns = h.ns;
  rec.lsh = LshParams{h.bands, h.bits, h.seed, h.ecache_rope == 1, h.rope_base};
  rec.dtype = static_cast<KvDtype>(h.dtype);
  rec.created_ms = h.created_ms;
  rec.last_used_ms = h.last_used_ms;
  rec.hit_count = h.hit_count;

  const int64_t features_end = h.features_off + 8 * static_cast<int64_t>(h.n_features);
  if (absl::Status s = CheckSection(b, h.features_off, features_end, "features"); !s.ok()) return s;
  CopyOut(b, h.features_off, static_cast<int64_t>(h.n_features), &rec.features);
  if (absl::Status s = CheckSection(b, h.ids_off, h.ids_off + 4 * n, "token ids"); !s.ok())
    return s;
  CopyOut(b, h.ids_off, n, &rec.ids);
  if (h.has_codes) {
    const int64_t count = n * h.bands;
    if (absl::Status s = CheckSection(b, h.codes_off, h.codes_off + 4 * count, "LSH codes");
        !s.ok()) {
      return s;
    }
    CopyOut(b, h.codes_off, count, &rec.codes);
  }
  const int64_t dim = h.kv_dim;
  rec.kv = engine::KvCache(h.n_layers, dim);
  int64_t off = h.kv_off;
  for (int64_t l = 0; l < static_cast<int64_t>(h.n_layers); ++l) {
    engine::LayerKv& layer = rec.kv.layer(l);
    const int64_t rows = h.rows[l];
    layer.pos.resize(static_cast<size_t>(rows));
    layer.k.resize(static_cast<size_t>(rows * dim));
    layer.v.resize(static_cast<size_t>(rows * dim));
    for (int64_t r0 = 0; r0 < rows; r0 += h.chunk_rows) {
      const int64_t r = std::min<int64_t>(h.chunk_rows, rows - r0);
      const int64_t kv_bytes = r * dim * 4;
      const int64_t chunk_end = off + 4 * r + 2 * kv_bytes;
      if (absl::Status s = CheckSection(b, off, chunk_end, "KV chunk"); !s.ok()) {
        return absl::DataLossError(
            absl::StrCat(s.message(), " (layer ", l, ", rows ", r0, "..", r0 + r - 1, ")"));
      }
      std::memcpy(layer.pos.data() + r0, b.data() + off, static_cast<size_t>(4 * r));
      std::memcpy(layer.k.data() + r0 * dim, b.data() + off + 4 * r, static_cast<size_t>(kv_bytes));
      std::memcpy(layer.v.data() + r0 * dim, b.data() + off + 4 * r + kv_bytes,
                  static_cast<size_t>(kv_bytes));
      off = chunk_end + 8;
    }
  }
  if (absl::Status s = ValidateRecord(rec); !s.ok()) {
    return absl::DataLossError(absl::StrCat("record content is inconsistent: ", s.message()));
  }
  if (rec.id != RecordId(rec.ns, rec.ids)) {
    return absl::DataLossError("record id does not match its namespace and token ids");
  }
  return rec;
}

absl::StatusOr<int64_t> SummaryPrefixBytes(std::string_view b) {
  const int64_t size = static_cast<int64_t>(b.size());
  if (size < kRecordPreludeBytes) return kRecordPreludeBytes;
  uint32_t header_len = 0;
  std::memcpy(&header_len, b.data() + 12, 4);
  const int64_t need = kRecordPreludeBytes + std::min<int64_t>(header_len, kMaxHeaderBytes + 1) + 8;
  if (size < need) {
    // Reject a foreign prelude now rather than asking for more bytes.
    if (std::memcmp(b.data(), kRecordMagic, sizeof(kRecordMagic)) != 0) {
      return absl::InvalidArgumentError("not a semshare reference record (bad magic)");
    }
    return need;
  }
  absl::StatusOr<Header> h = ParseHeader(b);
  if (!h.ok()) return h.status();
  return h->codes_off;  // features, ids and their checksums end where the codes begin
}

absl::StatusOr<RecordSummary> DecodeSummary(std::string_view b, int64_t total_bytes) {
  absl::StatusOr<Header> hs = ParseHeader(b);
  if (!hs.ok()) return hs.status();
  const Header& h = *hs;
  if (total_bytes != h.end) {
    return absl::DataLossError(absl::StrCat("record is ", total_bytes,
                                            " bytes but its header says ", h.end,
                                            total_bytes < h.end ? " (truncated)" : ""));
  }
  if (static_cast<int64_t>(b.size()) < h.codes_off) {
    return Truncated(static_cast<int64_t>(b.size()), h.codes_off, "summary prefix");
  }
  const int64_t features_end = h.features_off + 8 * static_cast<int64_t>(h.n_features);
  if (absl::Status s = CheckSection(b, h.features_off, features_end, "features"); !s.ok()) return s;
  const int64_t n = static_cast<int64_t>(h.n_tokens);
  if (absl::Status s = CheckSection(b, h.ids_off, h.ids_off + 4 * n, "token ids"); !s.ok()) {
    return s;
  }
  RecordSummary sum;
  sum.id = h.id;
  sum.ns = h.ns;
  sum.n_tokens = static_cast<int64_t>(h.n_tokens);
  CopyOut(b, h.features_off, static_cast<int64_t>(h.n_features), &sum.features);
  for (size_t i = 1; i < sum.features.size(); ++i) {
    if (sum.features[i] <= sum.features[i - 1]) {
      return absl::DataLossError("record features are not sorted and unique");
    }
  }
  CopyOut(b, h.ids_off, n, &sum.ids);
  sum.created_ms = h.created_ms;
  sum.last_used_ms = h.last_used_ms;
  sum.hit_count = h.hit_count;
  sum.total_len = h.end;
  return sum;
}

}  // namespace semshare::store
