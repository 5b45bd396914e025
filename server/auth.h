// API keys -> (tenant, role) (DESIGN.md section 8). The keys file has one key per line:
//   <key> <tenant> <role>      role is `user` or `admin`; '#' starts a comment
// Keys are 16..256 printable ASCII characters without spaces; tenants 1..128 of [A-Za-z0-9_.-].
// Lookup compares the presented key with every stored key in constant time (no early exit; SHA-256
// digests compared with OpenSSL's CRYPTO_memcmp), so response timing does not reveal how much of a
// key matched or which entry did. Immutable after Load: thread-safe.
#ifndef SEMSHARE_SERVER_AUTH_H_
#define SEMSHARE_SERVER_AUTH_H_

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace semshare::server {

enum class Role { kUser, kAdmin };

struct Principal {
  std::string tenant;
  Role role = Role::kUser;
};

class ApiKeys {
 public:
  // InvalidArgument naming the line for malformed entries, duplicate keys, unknown roles.
  static absl::StatusOr<ApiKeys> Parse(std::string_view text);
  static absl::StatusOr<ApiKeys> Load(const std::string& path);

  // Principal of an `authorization` metadata value "Bearer <key>". UNAUTHENTICATED with a
  // message saying what is wrong (missing, not Bearer, unknown key); never echoes the key.
  absl::StatusOr<Principal> Authenticate(std::string_view authorization) const;
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    std::array<uint8_t, 32> digest;  // SHA-256 of the key
    Principal principal;
  };
  std::vector<Entry> entries_;
};

}  // namespace semshare::server

#endif  // SEMSHARE_SERVER_AUTH_H_
