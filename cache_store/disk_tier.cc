#include "cache_store/disk_tier.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cache_store/codec.h"

namespace semshare::store {
namespace {

namespace fs = std::filesystem;
constexpr char kSuffix[] = ".ssref";
constexpr char kTempPrefix[] = ".tmp-";
constexpr char kQuarantine[] = "quarantine";

absl::Status Errno(const std::string& what, const std::string& path) {
  return absl::UnavailableError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

// Closes a descriptor on scope exit.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

absl::Status WriteAll(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    const ssize_t w = ::write(fd, data.data(), data.size());
    if (w < 0) {
      if (errno == EINTR) continue;
      return Errno("cannot write", path);
    }
    data.remove_prefix(static_cast<size_t>(w));
  }
  return absl::OkStatus();
}

// Reads up to `len` bytes at `offset`; fewer only at end of file.
absl::StatusOr<std::string> ReadAt(int fd, int64_t offset, int64_t len, const std::string& path) {
  std::string out(static_cast<size_t>(len), '\0');
  int64_t got = 0;
  while (got < len) {
    const ssize_t r = ::pread(fd, out.data() + got, static_cast<size_t>(len - got), offset + got);
    if (r < 0) {
      if (errno == EINTR) continue;
      return Errno("cannot read", path);
    }
    if (r == 0) break;
    got += r;
  }
  out.resize(static_cast<size_t>(got));
  return out;
}

absl::Status FsyncDir(const std::string& dir) {
  Fd d{::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
  if (d.fd < 0) return Errno("cannot open directory", dir);
  if (::fsync(d.fd) != 0) return Errno("cannot fsync directory", dir);
  return absl::OkStatus();
}

// The id a file name "<16 hex>.ssref" names, or false.
bool ParseName(const std::string& name, uint64_t* id) {
  const size_t n = sizeof(kSuffix) - 1;
  if (name.size() != 16 + n || name.compare(16, n, kSuffix) != 0) return false;
  return absl::SimpleHexAtoi(name.substr(0, 16), id);
}

}  // namespace

absl::StatusOr<std::unique_ptr<DiskTier>> DiskTier::Open(const DiskTierOptions& options) {
  if (absl::Status s = options.index.Validate(); !s.ok()) return s;
  if (options.dir.empty()) return absl::InvalidArgumentError("disk tier needs a directory");
  if (options.byte_budget <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("disk byte budget ", options.byte_budget, " must be positive"));
  }
  std::error_code ec;
  fs::create_directories(fs::path(options.dir) / kQuarantine, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("cannot create cache directory ", options.dir, ": ", ec.message()));
  }
  std::unique_ptr<DiskTier> tier(new DiskTier(options));
  if (absl::Status s = tier->Scan(); !s.ok()) return s;
  return tier;
}

DiskTier::DiskTier(const DiskTierOptions& options)
    : options_(options), hasher_(options.index), index_(options.index) {}

std::string DiskTier::PathOf(uint64_t id) const {
  return absl::StrFormat("%s/%016x%s", options_.dir, id, kSuffix);
}

void DiskTier::Quarantine(const std::string& path) {
  errors_.fetch_add(1);
  quarantined_.fetch_add(1);
  std::error_code ec;
  const fs::path p(path);
  fs::rename(p, p.parent_path() / kQuarantine / p.filename(), ec);
  if (ec) fs::remove(p, ec);
}

