#include "cache_store/redis_tier.h"

#include <xxhash.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "cache_store/codec.h"

namespace semshare::store {
namespace {

constexpr char kManifestMagic[4] = {'S', 'S', 'R', 'M'};
constexpr char kSignatureMagic[4] = {'S', 'S', 'R', 'S'};
constexpr uint32_t kRedisFormatVersion = 1;
constexpr int64_t kChunkRows = kKvChunkRows;  // tokens per chunk key
constexpr int64_t kMaxEncodedBytes = int64_t{1} << 40;

std::string Hex16(uint64_t v) { return absl::StrCat(absl::Hex(v, absl::kZeroPad16)); }

template <typename T>
void Put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(T));
}
void PutChecksum(std::string& out) { Put<uint64_t>(out, XXH3_64bits(out.data(), out.size())); }

// Bounds-checked reads.
class Reader {
 public:
  explicit Reader(std::string_view b) : b_(b) {}
  template <typename T>
  bool Get(T* v) {
    if (b_.size() - pos_ < sizeof(T)) return false;
    std::memcpy(v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool GetBytes(std::string_view* v, uint64_t n) {
    if (b_.size() - pos_ < n) return false;
    *v = b_.substr(pos_, n);
    pos_ += n;
    return true;
  }
  size_t pos() const { return pos_; }

 private:
  std::string_view b_;
  size_t pos_ = 0;
};

// Verifies the trailing XXH3 of a manifest or signature value and its magic + version.
absl::StatusOr<std::string_view> CheckedBody(std::string_view v, const char (&magic)[4],
                                             const char* what) {
  if (v.size() < 16) return absl::DataLossError(absl::StrCat("redis ", what, " truncated"));
  uint64_t sum = 0;
  std::memcpy(&sum, v.data() + v.size() - 8, 8);
  if (sum != XXH3_64bits(v.data(), v.size() - 8)) {
    return absl::DataLossError(absl::StrCat("redis ", what, " checksum mismatch"));
  }
  uint32_t version = 0;
  std::memcpy(&version, v.data() + 4, 4);
  if (std::memcmp(v.data(), magic, 4) != 0 || version != kRedisFormatVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("redis ", what, " has a foreign magic or version ", version));
  }
  return v.substr(8, v.size() - 16);
}

// How an encoded record is split into chunk keys: per layer, segments of up to kChunkRows
// rows of row_bytes each plus an 8-byte checksum (the codec's KV chunks), after a head.
struct Layout {
  uint64_t id = 0;
  uint64_t total_len = 0, full_hash = 0, row_bytes = 0, head_len = 0;
  uint32_t n_chunks = 0;
  std::vector<uint64_t> rows;  // [n_layers]
  std::string_view head;       // parse only
  uint64_t Segment(size_t l, uint64_t j) const {
    const uint64_t begin = j * kChunkRows;
    if (rows[l] <= begin) return 0;
    return std::min<uint64_t>(kChunkRows, rows[l] - begin) * row_bytes + 8;
  }
  uint64_t KvBytes() const {
    uint64_t s = 0;
    for (size_t l = 0; l < rows.size(); ++l) {
      for (uint64_t j = 0; j < n_chunks; ++j) s += Segment(l, j);
    }
    return s;
  }
};

std::string EncodeManifest(const Layout& m, std::string_view encoded) {
  std::string out(kManifestMagic, 4);
  Put<uint32_t>(out, kRedisFormatVersion);
  Put<uint64_t>(out, m.id);
  Put<uint64_t>(out, m.total_len);
  Put<uint64_t>(out, m.full_hash);
  Put<uint64_t>(out, m.row_bytes);
  Put<uint32_t>(out, static_cast<uint32_t>(m.rows.size()));
  Put<uint32_t>(out, m.n_chunks);
  for (uint64_t r : m.rows) Put<uint64_t>(out, r);
  Put<uint64_t>(out, m.head_len);
  out.append(encoded.substr(0, m.head_len));
  PutChecksum(out);
  return out;
}

absl::StatusOr<Layout> DecodeManifest(std::string_view v) {
  absl::StatusOr<std::string_view> body = CheckedBody(v, kManifestMagic, "manifest");
  if (!body.ok()) return body.status();
  Reader r(*body);
  Layout m;
  uint32_t n_layers = 0;
  const auto bad = [](auto&&... p) {
    return absl::DataLossError(absl::StrCat("redis manifest: ", p...));
  };
  if (!r.Get(&m.id) || !r.Get(&m.total_len) || !r.Get(&m.full_hash) || !r.Get(&m.row_bytes) ||
      !r.Get(&n_layers) || !r.Get(&m.n_chunks)) {
    return bad("shorter than its fields");
  }
  if (n_layers > kMaxRecordLayers || m.total_len > kMaxEncodedBytes ||
      m.row_bytes > 4 + 2 * 8 * static_cast<uint64_t>(kMaxRecordKvDim)) {
    return bad("field out of range");
  }
  uint64_t max_rows = 0;
  m.rows.resize(n_layers);
  for (uint64_t& rows : m.rows) {
    if (!r.Get(&rows) || rows > static_cast<uint64_t>(kMaxRecordTokens)) return bad("bad rows");
    max_rows = std::max(max_rows, rows);
  }
  if (m.n_chunks != (max_rows + kChunkRows - 1) / kChunkRows) return bad("bad chunk count");
  if (!r.Get(&m.head_len) || !r.GetBytes(&m.head, m.head_len) || r.pos() != body->size()) {
    return bad("head length disagrees with the value");
  }
  if (m.head_len + m.KvBytes() != m.total_len) return bad("layout does not add up");
  return m;
}

std::string EncodeSignature(uint64_t id, const Namespace& ns, const Signature& sig) {
  std::string out(kSignatureMagic, 4);
  Put<uint32_t>(out, kRedisFormatVersion);
  Put<uint64_t>(out, id);
  for (const std::string* s : {&ns.tenant, &ns.model_fingerprint}) {
    Put<uint32_t>(out, static_cast<uint32_t>(s->size()));
    out.append(*s);
  }
  Put<uint32_t>(out, static_cast<uint32_t>(sig.size()));
  out.append(reinterpret_cast<const char*>(sig.data()), sig.size() * sizeof(uint32_t));
  PutChecksum(out);
  return out;
}

absl::Status DecodeSignature(std::string_view v, uint64_t* id, Namespace* ns, Signature* sig) {
  absl::StatusOr<std::string_view> body = CheckedBody(v, kSignatureMagic, "signature");
  if (!body.ok()) return body.status();
  Reader r(*body);
  uint32_t len = 0, n = 0;
  std::string_view s;
  if (!r.Get(id) || !r.Get(&len) || len > kMaxNamespaceField || !r.GetBytes(&s, len)) {
    return absl::DataLossError("redis signature: bad namespace");
  }
  ns->tenant.assign(s);
  if (!r.Get(&len) || len > kMaxNamespaceField || !r.GetBytes(&s, len)) {
    return absl::DataLossError("redis signature: bad namespace");
  }
  ns->model_fingerprint.assign(s);
  if (!r.Get(&n) || !r.GetBytes(&s, uint64_t{n} * 4) || r.pos() != body->size()) {
    return absl::DataLossError("redis signature: bad length");
  }
  sig->resize(n);
  std::memcpy(sig->data(), s.data(), s.size());
  return absl::OkStatus();
}

RedisCommand Cmd(std::vector<std::string> args) { return RedisCommand{std::move(args), 1}; }

void AddTtl(RedisCommand& c, int64_t ttl_ms) {
  if (ttl_ms <= 0) return;
  c.args.push_back("PX");
  c.args.push_back(absl::StrCat(ttl_ms));
}

}  // namespace

