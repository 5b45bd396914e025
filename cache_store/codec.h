// The versioned binary format of a reference record (files of the disk tier, values of a
// future Redis tier). Little-endian throughout; every read is verified.
//
// Layout (version 1):
//   prelude   32 bytes: magic "SSKVREF\0" | u32 version | u32 header_len | u64 total_len |
//             u64 reserved (0)
//   header    header_len bytes: u64 id | u32 len + tenant | u32 len + fingerprint | u64 n_tokens |
//             u32 n_layers | u32 kv_dim | u8 dtype | u8 ecache_rope | u8 has_codes | u8 0 |
//             i32 lsh_bands | i32 lsh_bits | u64 lsh_seed | f32 rope_base | u32 chunk_rows |
//             u64 n_features | i64 created_ms | i64 last_used_ms | u64 hit_count |
//             u64 rows[n_layers]
//   u64 XXH3_64 of prelude + header
//   features  u64[n_features] | u64 XXH3_64 of them
//   ids       i32[n_tokens] | u64 XXH3_64
//   codes     u32[n_tokens * lsh_bands] | u64 XXH3_64          (only when has_codes)
//   KV        for each layer, for each chunk of chunk_rows (256) rows:
//             i32 pos[r] | dtype K[r, kv_dim] | dtype V[r, kv_dim] | u64 XXH3_64 of the three
//
// The header checksum is verified before any header field is trusted; the total size implied
// by the header must equal total_len and the bytes given, so no allocation exceeds the input.
// Features and ids sit before the KV so a directory scan can read a record's index entries (the
// prompt-level and the exact-prefix index) from a short prefix (DecodeSummary). Errors:
// InvalidArgument for a foreign or unsupported file (magic, version, dtype, limits), DataLoss for
// damage (checksum, truncation, inconsistent fields).
#ifndef SEMSHARE_CACHE_STORE_CODEC_H_
#define SEMSHARE_CACHE_STORE_CODEC_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "cache_store/record.h"

namespace semshare::store {

inline constexpr char kRecordMagic[8] = {'S', 'S', 'K', 'V', 'R', 'E', 'F', '\0'};
inline constexpr uint32_t kRecordVersion = 1;
inline constexpr int64_t kRecordPreludeBytes = 32;
inline constexpr int64_t kKvChunkRows = 256;

// Encoded bytes of a valid record (ValidateRecord's InvalidArgument otherwise).
absl::StatusOr<std::string> EncodeRecord(const Record& record);

// A record from exactly the bytes EncodeRecord produced; every checksum verified.
absl::StatusOr<Record> DecodeRecord(std::string_view bytes);

// What an index needs about a record, read without its KV.
struct RecordSummary {
  uint64_t id = 0;
  Namespace ns;
  int64_t n_tokens = 0;
  std::vector<uint64_t> features;
  std::vector<int32_t> ids;  // [n_tokens] (the exact-prefix index hashes them)
  int64_t created_ms = 0;
  int64_t last_used_ms = 0;
  uint64_t hit_count = 0;
  int64_t total_len = 0;  // bytes of the whole encoded record
};

// Bytes of the encoded record's prefix that DecodeSummary needs, from at least the prelude and
// header (pass what you have; InvalidArgument/DataLoss on a bad prelude or header). When
// `bytes` is shorter than prelude + header, returns the length still needed to know it.
absl::StatusOr<int64_t> SummaryPrefixBytes(std::string_view bytes);

// Summary from a prefix of an encoded record (at least SummaryPrefixBytes long: through the
// token ids) whose full size is `total_bytes`; verifies the header, feature and id checksums
// and that total_bytes equals
// the header's total_len (so a truncated file is caught without reading its KV).
absl::StatusOr<RecordSummary> DecodeSummary(std::string_view prefix, int64_t total_bytes);

}  // namespace semshare::store

#endif  // SEMSHARE_CACHE_STORE_CODEC_H_