absl::Status DiskTier::Scan() {
  struct Found {
    int64_t mtime_ns;
    uint64_t id;
    RecordSummary summary;  // without its ids (up to 4 bytes a token): chain replaces them
    std::vector<uint64_t> chain;
  };
  std::vector<Found> found;
  std::error_code ec;
  fs::directory_iterator it(options_.dir, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("cannot read cache directory ", options_.dir, ": ", ec.message()));
  }
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    if (ec) break;
    const std::string name = it->path().filename().string();
    const std::string path = it->path().string();
    if (name.rfind(kTempPrefix, 0) == 0) {  // an interrupted write
      fs::remove(it->path(), ec);
      continue;
    }
    uint64_t id = 0;
    if (!it->is_regular_file(ec) || !ParseName(name, &id)) continue;
    Fd f{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
    struct stat st;
    if (f.fd < 0 || ::fstat(f.fd, &st) != 0) {
      errors_.fetch_add(1);
      continue;
    }
    // Read the prefix the summary needs: prelude, then header, then features.
    absl::StatusOr<RecordSummary> summary = absl::DataLossError("empty file");
    std::string prefix;
    for (int round = 0; round < 4; ++round) {  // prelude, header, features, decode
      absl::StatusOr<int64_t> need = SummaryPrefixBytes(prefix);
      if (!need.ok()) {
        summary = need.status();
        break;
      }
      if (*need <= static_cast<int64_t>(prefix.size())) {
        summary = DecodeSummary(prefix, st.st_size);
        break;
      }
      if (*need > st.st_size) {
        summary = absl::DataLossError("file is shorter than its header");
        break;
      }
      absl::StatusOr<std::string> more = ReadAt(f.fd, 0, *need, path);
      if (!more.ok()) {
        summary = more.status();
        break;
      }
      prefix = *std::move(more);
    }
    if (summary.ok() && summary->id != id) {
      summary = absl::DataLossError("file name and record id differ");
    }
    if (!summary.ok()) {
      Quarantine(path);
      continue;
    }
    std::vector<uint64_t> chain = PrefixChain(summary->ns, summary->ids);
    summary->ids = {};
    found.push_back({static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec, id,
                     *std::move(summary), std::move(chain)});
  }
  std::sort(found.begin(), found.end(), [](const Found& a, const Found& b) {
    return std::tie(a.mtime_ns, a.id) < std::tie(b.mtime_ns, b.id);
  });
  std::lock_guard<std::mutex> lock(mu_);
  for (Found& f : found) {
    Entry e{
        f.summary.ns,         f.summary.total_len, f.summary.n_tokens, 0, f.mtime_ns / 1000000, 0,
        f.summary.created_ms, std::move(f.chain)};
    InsertLocked(f.id, std::move(e), hasher_.Compute(f.summary.features));
  }
  EvictLocked();
  return absl::OkStatus();
}

void DiskTier::InsertLocked(uint64_t id, Entry e, Signature sig) {
  if (auto it = entries_.find(id); it != entries_.end()) e.hits = it->second.hits;
  EraseLocked(id);
  e.tick = ++tick_;
  lru_.insert({e.tick, id});
  bytes_ += e.bytes;
  index_.Insert(id, e.ns, std::move(sig));
  prefix_.Insert(id, e.chain);
  entries_.emplace(id, std::move(e));
}

bool DiskTier::EraseLocked(uint64_t id) {
  auto it = entries_.find(id);
  if (it == entries_.end()) return false;
  lru_.erase({it->second.tick, id});
  bytes_ -= it->second.bytes;
  index_.Erase(id);
  prefix_.Erase(id, it->second.chain);
  entries_.erase(it);
  return true;
}

bool DiskTier::RemoveLocked(uint64_t id) {
  if (!EraseLocked(id)) return false;
  std::error_code ec;
  fs::remove(PathOf(id), ec);
  return true;
}

void DiskTier::EvictLocked() {
  while (bytes_ > options_.byte_budget && !lru_.empty()) {
    RemoveLocked(lru_.begin()->second);
    evictions_.fetch_add(1);
  }
}

