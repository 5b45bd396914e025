// API keys: file parsing with line-numbered errors, Bearer authentication, roles, and no key
// material in any error message.
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/auth.h"

namespace semshare::server {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr const char* kKeys =
    "# tenants\n"
    "key-aaaaaaaaaaaaaaaa tenant-a user\n"
    "  key-bbbbbbbbbbbbbbbb   tenant-b user  # trailing comment\n"
    "\n"
    "key-admin-cccccccccccc ops admin\n";

TEST(ApiKeysTest, AuthenticatesEachKeyToItsTenantAndRole) {
  absl::StatusOr<ApiKeys> keys = ApiKeys::Parse(kKeys);
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_EQ(keys->size(), 3u);
  absl::StatusOr<Principal> a = keys->Authenticate("Bearer key-aaaaaaaaaaaaaaaa");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->tenant, "tenant-a");
  EXPECT_EQ(a->role, Role::kUser);
  absl::StatusOr<Principal> b = keys->Authenticate("bearer key-bbbbbbbbbbbbbbbb");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->tenant, "tenant-b");
  absl::StatusOr<Principal> ops = keys->Authenticate("Bearer key-admin-cccccccccccc");
  ASSERT_TRUE(ops.ok());
  EXPECT_EQ(ops->role, Role::kAdmin);
}

TEST(ApiKeysTest, RejectsMissingMalformedAndUnknownCredentials) {
  absl::StatusOr<ApiKeys> keys = ApiKeys::Parse(kKeys);
  ASSERT_TRUE(keys.ok());
  for (const char* bad : {"", "key-aaaaaaaaaaaaaaaa", "Basic key-aaaaaaaaaaaaaaaa", "Bearer ",
                          "Bearer key-aaaaaaaaaaaaaaab", "Bearer key-aaaaaaaaaaaaaaa"}) {
    absl::StatusOr<Principal> p = keys->Authenticate(bad);
    EXPECT_TRUE(absl::IsUnauthenticated(p.status())) << bad;
    EXPECT_THAT(p.status().message(), Not(HasSubstr("key-a"))) << "key material in the error";
  }
}

TEST(ApiKeysTest, FileErrorsNameTheLine) {
  EXPECT_THAT(ApiKeys::Parse("k tenant user\n").status().message(), HasSubstr("line 1"));
  EXPECT_THAT(ApiKeys::Parse("\nkey-aaaaaaaaaaaaaaaa tenant root\n").status().message(),
              HasSubstr("line 2: role must be user or admin"));
  EXPECT_THAT(ApiKeys::Parse("key-aaaaaaaaaaaaaaaa ten/ant user\n").status().message(),
              HasSubstr("tenant"));
  EXPECT_THAT(ApiKeys::Parse("key-aaaaaaaaaaaaaaaa a user\nkey-aaaaaaaaaaaaaaaa b user\n")
                  .status()
                  .message(),
              HasSubstr("twice"));
  EXPECT_THAT(ApiKeys::Parse("key-aaaaaaaaaaaaaaaa a\n").status().message(),
              HasSubstr("<key> <tenant> <role>"));
  EXPECT_THAT(ApiKeys::Parse("# nothing\n").status().message(), HasSubstr("no keys"));
  EXPECT_TRUE(absl::IsNotFound(ApiKeys::Load("/nonexistent/keys").status()));
}

}  // namespace
}  // namespace semshare::server