absl::StatusOr<std::unique_ptr<RedisTier>> RedisTier::Create(const RedisTierOptions& options) {
  if (absl::Status s = options.index.Validate(); !s.ok()) return s;
  if (options.key_prefix.empty() ||
      !std::all_of(options.key_prefix.begin(), options.key_prefix.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
      })) {
    return absl::InvalidArgumentError(absl::StrCat("redis key prefix '", options.key_prefix,
                                                   "' must be non-empty [A-Za-z0-9_.-]"));
  }
  if (options.ttl_ms < 0) return absl::InvalidArgumentError("redis TTL must be >= 0");
  absl::StatusOr<std::unique_ptr<RedisClient>> client = RedisClient::Create(options.client);
  if (!client.ok()) return client.status();
  std::unique_ptr<RedisTier> tier(new RedisTier(options));
  tier->client_ = *std::move(client);
  return tier;
}

RedisTier::RedisTier(const RedisTierOptions& options) : options_(options), hasher_(options.index) {}

std::string RedisTier::ManifestKey(uint64_t id) const {
  return absl::StrCat(options_.key_prefix, ":{", Hex16(id), "}:m");
}
std::string RedisTier::ChunkKey(uint64_t id, int64_t chunk) const {
  return absl::StrCat(options_.key_prefix, ":{", Hex16(id), "}:c:", chunk);
}
std::string RedisTier::SignatureKey(uint64_t id) const {
  return absl::StrCat(options_.key_prefix, ":{", Hex16(id), "}:s");
}
std::string RedisTier::PrefixKey(uint64_t ns_hash, uint64_t chain_hash) const {
  return absl::StrCat(options_.key_prefix, ":p:", Hex16(ns_hash), ":", Hex16(chain_hash));
}
std::string RedisTier::BucketKey(uint64_t ns_hash, uint64_t band_key) const {
  return absl::StrCat(options_.key_prefix, ":b:", Hex16(ns_hash), ":", Hex16(band_key));
}

