#include "cache_store/record.h"

#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace semshare::store {
namespace {

void AppendField(std::string* out, const std::string& s) {
  const uint64_t len = s.size();
  out->append(reinterpret_cast<const char*>(&len), sizeof(len));
  out->append(s);
}

}  // namespace

uint64_t Namespace::Hash() const {
  std::string buf;
  AppendField(&buf, tenant);
  AppendField(&buf, model_fingerprint);
  return XXH3_64bits(buf.data(), buf.size());
}

std::string Namespace::DebugString() const {
  return absl::StrCat("tenant '", tenant, "' model ", model_fingerprint);
}

const char* KvDtypeName(KvDtype d) {
  switch (d) {
    case KvDtype::kF32:
      return "f32";
  }
  return "unknown";
}

int64_t KvDtypeBytes(KvDtype d) {
  switch (d) {
    case KvDtype::kF32:
      return 4;
  }
  return 0;
}

LshParams LshParams::FromConfig(const engine::ReuseConfig& c) {
  return LshParams{c.lsh_bands, c.lsh_bits_per_band, c.lsh_seed, c.ecache_rope, c.ecache_rope_base};
}

int64_t Record::ByteSize() const {
  return kv.ByteSize() + static_cast<int64_t>(ids.size() * sizeof(int32_t)) +
         static_cast<int64_t>(codes.size() * sizeof(uint32_t)) +
         static_cast<int64_t>(features.size() * sizeof(uint64_t)) +
         [&] {
           int64_t pos = 0;
           for (int64_t l = 0; l < kv.n_layers(); ++l) pos += kv.layer(l).rows();
           return pos * static_cast<int64_t>(sizeof(int32_t));
         }() +
         static_cast<int64_t>(ns.tenant.size() + ns.model_fingerprint.size() + sizeof(Record));
}

Record Record::Copy() const {
  Record r;
  r.id = id;
  r.ns = ns;
  r.ids = ids;
  r.lsh = lsh;
  r.codes = codes;
  r.features = features;
  r.dtype = dtype;
  r.kv = kv.Copy();
  r.created_ms = created_ms;
  r.last_used_ms = last_used_ms;
  r.hit_count = hit_count;
  return r;
}

uint64_t RecordId(const Namespace& ns, std::span<const int32_t> ids) {
  XXH3_state_t* st = XXH3_createState();
  XXH3_64bits_reset(st);
  const uint64_t nh = ns.Hash();
  XXH3_64bits_update(st, &nh, sizeof(nh));
  XXH3_64bits_update(st, ids.data(), ids.size_bytes());
  const uint64_t h = XXH3_64bits_digest(st);
  XXH3_freeState(st);
  return h;
}

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

