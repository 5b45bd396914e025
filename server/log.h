// Minimal leveled logging to stderr for the server (abseil's logging is not in Debian 12's
// abseil). Lines are "<UTC time> <LEVEL> <message>". Never log prompt or generated text at
// info level or above: prompts are other people's data (DESIGN.md section 8).
#ifndef SEMSHARE_SERVER_LOG_H_
#define SEMSHARE_SERVER_LOG_H_

#include <string_view>

namespace semshare::server {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// Lines below `level` are dropped. Thread-safe; set once at start-up.
void SetLogLevel(LogLevel level);
LogLevel ParseLogLevel(std::string_view name);  // unknown names give kInfo
bool LogEnabled(LogLevel level);
void Log(LogLevel level, std::string_view message);

}  // namespace semshare::server

#endif  // SEMSHARE_SERVER_LOG_H_
