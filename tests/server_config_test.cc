// semshare-server configuration: defaults, precedence flag > environment > file, every bad
// value rejected naming the knob, and the help text listing every flag the manifests use.
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/config.h"

namespace semshare::server {
namespace {

using ::testing::HasSubstr;

absl::StatusOr<ServerConfig> Parse(std::vector<std::string> args,
                                   const std::map<std::string, std::string>& env = {}) {
  args.insert(args.begin(), "semshare-server");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  bool help = false;
  return ParseServerConfig(static_cast<int>(argv.size()), argv.data(), env, &help);
}

TEST(ServerConfigTest, DefaultsAreLoopbackAndValid) {
  absl::StatusOr<ServerConfig> c = Parse({});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->listen, "127.0.0.1:50051");
  EXPECT_EQ(c->metrics_listen, "127.0.0.1:9464");
  EXPECT_EQ(c->workers, 1);
  EXPECT_TRUE(IsLoopbackAddress(c->listen));
  EXPECT_FALSE(IsLoopbackAddress("0.0.0.0:50051"));
}

TEST(ServerConfigTest, FlagBeatsEnvironmentBeatsFile) {
  const std::string path = ::testing::TempDir() + "/semshare_config.json";
  std::ofstream(path) << R"({"max-queue": 7, "workers": 3, "redis": "redis://10.0.0.1:6379",
                           "similarity-threshold": 0.5})";
  absl::StatusOr<ServerConfig> c = Parse({"--config", path, "--max-queue=9"},
                                         {{"SEMSHARE_MAX_QUEUE", "8"}, {"SEMSHARE_WORKERS", "2"}});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->max_queue, 9);  // flag
  EXPECT_EQ(c->workers, 2);    // environment over file
  EXPECT_EQ(c->redis, "redis://10.0.0.1:6379");
  EXPECT_FLOAT_EQ(c->similarity_threshold, 0.5f);
  // The config file can also come from the environment.
  c = Parse({}, {{"SEMSHARE_CONFIG", path}});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->max_queue, 7);
}

TEST(ServerConfigTest, BadValuesNameTheKnob) {
  EXPECT_THAT(Parse({"--workers", "0"}).status().message(), HasSubstr("workers"));
  EXPECT_THAT(Parse({"--workers", "two"}).status().message(), HasSubstr("workers"));
  EXPECT_THAT(Parse({"--similarity-threshold", "1.5"}).status().message(),
              HasSubstr("similarity-threshold"));
  EXPECT_THAT(Parse({"--nope", "1"}).status().message(), HasSubstr("unknown flag --nope"));
  EXPECT_THAT(Parse({"--listen"}).status().message(), HasSubstr("needs a value"));
  EXPECT_THAT(Parse({"--listen", "nowhere"}).status().message(), HasSubstr("HOST:PORT"));
  EXPECT_THAT(Parse({"--backend", "tpu"}).status().message(), HasSubstr("cpu or cuda"));
  EXPECT_THAT(Parse({"--tls-cert", "a.pem"}).status().message(), HasSubstr("together"));
  EXPECT_THAT(Parse({"--tls-client-ca", "ca.pem"}).status().message(), HasSubstr("mutual"));
  EXPECT_THAT(Parse({}, {{"SEMSHARE_MAX_QUEUE", "-1"}}).status().message(),
              HasSubstr("SEMSHARE_MAX_QUEUE"));
  const std::string path = ::testing::TempDir() + "/semshare_bad.json";
  std::ofstream(path) << R"({"max_queue": 3})";
  EXPECT_THAT(Parse({"--config", path}).status().message(), HasSubstr("unknown key 'max_queue'"));
  std::ofstream(path) << "not json";
  EXPECT_THAT(Parse({"--config", path}).status().message(), HasSubstr("JSON object"));
}

TEST(ServerConfigTest, HelpListsEveryFlagWithItsDefault) {
  const std::string help = ServerHelp();
  for (const char* flag : {"--listen HOST:PORT", "--metrics-listen", "--api-keys", "--redis",
                           "--cache-dir", "--drain-seconds", "--tls-client-ca", "--max-queue"}) {
    EXPECT_THAT(help, HasSubstr(flag));
  }
  EXPECT_THAT(help, HasSubstr("(default: 25)"));  // drain-seconds
}

}  // namespace
}  // namespace semshare::server