absl::Status ValidateRecord(const Record& r) {
  const auto bad = [](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(parts...));
  };
  if (r.ns.tenant.size() > kMaxNamespaceField ||
      r.ns.model_fingerprint.size() > kMaxNamespaceField) {
    return bad("record namespace field longer than ", kMaxNamespaceField, " bytes");
  }
  const int64_t n = static_cast<int64_t>(r.ids.size());
  if (n > kMaxRecordTokens) return bad("record has ", n, " tokens (limit ", kMaxRecordTokens, ")");
  for (int32_t id : r.ids) {
    if (id < 0) return bad("record holds a negative token id ", id);
  }
  if (KvDtypeBytes(r.dtype) == 0) {
    return bad("unknown KV dtype ", static_cast<int>(r.dtype));
  }
  if (r.lsh.bands < 0 || r.lsh.bands > kMaxLshBands) {
    return bad("LSH bands ", r.lsh.bands, " out of range [0, ", kMaxLshBands, "]");
  }
  if (r.lsh.bits_per_band < 0 || r.lsh.bits_per_band > 32) {
    return bad("LSH bits per band ", r.lsh.bits_per_band, " out of range [0, 32]");
  }
  if (!std::isfinite(r.lsh.rope_base)) return bad("LSH rope base is not finite");
  if (!r.codes.empty()) {
    if (r.codes.size() != static_cast<size_t>(n) * static_cast<size_t>(r.lsh.bands)) {
      return bad("record has ", r.codes.size(),
                 " LSH codes, expected tokens * bands = ", n * r.lsh.bands);
    }
    if (r.lsh.bits_per_band < 32) {
      const uint32_t limit = uint32_t{1} << r.lsh.bits_per_band;
      for (uint32_t c : r.codes) {
        if (c >= limit) return bad("LSH code ", c, " has more than ", r.lsh.bits_per_band, " bits");
      }
    }
  }
  if (static_cast<int64_t>(r.features.size()) > kMaxRecordFeatures) {
    return bad("record has ", r.features.size(), " features (limit ", kMaxRecordFeatures, ")");
  }
  for (size_t i = 1; i < r.features.size(); ++i) {
    if (r.features[i] <= r.features[i - 1]) return bad("record features are not sorted and unique");
  }
  if (r.kv.n_layers() > kMaxRecordLayers) {
    return bad("record has ", r.kv.n_layers(), " layers (limit ", kMaxRecordLayers, ")");
  }
  if (r.kv.kv_dim() < 0 || r.kv.kv_dim() > kMaxRecordKvDim) {
    return bad("record kv_dim ", r.kv.kv_dim(), " out of range [0, ", kMaxRecordKvDim, "]");
  }
  for (int64_t l = 0; l < r.kv.n_layers(); ++l) {
    const engine::LayerKv& layer = r.kv.layer(l);
    const int64_t rows = layer.rows();
    if (rows > n) return bad("layer ", l, " holds ", rows, " rows, more than the ", n, " tokens");
    const size_t want = static_cast<size_t>(rows * r.kv.kv_dim());
    if (layer.k.size() != want || layer.v.size() != want) {
      return bad("layer ", l, " K/V sizes ", layer.k.size(), "/", layer.v.size(),
                 " do not match rows * kv_dim = ", want);
    }
    for (int64_t i = 0; i < rows; ++i) {
      if (layer.pos[i] < 0 || (i > 0 && layer.pos[i] <= layer.pos[i - 1])) {
        return bad("layer ", l, " positions are not non-negative and ascending at row ", i);
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Record> RecordFromReference(Namespace ns, engine::Reference ref,
                                           const engine::ReuseConfig& config,
                                           std::vector<uint64_t> features) {
  const int64_t m = static_cast<int64_t>(ref.ids.size());
  for (int64_t l = 0; l < ref.kv.n_layers(); ++l) {
    if (ref.kv.layer(l).rows() != m) {
      return absl::InvalidArgumentError(
          absl::StrCat("reference layer ", l, " holds ", ref.kv.layer(l).rows(),
                       " rows; a reference must be full (", m, " rows in every layer)"));
    }
  }
  Record r;
  r.ns = std::move(ns);
  r.id = RecordId(r.ns, ref.ids);
  r.lsh = LshParams::FromConfig(config);
  if (ref.sketch.n == m && ref.sketch.codes.size() == static_cast<size_t>(m) * config.lsh_bands) {
    r.codes = std::move(ref.sketch.codes);
  }
  r.ids = std::move(ref.ids);
  std::sort(features.begin(), features.end());
  features.erase(std::unique(features.begin(), features.end()), features.end());
  r.features = std::move(features);
  r.kv = std::move(ref.kv);
  r.created_ms = r.last_used_ms = NowUnixMs();
  if (absl::Status s = ValidateRecord(r); !s.ok()) return s;
  return r;
}

absl::StatusOr<engine::Reference> ReferenceFromRecord(const Record& record,
                                                      const engine::TokenMatcher& matcher,
                                                      const engine::ReuseConfig& config) {
  const int64_t m = static_cast<int64_t>(record.ids.size());
  for (int64_t l = 0; l < record.kv.n_layers(); ++l) {
    if (record.kv.layer(l).rows() != m) {
      return absl::FailedPreconditionError(absl::StrCat(
          "record ", absl::Hex(record.id), " layer ", l, " is trimmed (", record.kv.layer(l).rows(),
          " of ", m, " rows); only full records can serve as references"));
    }
  }
  engine::Reference ref;
  ref.ids = record.ids;
  ref.sketch = matcher.Sketch(ref.ids);
  if (!record.codes.empty() && record.lsh == LshParams::FromConfig(config) &&
      ref.sketch.codes != record.codes) {
    return absl::FailedPreconditionError(
        absl::StrCat("record ", absl::Hex(record.id),
                     " LSH codes differ from this matcher's: it was made with other embeddings or "
                     "hyperplanes under the same parameters"));
  }
  ref.kv = record.kv.Copy();
  return ref;
}

}  // namespace semshare::store
