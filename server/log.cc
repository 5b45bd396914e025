#include "server/log.h"

#include <atomic>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <string>

namespace semshare::server {
namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
std::mutex g_mu;
}  // namespace

void SetLogLevel(LogLevel level) { g_level = static_cast<int>(level); }

LogLevel ParseLogLevel(std::string_view name) {
  if (name == "debug") return LogLevel::kDebug;
  if (name == "warning") return LogLevel::kWarning;
  if (name == "error") return LogLevel::kError;
  return LogLevel::kInfo;
}

bool LogEnabled(LogLevel level) { return static_cast<int>(level) >= g_level.load(); }

void Log(LogLevel level, std::string_view message) {
  if (!LogEnabled(level)) return;
  static const char* kNames[] = {"DEBUG", "INFO", "WARNING", "ERROR"};
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  tm t;
  gmtime_r(&ts.tv_sec, &t);
  char when[32];
  strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &t);
  std::lock_guard<std::mutex> lock(g_mu);
  std::fprintf(stderr, "%s.%03ldZ %s %.*s\n", when, ts.tv_nsec / 1000000,
               kNames[static_cast<int>(level)], static_cast<int>(message.size()), message.data());
  std::fflush(stderr);
}

}  // namespace semshare::server