absl::Status RedisTier::Count(absl::Status s) const {
  if (!s.ok()) errors_.fetch_add(1);
  return s;
}

absl::Status RedisTier::Put(RecordHandle record) {
  if (record == nullptr) return absl::InvalidArgumentError("null record");
  absl::StatusOr<std::string> enc = EncodeRecord(*record);
  if (!enc.ok()) return Count(enc.status());
  const uint64_t id = record->id;
  Layout m;
  m.id = id;
  m.total_len = enc->size();
  m.full_hash = XXH3_64bits(enc->data(), enc->size());
  m.row_bytes = 4 + 2 * static_cast<uint64_t>(KvDtypeBytes(record->dtype) * record->kv.kv_dim());
  uint64_t max_rows = 0;
  for (int64_t l = 0; l < record->kv.n_layers(); ++l) {
    m.rows.push_back(static_cast<uint64_t>(record->kv.layer(l).rows()));
    max_rows = std::max(max_rows, m.rows.back());
  }
  m.n_chunks = static_cast<uint32_t>((max_rows + kChunkRows - 1) / kChunkRows);
  const uint64_t kv_bytes = m.KvBytes();
  if (kv_bytes >= m.total_len) return Count(absl::InternalError("record layout mismatch"));
  m.head_len = m.total_len - kv_bytes;

  // Chunk values: chunk j holds segment (l, j) of every layer; the encoding is layer-major.
  std::vector<RedisCommand> cmds(m.n_chunks);
  std::vector<std::string> values(m.n_chunks);
  uint64_t off = m.head_len;
  for (size_t l = 0; l < m.rows.size(); ++l) {
    for (uint64_t j = 0; j < m.n_chunks; ++j) {
      const uint64_t len = m.Segment(l, j);
      values[j].append(*enc, off, len);
      off += len;
    }
  }
  for (uint64_t j = 0; j < m.n_chunks; ++j) {
    cmds[j] = Cmd({"SET", ChunkKey(id, static_cast<int64_t>(j)), std::move(values[j])});
    AddTtl(cmds[j], options_.ttl_ms);
  }
  const Signature sig = hasher_.Compute(record->features);
  cmds.push_back(Cmd({"SET", SignatureKey(id), EncodeSignature(id, record->ns, sig)}));
  AddTtl(cmds.back(), options_.ttl_ms);
  for (absl::StatusOr<RedisReply>& r : client_->Run(cmds)) {
    if (!r.ok()) return Count(r.status());
  }
  cmds.clear();
  cmds.push_back(Cmd({"SET", ManifestKey(id), EncodeManifest(m, *enc)}));  // last: now visible
  AddTtl(cmds.back(), options_.ttl_ms);
  if (absl::StatusOr<RedisReply> r = client_->Run(cmds[0]); !r.ok()) return Count(r.status());
  bytes_written_.fetch_add(static_cast<int64_t>(m.total_len));
  enc->clear();

  cmds.clear();
  const auto add = [&](const std::string& key) {
    cmds.push_back(Cmd({"SADD", key, Hex16(id)}));
    if (options_.ttl_ms > 0) cmds.push_back(Cmd({"PEXPIRE", key, absl::StrCat(options_.ttl_ms)}));
  };
  const uint64_t ns_hash = record->ns.Hash();
  if (!sig.empty()) {
    std::vector<uint64_t> keys = hasher_.BandKeys(ns_hash, sig);
    std::sort(keys.begin(), keys.end());
    keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
    for (uint64_t k : keys) add(BucketKey(ns_hash, k));
  }
  for (uint64_t h : PrefixChain(record->ns, record->ids)) add(PrefixKey(ns_hash, h));
  // A bucket or prefix key on an unreachable node is skipped (counted): the record stays
  // findable through its other bands. Only when no key could be written is the Put a failure.
  absl::Status first_error;
  size_t indexed = 0;
  for (absl::StatusOr<RedisReply>& r : client_->Run(cmds)) {
    if (r.ok()) {
      ++indexed;
    } else {
      first_error.Update(r.status());
    }
  }
  if (!first_error.ok() && indexed == 0) return Count(first_error);
  if (!first_error.ok()) errors_.fetch_add(1);
  puts_.fetch_add(1);
  return absl::OkStatus();
}

