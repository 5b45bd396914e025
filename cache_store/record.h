// A reference record: one earlier prompt's (or whole turn's: prompt + generated tokens) token
// ids, LSH codes, position-free prompt features and full per-layer KV, under a namespace (tenant
// + model fingerprint) that isolates tenants and models absolutely (DESIGN.md section 5). Every
// full 16-token block of the ids is in the exact-prefix index (prefix_index.h), so a record
// serves any prompt that starts with its first tokens. Records are immutable once published; the
// store shares them as std::shared_ptr<const Record> (RecordHandle) so a request holding one never
// sees it freed or changed. Hit counts and last-used times the store tracks live beside the
// record in each tier; the fields here are the values at the time the record was encoded.
#ifndef SEMSHARE_CACHE_STORE_RECORD_H_
#define SEMSHARE_CACHE_STORE_RECORD_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/kv_cache.h"
#include "engine/reuse/reuse_config.h"
#include "engine/reuse/reuse_prefill.h"
#include "engine/reuse/token_matcher.h"

namespace semshare::store {

// Who may see a record: a tenant never sees another tenant's records, and no record is reused
// across models (the fingerprint hashes the model's tensors and config).
struct Namespace {
  std::string tenant;
  std::string model_fingerprint;
  bool operator==(const Namespace&) const = default;
  // Stable 64-bit hash (length-prefixed fields, so ("ab","c") != ("a","bc")).
  uint64_t Hash() const;
  std::string DebugString() const;
};

// Element type of the stored K and V. Only f32 exists today (the CPU backend's type); the tag
// is in the file so f16/bf16 backends can add values (2, 3 are reserved for them) without a
// format change. Readers reject any value they do not know.
enum class KvDtype : uint8_t { kF32 = 1 };
const char* KvDtypeName(KvDtype d);
int64_t KvDtypeBytes(KvDtype d);

// The token-level LSH parameters the codes were computed with (engine ReuseConfig subset).
struct LshParams {
  int32_t bands = 0;
  int32_t bits_per_band = 0;
  uint64_t seed = 0;
  bool ecache_rope = true;
  float rope_base = 10000.0f;
  bool operator==(const LshParams&) const = default;
  static LshParams FromConfig(const engine::ReuseConfig& c);
};

// Hard limits on every size field: the codec refuses larger values before allocating, so a
// corrupt or hostile file can never ask for a huge allocation.
inline constexpr int64_t kMaxRecordTokens = int64_t{1} << 22;  // 4M tokens
inline constexpr int64_t kMaxRecordLayers = 1024;
inline constexpr int64_t kMaxRecordKvDim = int64_t{1} << 16;
inline constexpr int64_t kMaxNamespaceField = 1024;  // bytes of tenant / fingerprint
inline constexpr int32_t kMaxLshBands = 256;
inline constexpr int64_t kMaxRecordFeatures = int64_t{1} << 26;

struct Record {
  uint64_t id = 0;  // RecordId(ns, ids): the same prompt in the same namespace is one record
  Namespace ns;
  std::vector<int32_t> ids;  // [n] token ids
  LshParams lsh;
  // [n, lsh.bands] token-level SimHash codes of `ids` under `lsh`, or empty. Kept so a reader
  // can check that its matcher (embeddings + hyperplanes) agrees with the writer's, and for
  // tiers that index token buckets remotely; see ReferenceFromRecord.
  std::vector<uint32_t> codes;
  // Sorted, unique position-free prompt features (prompt_features.h) the prompt-level index
  // hashes; stored so a tier can rebuild its index without the model.
  std::vector<uint64_t> features;
  KvDtype dtype = KvDtype::kF32;
  // [n_layers] each K, V [rows_l, kv_dim] and pos [rows_l], positions ascending. Layers may
  // hold different row counts (retention), but references are stored full: rows_l == n.
  engine::KvCache kv;
  int64_t created_ms = 0;    // unix milliseconds
  int64_t last_used_ms = 0;  // unix milliseconds
  uint64_t hit_count = 0;

  // Bytes held in memory (KV, ids, codes, features, strings): what memory budgets count.
  int64_t ByteSize() const;
  // Deep copy (KV included); costly, hence named.
  Record Copy() const;
};

using RecordHandle = std::shared_ptr<const Record>;

uint64_t RecordId(const Namespace& ns, std::span<const int32_t> ids);
int64_t NowUnixMs();

// InvalidArgument naming the first field that is out of range or inconsistent (sizes vs
// shapes, limits above, unsorted features or positions). The codec calls it on both sides.
absl::Status ValidateRecord(const Record& r);

// A record from an engine reference (moved in: its KV is not copied). `config` must be the
// config whose matcher made ref.sketch (its codes are stored when their shape agrees);
// `features` come from PromptFeatures(ref.ids). Every layer must hold all m rows.
absl::StatusOr<Record> RecordFromReference(Namespace ns, engine::Reference ref,
                                           const engine::ReuseConfig& config,
                                           std::vector<uint64_t> features);

// An engine reference from a record (ids and KV copied). The sketch is recomputed with
// `matcher` (built from `config`): the E-cache rows it holds are needed for cosines and are
// not stored, and recomputing costs one embedding gather and one GEMM. When the stored LSH
// parameters equal config's and codes were stored, the recomputed codes must equal them,
// else FailedPrecondition (the record came from other embeddings or hyperplanes).
absl::StatusOr<engine::Reference> ReferenceFromRecord(const Record& record,
                                                      const engine::TokenMatcher& matcher,
                                                      const engine::ReuseConfig& config);

}  // namespace semshare::store

#endif  // SEMSHARE_CACHE_STORE_RECORD_H_
