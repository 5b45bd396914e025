// Records and token sequences shared by the exact-prefix store tests (store_prefix_test,
// store_prefix_redis_test).
#ifndef SEMSHARE_TESTS_STORE_PREFIX_UTIL_H_
#define SEMSHARE_TESTS_STORE_PREFIX_UTIL_H_

#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "cache_store/prompt_features.h"
#include "cache_store/record.h"

namespace semshare::store::testing {

// A record of these ids with a small KV whose values are a function of (token position, id):
// rows [0, t) of two records that share t tokens are equal, as a model's would be.
inline RecordHandle MakeRecord(std::vector<int32_t> ids, const Namespace& ns) {
  Record r;
  r.ns = ns;
  r.features = PromptFeatures(ids);
  r.ids = std::move(ids);
  r.id = RecordId(r.ns, r.ids);
  r.kv = engine::KvCache(2, 4);
  for (int64_t l = 0; l < 2; ++l) {
    for (size_t p = 0; p < r.ids.size(); ++p) {
      r.kv.layer(l).pos.push_back(static_cast<int32_t>(p));
      for (int d = 0; d < 4; ++d) {
        r.kv.layer(l).k.push_back(static_cast<float>(r.ids[p] * 8 + l * 4 + d));
        r.kv.layer(l).v.push_back(-static_cast<float>(r.ids[p] * 8 + l * 4 + d));
      }
    }
  }
  r.created_ms = r.last_used_ms = NowUnixMs();
  return std::make_shared<const Record>(std::move(r));
}

inline std::vector<int32_t> Random(std::mt19937& rng, int64_t n) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int32_t& x : v) x = static_cast<int32_t>(rng() % 49152);
  return v;
}

inline std::vector<int32_t> Cat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

inline std::vector<int32_t> Head(const std::vector<int32_t>& a, int64_t n) {
  return {a.begin(), a.begin() + n};
}

}  // namespace semshare::store::testing

#endif  // SEMSHARE_TESTS_STORE_PREFIX_UTIL_H_