void RedisTier::Drop(uint64_t id, int64_t chunks) {
  data_loss_.fetch_add(1);
  errors_.fetch_add(1);
  (void)client_->Run(Cmd({"DEL", ManifestKey(id)}));  // first: the record is gone for readers
  std::vector<RedisCommand> cmds{Cmd({"DEL", SignatureKey(id)})};
  for (int64_t j = 0; j < chunks; ++j) cmds.push_back(Cmd({"DEL", ChunkKey(id, j)}));
  (void)client_->Run(cmds);
}

absl::StatusOr<RecordHandle> RedisTier::Get(uint64_t id) {
  const auto miss = [&](absl::Status s) {
    misses_.fetch_add(1);
    return absl::IsNotFound(s) ? s : Count(s);
  };
  absl::StatusOr<RedisReply> mr = client_->Run(Cmd({"GET", ManifestKey(id)}));
  if (!mr.ok()) return miss(mr.status());
  if (mr->is_nil()) return miss(absl::NotFoundError(absl::StrCat("no record ", Hex16(id))));
  absl::StatusOr<Layout> m = DecodeManifest(mr->str);
  if (m.ok() && m->id != id) m = absl::DataLossError("redis manifest names another record");
  if (!m.ok()) {
    if (absl::IsDataLoss(m.status())) Drop(id, 0);
    return miss(m.status());
  }
  std::vector<RedisCommand> cmds;
  for (uint32_t j = 0; j < m->n_chunks; ++j) cmds.push_back(Cmd({"GET", ChunkKey(id, j)}));
  std::vector<absl::StatusOr<RedisReply>> chunks = client_->Run(cmds);
  for (uint32_t j = 0; j < m->n_chunks; ++j) {
    if (!chunks[j].ok()) return miss(chunks[j].status());
  }
  // Reassemble the layer-major encoding from the token-major chunks.
  absl::Status damage;
  std::vector<std::vector<std::string_view>> segs(m->rows.size());
  for (uint32_t j = 0; j < m->n_chunks && damage.ok(); ++j) {
    if (chunks[j]->is_nil()) {
      damage = absl::DataLossError(absl::StrCat("redis chunk ", j, " of ", Hex16(id), " missing"));
      break;
    }
    std::string_view v = chunks[j]->str;
    for (size_t l = 0; l < m->rows.size(); ++l) {
      const uint64_t len = m->Segment(l, j);
      if (v.size() < len) break;
      segs[l].push_back(v.substr(0, len));
      v.remove_prefix(len);
    }
    uint64_t want = 0;
    for (size_t l = 0; l < m->rows.size(); ++l) want += m->Segment(l, j);
    if (chunks[j]->str.size() != want) {
      damage = absl::DataLossError(absl::StrCat("redis chunk ", j, " of ", Hex16(id), " has ",
                                                chunks[j]->str.size(), " bytes, expected ", want));
    }
  }
  std::string full;
  if (damage.ok()) {
    full.reserve(m->total_len);
    full.append(m->head);
    for (const auto& layer : segs) {
      for (std::string_view s : layer) full.append(s);
    }
    chunks.clear();
    if (XXH3_64bits(full.data(), full.size()) != m->full_hash) {
      damage = absl::DataLossError(
          absl::StrCat("redis record ", Hex16(id), " does not match its manifest checksum"));
    }
  }
  absl::StatusOr<Record> rec = damage.ok() ? DecodeRecord(full) : absl::StatusOr<Record>(damage);
  if (rec.ok() && rec->id != id) rec = absl::DataLossError("redis record has another id");
  if (!rec.ok()) {
    if (!absl::IsInvalidArgument(rec.status())) Drop(id, m->n_chunks);  // keep foreign formats
    return miss(rec.status());
  }
  hits_.fetch_add(1);
  bytes_read_.fetch_add(static_cast<int64_t>(full.size()));
  return std::make_shared<const Record>(*std::move(rec));
}

