// Logging setup. spdlog; readable lines by default, JSON lines with
// --log-format json. Setup happens once in main(); libraries log through
// spdlog's default logger (configured there), never through their own globals.
#pragma once

#include <string>

#include "core/status.h"

namespace hanse {

enum class LogFormat { kText, kJson };
Result<LogFormat> ParseLogFormat(const std::string& s);
// "trace", "debug", "info", "warn" (or "warning"), "error", "critical", "off".
bool IsValidLogLevel(const std::string& level);
// Installs the default logger writing to stderr. `process` names the process in each line.
// Text:  2026-11-25 12:00:00.123 [coordinator] info: message   (local time)
// JSON:  {"ts":"2026-11-25T11:00:00.123Z","level":"info","process":"coordinator","msg":"message"}
//        one object per line, UTC timestamps.
// An invalid `level` falls back to "info" with a warning (check IsValidLogLevel first).
// Call once from main() before starting threads.
void SetupLogging(const std::string& process, LogFormat format, const std::string& level = "info");

}  // namespace hanse
