// Request validation: every field an attacker or a buggy client controls is bounded, each bad
// value gets its canonical code and a message naming the field, and the resolved defaults are
// what the proto documents. Also run under ASan + UBSan (parses untrusted bytes).
#include "server/request_validation.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace semshare::server {
namespace {

using ::testing::HasSubstr;

v1::GenerateRequest Good() {
  v1::GenerateRequest r;
  r.set_prompt("Hello there");
  return r;
}

void ExpectRejected(const v1::GenerateRequest& r, absl::StatusCode code, const char* words) {
  RequestLimits limits;
  absl::StatusOr<ValidatedGenerate> v = ValidateGenerateRequest(r, limits);
  ASSERT_FALSE(v.ok()) << r.DebugString();
  EXPECT_EQ(v.status().code(), code) << v.status();
  EXPECT_THAT(v.status().message(), HasSubstr(words));
}

TEST(RequestValidationTest, DefaultsResolve) {
  RequestLimits limits;
  limits.default_max_tokens = 99;
  limits.default_threshold = 0.7f;
  absl::StatusOr<ValidatedGenerate> v = ValidateGenerateRequest(Good(), limits);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->options.max_tokens, 99);
  EXPECT_FLOAT_EQ(v->options.sampling.top_p, 1.0f);
  EXPECT_FLOAT_EQ(v->threshold, 0.7f);
  EXPECT_EQ(v->policy, CachePolicy::kAuto);
  EXPECT_TRUE(v->options.stop_at_eog);
  EXPECT_EQ(v->input.prompt, "Hello there");
}

TEST(RequestValidationTest, EachBadFieldGetsItsCode) {
  using C = absl::StatusCode;
  v1::GenerateRequest r = Good();
  r.set_prompt("");
  ExpectRejected(r, C::kInvalidArgument, "prompt is empty");
  ExpectRejected(v1::GenerateRequest(), C::kInvalidArgument, "either prompt or messages");
  r = Good();
  r.mutable_messages();
  ExpectRejected(r, C::kInvalidArgument, "messages is empty");
  r = Good();
  r.mutable_sampling()->set_max_tokens(1025);
  ExpectRejected(r, C::kOutOfRange, "at most 1024");
  r.mutable_sampling()->set_max_tokens(-1);
  ExpectRejected(r, C::kInvalidArgument, "max_tokens");
  r.mutable_sampling()->set_max_tokens(0);  // set, not unset: an error (unset = the default)
  ExpectRejected(r, C::kInvalidArgument, "must be >= 1");
  r = Good();
  r.mutable_sampling()->set_temperature(-0.5f);
  ExpectRejected(r, C::kInvalidArgument, "temperature");
  r.mutable_sampling()->set_temperature(std::nanf(""));
  ExpectRejected(r, C::kInvalidArgument, "temperature");
  r = Good();
  r.mutable_sampling()->set_top_p(1.5f);
  ExpectRejected(r, C::kInvalidArgument, "top_p");
  r.mutable_sampling()->set_top_p(-0.1f);
  ExpectRejected(r, C::kInvalidArgument, "top_p");
  r = Good();
  r.mutable_sampling()->set_top_k(-3);
  ExpectRejected(r, C::kInvalidArgument, "top_k");
  r = Good();
  r.set_cache_policy(static_cast<v1::CachePolicy>(7));
  ExpectRejected(r, C::kInvalidArgument, "cache_policy 7 is unknown");
  r = Good();
  r.set_similarity_threshold(1.5f);
  ExpectRejected(r, C::kInvalidArgument, "similarity_threshold");
  r = Good();
  const std::string x = "x";  // a named string: GCC 12's -Wrestrict misfires on add_stop("x")
  for (int i = 0; i < 17; ++i) r.mutable_sampling()->add_stop(x);
  ExpectRejected(r, C::kInvalidArgument, "at most 16");
  r = Good();
  r.mutable_sampling()->add_stop("");
  ExpectRejected(r, C::kInvalidArgument, "stop[0]");
  r = Good();
  r.mutable_sampling()->add_stop(std::string(257, 'x'));
  ExpectRejected(r, C::kInvalidArgument, "stop[0]");
  r = v1::GenerateRequest();
  for (int i = 0; i < 257; ++i) r.mutable_messages()->add_messages()->set_role("user");
  ExpectRejected(r, C::kInvalidArgument, "at most 256");
  r = v1::GenerateRequest();
  r.mutable_messages()->add_messages()->set_content("no role");
  ExpectRejected(r, C::kInvalidArgument, "messages[0].role");
}

TEST(RequestValidationTest, InvalidUtf8BytesAreInvalidArgument) {
  // Field 1 (prompt), wire type 2, length 2, bytes FF FE: not UTF-8.
  const std::string bytes("\x0a\x02\xff\xfe", 4);
  absl::StatusOr<ValidatedGenerate> v = ParseGenerateRequest(bytes, RequestLimits());
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(v.status().message(), HasSubstr("UTF-8"));
  // The same request with valid text parses.
  const std::string good("\x0a\x02hi", 4);
  EXPECT_TRUE(ParseGenerateRequest(good, RequestLimits()).ok());
  // Truncated encoding.
  EXPECT_FALSE(ParseGenerateRequest(std::string("\x0a\x05hi", 4), RequestLimits()).ok());
}

}  // namespace
}  // namespace semshare::server