absl::StatusOr<std::vector<Candidate>> RedisTier::Lookup(const Namespace& ns, const Signature& sig,
                                                         int k) {
  lookups_.fetch_add(1);
  std::vector<Candidate> out;
  if (sig.empty() || k <= 0) return out;
  std::vector<uint64_t> keys = hasher_.BandKeys(ns.Hash(), sig);
  std::sort(keys.begin(), keys.end());
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
  std::vector<RedisCommand> cmds;
  for (uint64_t key : keys) cmds.push_back(Cmd({"SMEMBERS", BucketKey(ns.Hash(), key)}));
  absl::flat_hash_map<uint64_t, int32_t> bands;
  absl::Status first_error;
  size_t answered = 0;
  for (const absl::StatusOr<RedisReply>& r : client_->Run(cmds)) {
    if (!r.ok()) {
      first_error.Update(r.status());
      continue;
    }
    ++answered;
    for (const RedisReply& e : r->elements) {
      uint64_t id = 0;
      if (e.str.size() == 16 && absl::SimpleHexAtoi(e.str, &id)) ++bands[id];
    }
  }
  // Some buckets unreadable (a node down): rank what the others gave; none: the lookup fails.
  if (!first_error.ok() && answered == 0) return Count(first_error);
  if (!first_error.ok()) errors_.fetch_add(1);
  std::vector<std::pair<int32_t, uint64_t>> ranked;
  for (const auto& [id, b] : bands) ranked.emplace_back(b, id);
  const size_t keep = std::min(
      ranked.size(), static_cast<size_t>(std::max(4 * k + 32, hasher_.config().max_scored)));
  std::partial_sort(ranked.begin(), ranked.begin() + keep, ranked.end(),
                    [](const auto& a, const auto& b) {
                      return a.first != b.first ? a.first > b.first : a.second < b.second;
                    });
  ranked.resize(keep);
  cmds.clear();
  for (const auto& [b, id] : ranked) cmds.push_back(Cmd({"GET", SignatureKey(id)}));
  std::vector<absl::StatusOr<RedisReply>> sigs = client_->Run(cmds);
  for (size_t i = 0; i < ranked.size(); ++i) {
    if (!sigs[i].ok() || sigs[i]->is_nil()) continue;  // unreachable, deleted or expired
    uint64_t id = 0;
    Namespace rns;
    Signature rsig;
    if (!DecodeSignature(sigs[i]->str, &id, &rns, &rsig).ok() || id != ranked[i].second) {
      errors_.fetch_add(1);
      continue;
    }
    if (!(rns == ns) || rsig.size() != sig.size()) continue;
    int64_t agree = 0;
    for (size_t j = 0; j < sig.size(); ++j) agree += rsig[j] == sig[j];
    out.push_back(
        Candidate{id, static_cast<float>(agree) / static_cast<float>(sig.size()), ranked[i].first});
  }
  const size_t top = std::min(out.size(), static_cast<size_t>(k));
  std::partial_sort(out.begin(), out.begin() + top, out.end(), CandidateBetter);
  out.resize(top);
  return out;
}

