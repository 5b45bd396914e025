#include "cache_store/prefix_index.h"

#include <xxhash.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <tuple>

namespace semshare::store {
namespace {

static_assert(std::endian::native == std::endian::little,
              "prefix chain hashes hash host-order integers: add byte swaps first");

// Names the scheme and the block size: a change to either makes disjoint keys.
constexpr char kDomain[] = "semshare prefix chain v1, 16-token blocks";
static_assert(kPrefixBlockTokens == 16, "update kDomain with the block size");

}  // namespace

std::vector<uint64_t> PrefixChain(const Namespace& ns, std::span<const int32_t> ids) {
  const size_t blocks = ids.size() / kPrefixBlockTokens;
  std::vector<uint64_t> chain(blocks);
  uint64_t h = XXH3_64bits_withSeed(kDomain, sizeof(kDomain) - 1, ns.Hash());
  unsigned char buf[8 + 4 * kPrefixBlockTokens];
  for (size_t b = 0; b < blocks; ++b) {
    std::memcpy(buf, &h, 8);
    std::memcpy(buf + 8, ids.data() + b * kPrefixBlockTokens, 4 * kPrefixBlockTokens);
    h = XXH3_64bits(buf, sizeof(buf));
    chain[b] = h;
  }
  return chain;
}

int64_t CommonPrefix(std::span<const int32_t> a, std::span<const int32_t> b) {
  const size_t n = std::min(a.size(), b.size());
  return std::mismatch(a.begin(), a.begin() + n, b.begin()).first - a.begin();
}

bool PrefixCandidateBetter(const PrefixCandidate& a, const PrefixCandidate& b) {
  return std::make_tuple(-a.blocks, -a.tokens, a.id) < std::make_tuple(-b.blocks, -b.tokens, b.id);
}

void PrefixIndex::Insert(uint64_t id, std::span<const uint64_t> chain) {
  for (uint64_t key : chain) pairs_.insert({key, id});
}

void PrefixIndex::Erase(uint64_t id, std::span<const uint64_t> chain) {
  for (uint64_t key : chain) pairs_.erase({key, id});
}

bool PrefixIndex::Contains(uint64_t key) const {
  auto it = pairs_.lower_bound({key, 0});
  return it != pairs_.end() && it->first == key;
}

int64_t PrefixIndex::Depth(std::span<const uint64_t> chain, int64_t lo) const {
  // Invariant: chain[lo - 1] held (or lo == 0); chain[hi] not held (or hi == size).
  int64_t hi = static_cast<int64_t>(chain.size());
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (Contains(chain[mid])) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

void PrefixIndex::Holders(uint64_t key, int max, std::vector<uint64_t>* out) const {
  for (auto it = pairs_.lower_bound({key, 0}); it != pairs_.end() && it->first == key && max > 0;
       ++it, --max) {
    out->push_back(it->second);
  }
}

}  // namespace semshare::store
