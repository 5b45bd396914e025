#include "server/auth.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace semshare::server {
namespace {

std::array<uint8_t, 32> Digest(std::string_view data) {
  std::array<uint8_t, 32> d;
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), d.data());
  return d;
}

bool ValidKey(std::string_view k) {
  if (k.size() < 16 || k.size() > 256) return false;
  for (char c : k) {
    if (c <= ' ' || c > '~') return false;
  }
  return true;
}

bool ValidTenant(std::string_view t) {
  if (t.empty() || t.size() > 128) return false;
  for (char c : t) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '.' && c != '-') {
      return false;
    }
  }
  return true;
}

}  // namespace

absl::StatusOr<ApiKeys> ApiKeys::Parse(std::string_view text) {
  ApiKeys keys;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(absl::string_view(text.data(), text.size()), '\n')) {
    ++line_no;
    if (const size_t hash = line.find('#'); hash != absl::string_view::npos) {
      line = line.substr(0, hash);
    }
    std::vector<absl::string_view> f =
        absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (f.empty()) continue;
    if (f.size() != 3) {
      return absl::InvalidArgumentError(absl::StrCat("api keys line ", line_no,
                                                     ": expected '<key> <tenant> <role>', got ",
                                                     f.size(), " fields"));
    }
    if (!ValidKey(std::string_view(f[0].data(), f[0].size()))) {
      return absl::InvalidArgumentError(
          absl::StrCat("api keys line ", line_no, ": a key must be 16..256 printable characters"));
    }
    if (!ValidTenant(std::string_view(f[1].data(), f[1].size()))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "api keys line ", line_no, ": tenant must be 1..128 characters of [A-Za-z0-9_.-]"));
    }
    Entry e;
    e.digest = Digest(std::string_view(f[0].data(), f[0].size()));
    e.principal.tenant = std::string(f[1]);
    if (f[2] == "admin") {
      e.principal.role = Role::kAdmin;
    } else if (f[2] == "user") {
      e.principal.role = Role::kUser;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "api keys line ", line_no, ": role must be user or admin, got '", f[2], "'"));
    }
    for (const Entry& other : keys.entries_) {
      if (other.digest == e.digest) {
        return absl::InvalidArgumentError(
            absl::StrCat("api keys line ", line_no, ": the same key appears twice"));
      }
    }
    keys.entries_.push_back(std::move(e));
  }
  if (keys.entries_.empty()) return absl::InvalidArgumentError("the api keys file has no keys");
  return keys;
}

absl::StatusOr<ApiKeys> ApiKeys::Load(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read api keys file ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  absl::StatusOr<ApiKeys> keys = Parse(ss.str());
  if (!keys.ok()) {
    return absl::Status(keys.status().code(), absl::StrCat(path, ": ", keys.status().message()));
  }
  return keys;
}

absl::StatusOr<Principal> ApiKeys::Authenticate(std::string_view authorization) const {
  if (authorization.empty()) {
    return absl::UnauthenticatedError(
        "missing credentials: send metadata 'authorization: Bearer <api key>'");
  }
  constexpr std::string_view kBearer = "Bearer ";
  if (authorization.size() <= kBearer.size() ||
      !absl::EqualsIgnoreCase(absl::string_view(authorization.data(), kBearer.size()),
                              absl::string_view(kBearer.data(), kBearer.size()))) {
    return absl::UnauthenticatedError(
        "malformed credentials: the authorization metadata must be 'Bearer <api key>'");
  }
  const std::array<uint8_t, 32> d = Digest(authorization.substr(kBearer.size()));
  // Every entry is compared, whatever matches, so timing is independent of the key.
  const Entry* found = nullptr;
  for (const Entry& e : entries_) {
    const bool eq = CRYPTO_memcmp(e.digest.data(), d.data(), d.size()) == 0;
    if (eq) found = &e;
  }
  if (found == nullptr) return absl::UnauthenticatedError("unknown api key");
  return found->principal;
}

}  // namespace semshare::server