absl::StatusOr<std::vector<PrefixCandidate>> RedisTier::ProbePrefix(const Namespace& ns,
                                                                    std::span<const int32_t> ids,
                                                                    std::span<const uint64_t> chain,
                                                                    int max) {
  (void)ids;  // candidates are unverified: the store compares the ids of the record it reads
  prefix_lookups_.fetch_add(1);
  std::vector<PrefixCandidate> out;
  if (chain.empty() || max <= 0) return out;
  const uint64_t ns_hash = ns.Hash();
  std::vector<RedisCommand> cmds;
  cmds.reserve(chain.size());
  for (uint64_t h : chain) {
    cmds.push_back(Cmd({"SRANDMEMBER", PrefixKey(ns_hash, h), absl::StrCat(max)}));
  }
  std::vector<absl::StatusOr<RedisReply>> sets = client_->Run(cmds);
  // Some keys unreadable (a node down): use what the others gave; none: the probe fails.
  absl::Status first_error;
  size_t answered = 0;
  for (const absl::StatusOr<RedisReply>& r : sets) {
    if (r.ok()) {
      ++answered;
    } else {
      first_error.Update(r.status());
    }
  }
  if (answered == 0) return Count(first_error);
  if (!first_error.ok()) errors_.fetch_add(1);
  // Deepest key first; a record holding block b holds every block before it, so the deepest
  // answered key is the longest prefix even when a shallower key sat on an unreachable node.
  struct Seen {
    PrefixCandidate c;
    size_t key;  // index into chain of the key it was read from
  };
  std::vector<Seen> seen;
  absl::flat_hash_map<uint64_t, bool> taken;
  for (size_t b = chain.size(); b-- > 0 && static_cast<int>(seen.size()) < max;) {
    if (!sets[b].ok()) continue;
    std::vector<uint64_t> here;
    for (const RedisReply& e : sets[b]->elements) {
      uint64_t id = 0;
      if (e.str.size() == 16 && absl::SimpleHexAtoi(e.str, &id)) here.push_back(id);
    }
    std::sort(here.begin(), here.end());  // SRANDMEMBER's order is random
    for (uint64_t id : here) {
      if (static_cast<int>(seen.size()) >= max || !taken.emplace(id, true).second) continue;
      const int64_t blocks = static_cast<int64_t>(b) + 1;
      seen.push_back({{id, blocks, blocks * kPrefixBlockTokens, false}, b});
    }
  }
  if (seen.empty()) return out;
  cmds.clear();
  for (const Seen& s : seen) cmds.push_back(Cmd({"EXISTS", ManifestKey(s.c.id)}));
  std::vector<absl::StatusOr<RedisReply>> exists = client_->Run(cmds);
  cmds.clear();
  for (size_t i = 0; i < seen.size(); ++i) {
    if (!exists[i].ok()) continue;  // its node is unreachable: the record cannot be read now
    if (exists[i]->integer == 1) {
      out.push_back(seen[i].c);
      continue;
    }
    // Gone (deleted by another replica, expired, evicted by Redis' maxmemory): drop the id from
    // the keys of this prompt that named it (the others go when they expire or are probed).
    prefix_stale_.fetch_add(1);
    for (size_t b = 0; b <= seen[i].key; ++b) {
      cmds.push_back(Cmd({"SREM", PrefixKey(ns_hash, chain[b]), Hex16(seen[i].c.id)}));
    }
  }
  if (!cmds.empty()) (void)client_->Run(cmds);  // best effort: a failure leaves a stale id
  return out;
}

