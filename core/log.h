// Logging setup. spdlog; readable lines by default, JSON lines with
// --log-format json. Setup happens once in main(); libraries log through
// spdlog's default logger (configured there), never through their own globals.
#pragma once

#include <string>

#include "core/status.h"

namespace hanse {

enum class LogFormat { kText, kJson };
Result<LogFormat> ParseLogFormat(const std::string& s);
// Installs the default logger writing to stderr. `process` names the process in each line.
void SetupLogging(const std::string& process, LogFormat format, const std::string& level = "info");

}  // namespace hanse