absl::Status DiskTier::Put(RecordHandle record) {
  if (record == nullptr) return absl::InvalidArgumentError("null record");
  absl::StatusOr<std::string> bytes = EncodeRecord(*record);
  if (!bytes.ok()) return bytes.status();
  const int64_t size = static_cast<int64_t>(bytes->size());
  if (size > options_.byte_budget) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "record of ", size, " bytes exceeds the disk budget of ", options_.byte_budget));
  }
  Signature sig = hasher_.Compute(record->features);
  std::vector<uint64_t> chain = PrefixChain(record->ns, record->ids);
  const uint64_t id = record->id;
  const std::string path = PathOf(id);
  const std::string tmp = absl::StrFormat("%s/%s%016x-%d-%d", options_.dir, kTempPrefix, id,
                                          static_cast<int>(::getpid()), temp_serial_.fetch_add(1));
  {
    Fd f{::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644)};
    absl::Status s = f.fd < 0 ? Errno("cannot create", tmp) : WriteAll(f.fd, *bytes, tmp);
    if (s.ok() && ::fsync(f.fd) != 0) s = Errno("cannot fsync", tmp);
    if (!s.ok()) {
      errors_.fetch_add(1);
      ::unlink(tmp.c_str());
      return s;
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      absl::Status s = Errno("cannot rename into place", path);
      errors_.fetch_add(1);
      ::unlink(tmp.c_str());
      return s;
    }
    Entry e{record->ns,
            size,
            static_cast<int64_t>(record->ids.size()),
            0,
            NowUnixMs(),
            0,
            record->created_ms,
            std::move(chain)};
    InsertLocked(id, std::move(e), std::move(sig));
    EvictLocked();
  }
  puts_.fetch_add(1);
  if (absl::Status s = FsyncDir(options_.dir); !s.ok()) {
    errors_.fetch_add(1);
    return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<RecordHandle> DiskTier::Get(uint64_t id) {
  const std::string path = PathOf(id);
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(id);
    if (it == entries_.end()) {
      misses_.fetch_add(1);
      return absl::NotFoundError(absl::StrCat("record ", absl::Hex(id), " not on disk"));
    }
    Entry& e = it->second;
    lru_.erase({e.tick, id});
    e.tick = ++tick_;
    lru_.insert({e.tick, id});
    ++e.hits;
    e.last_used_ms = NowUnixMs();
  }
  Fd f{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  struct stat st;
  if (f.fd < 0 || ::fstat(f.fd, &st) != 0) {
    misses_.fetch_add(1);  // evicted or deleted since the index said it was here
    if (errno == ENOENT) {
      // Removed behind the tier's back (or by an eviction that has already dropped the entry):
      // drop the entry so neither index names it again. A concurrent Put that renamed a new
      // file into place since the open failed keeps its entry.
      std::error_code ec;
      std::lock_guard<std::mutex> lock(mu_);
      if (!fs::exists(path, ec)) EraseLocked(id);
    }
    return absl::NotFoundError(absl::StrCat("record ", absl::Hex(id), " left the disk tier"));
  }
  absl::StatusOr<Record> rec = absl::DataLossError("unread");
  absl::StatusOr<std::string> bytes = ReadAt(f.fd, 0, st.st_size, path);
  if (bytes.ok()) rec = DecodeRecord(*bytes);
  if (!bytes.ok()) rec = bytes.status();
  if (rec.ok() && rec->id != id) rec = absl::DataLossError("file name and record id differ");
  if (!rec.ok()) {
    misses_.fetch_add(1);
    std::lock_guard<std::mutex> lock(mu_);
    EraseLocked(id);
    Quarantine(path);
    return absl::DataLossError(
        absl::StrCat("disk record ", path, " is damaged (quarantined): ", rec.status().message()));
  }
  hits_.fetch_add(1);
  return std::make_shared<const Record>(*std::move(rec));
}

absl::StatusOr<std::vector<Candidate>> DiskTier::Lookup(const Namespace& ns, const Signature& sig,
                                                        int k) {
  lookups_.fetch_add(1);
  std::lock_guard<std::mutex> lock(mu_);
  return index_.Query(ns, sig, k);
}

absl::StatusOr<std::vector<PrefixCandidate>> DiskTier::ProbePrefix(const Namespace& ns,
                                                                   std::span<const int32_t> ids,
                                                                   std::span<const uint64_t> chain,
                                                                   int max) {
  (void)ids;  // the ids of stored records are on disk only: candidates are unverified
  prefix_lookups_.fetch_add(1);
  std::vector<PrefixCandidate> out;
  std::vector<uint64_t> holders;
  std::lock_guard<std::mutex> lock(mu_);
  // The deepest block's holders, then other holders of shallower blocks as fallbacks (a file
  // can vanish between this probe and the read), until `max` ids: the next block up, then
  // halving the depth, so O(log(blocks)) probes however long the shared prefix.
  const int64_t deepest = prefix_.Depth(chain);
  for (int64_t depth = deepest; depth > 0 && static_cast<int>(out.size()) < max;
       depth = depth == deepest ? depth - 1 : depth / 2) {
    holders.clear();
    prefix_.Holders(chain[depth - 1], max, &holders);
    for (uint64_t id : holders) {
      if (static_cast<int>(out.size()) >= max) break;
      auto it = entries_.find(id);
      if (it == entries_.end() || !(it->second.ns == ns)) continue;  // a 64-bit hash collision
      if (std::any_of(out.begin(), out.end(), [&](const PrefixCandidate& c) { return c.id == id; }))
        continue;
      out.push_back({id, depth, depth * kPrefixBlockTokens, false});
    }
  }
  return out;
}

absl::Status DiskTier::Delete(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  RemoveLocked(id);
  return absl::OkStatus();
}

absl::Status DiskTier::Clear() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<uint64_t> ids;
  for (const auto& [id, e] : entries_) ids.push_back(id);
  for (uint64_t id : ids) RemoveLocked(id);
  return absl::OkStatus();
}

std::vector<RecordInfo> DiskTier::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<RecordInfo> out;
  for (const auto& [id, e] : entries_) {
    out.push_back({id, e.ns, e.tokens, e.bytes, e.hits, e.last_used_ms, e.created_ms});
  }
  return out;
}

int64_t DiskTier::prefix_entries() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(prefix_.size());
}

TierStats DiskTier::Stats() const {
  TierStats st;
  {
    std::lock_guard<std::mutex> lock(mu_);
    st.entries = static_cast<int64_t>(entries_.size());
    st.bytes = bytes_;
  }
  st.hits = hits_.load();
  st.misses = misses_.load();
  st.lookups = lookups_.load();
  st.prefix_lookups = prefix_lookups_.load();
  st.puts = puts_.load();
  st.evictions = evictions_.load();
  st.errors = errors_.load();
  return st;
}

}  // namespace semshare::store