absl::Status RedisTier::Delete(uint64_t id) {
  std::vector<RedisCommand> cmds{Cmd({"GET", ManifestKey(id)}), Cmd({"GET", SignatureKey(id)})};
  std::vector<absl::StatusOr<RedisReply>> got = client_->Run(cmds);
  for (const auto& r : got) {
    if (!r.ok()) return Count(r.status());
  }
  if (absl::StatusOr<RedisReply> r = client_->Run(Cmd({"DEL", ManifestKey(id)})); !r.ok()) {
    return Count(r.status());
  }
  cmds = {Cmd({"DEL", SignatureKey(id)})};
  if (absl::StatusOr<Layout> m = DecodeManifest(got[0]->str); m.ok()) {
    for (uint32_t j = 0; j < m->n_chunks; ++j) cmds.push_back(Cmd({"DEL", ChunkKey(id, j)}));
    // The manifest's head holds the record's ids: its prefix keys.
    if (absl::StatusOr<RecordSummary> sum =
            DecodeSummary(m->head, static_cast<int64_t>(m->total_len));
        sum.ok() && sum->id == id) {
      for (uint64_t h : PrefixChain(sum->ns, sum->ids)) {
        cmds.push_back(Cmd({"SREM", PrefixKey(sum->ns.Hash(), h), Hex16(id)}));
      }
    }
  }
  uint64_t sid = 0;
  Namespace ns;
  Signature sig;
  if (!got[1]->is_nil() && DecodeSignature(got[1]->str, &sid, &ns, &sig).ok() && !sig.empty()) {
    for (uint64_t key : hasher_.BandKeys(ns.Hash(), sig)) {
      cmds.push_back(Cmd({"SREM", BucketKey(ns.Hash(), key), Hex16(id)}));
    }
  }
  for (const auto& r : client_->Run(cmds)) {
    if (!r.ok()) return Count(r.status());
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> RedisTier::Scan(
    const std::string& pattern) const {
  absl::StatusOr<std::vector<std::string>> masters = client_->Masters();
  if (!masters.ok()) return masters.status();
  std::vector<std::pair<std::string, std::string>> out;
  for (const std::string& node : *masters) {
    std::string cursor = "0";
    do {
      const RedisCommand cmd{{"SCAN", cursor, "MATCH", pattern, "COUNT", "1000"}, 0};
      absl::StatusOr<RedisReply> r = std::move(client_->RunOnNode(node, {&cmd, 1})[0]);
      if (!r.ok()) return r.status();
      if (r->elements.size() != 2) return absl::InternalError("unexpected SCAN reply");
      cursor = r->elements[0].str;
      for (const RedisReply& k : r->elements[1].elements) out.emplace_back(node, k.str);
    } while (cursor != "0");
  }
  return out;
}

absl::Status RedisTier::Clear() {
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> keys =
      Scan(options_.key_prefix + ":*");
  if (!keys.ok()) return Count(keys.status());
  absl::flat_hash_map<std::string, std::vector<RedisCommand>> by_node;
  for (auto& [node, key] : *keys) by_node[node].push_back(RedisCommand{{"UNLINK", key}, 1});
  for (const auto& [node, cmds] : by_node) {
    for (const auto& r : client_->RunOnNode(node, cmds)) {
      if (!r.ok()) return Count(r.status());
    }
  }
  return absl::OkStatus();
}

std::vector<RecordInfo> RedisTier::List() const {
  std::vector<RecordInfo> out;
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> keys =
      Scan(options_.key_prefix + ":{*}:m");
  if (!keys.ok()) return out;
  for (const auto& [node, key] : *keys) {
    const RedisCommand cmd{{"GET", key}, 1};
    absl::StatusOr<RedisReply> r = std::move(client_->RunOnNode(node, {&cmd, 1})[0]);
    if (!r.ok() || r->is_nil()) continue;
    absl::StatusOr<Layout> m = DecodeManifest(r->str);
    if (!m.ok()) continue;
    absl::StatusOr<RecordSummary> s = DecodeSummary(m->head, static_cast<int64_t>(m->total_len));
    if (!s.ok() || s->id != m->id) continue;
    out.push_back(RecordInfo{s->id, s->ns, s->n_tokens, s->total_len,
                             static_cast<int64_t>(s->hit_count), s->last_used_ms, s->created_ms});
  }
  return out;
}

TierStats RedisTier::Stats() const {
  TierStats s;
  s.hits = hits_.load();
  s.misses = misses_.load();
  s.lookups = lookups_.load();
  s.prefix_lookups = prefix_lookups_.load();
  s.puts = puts_.load();
  s.errors = errors_.load();
  return s;
}

RedisTierStats RedisTier::RedisStats() const {
  return RedisTierStats{client_->Stats(), data_loss_.load(), bytes_written_.load(),
                        bytes_read_.load()};
}

}  // namespace semshare::store
