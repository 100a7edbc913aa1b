#include "core/log.h"

#include <chrono>
#include <ctime>
#include <memory>

#include <nlohmann/json.hpp>
#include <spdlog/formatter.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

namespace hanse {

namespace {

std::string_view LevelName(spdlog::level::level_enum l) {
  switch (l) {
    case spdlog::level::trace: return "trace";
    case spdlog::level::debug: return "debug";
    case spdlog::level::info: return "info";
    case spdlog::level::warn: return "warn";
    case spdlog::level::err: return "error";
    case spdlog::level::critical: return "critical";
    default: return "off";
  }
}

std::optional<spdlog::level::level_enum> ParseLevel(const std::string& s) {
  if (s == "warning") return spdlog::level::warn;
  if (s == "err") return spdlog::level::err;
  for (auto l : {spdlog::level::trace, spdlog::level::debug, spdlog::level::info, spdlog::level::warn,
                 spdlog::level::err, spdlog::level::critical, spdlog::level::off}) {
    if (s == LevelName(l)) return l;
  }
  return std::nullopt;
}

// One JSON object per line; nlohmann::json escapes the message (quotes,
// control characters, invalid UTF-8 replaced rather than thrown on).
class JsonFormatter final : public spdlog::formatter {
 public:
  explicit JsonFormatter(std::string process) : process_(std::move(process)) {}

  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    using namespace std::chrono;
    const auto since_epoch = msg.time.time_since_epoch();
    const auto secs = duration_cast<seconds>(since_epoch);
    const auto millis = duration_cast<milliseconds>(since_epoch - secs).count();
    const std::time_t t = secs.count();
    std::tm tm{};
    gmtime_r(&t, &tm);
    char ts[96];
    std::snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                  tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(millis));
    nlohmann::json j;
    j["ts"] = ts;
    j["level"] = LevelName(msg.level);
    j["process"] = process_;
    j["msg"] = std::string(msg.payload.data(), msg.payload.size());
    const std::string line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    dest.append(line.data(), line.data() + line.size());
    dest.push_back('\n');
  }

  std::unique_ptr<spdlog::formatter> clone() const override { return std::make_unique<JsonFormatter>(process_); }

 private:
  std::string process_;
};

}  // namespace

Result<LogFormat> ParseLogFormat(const std::string& s) {
  if (s == "text") return LogFormat::kText;
  if (s == "json") return LogFormat::kJson;
  return Status::InvalidArgument("log format '" + s + "': expected \"text\" or \"json\"");
}

bool IsValidLogLevel(const std::string& level) { return ParseLevel(level).has_value(); }

void SetupLogging(const std::string& process, LogFormat format, const std::string& level) {
  auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  if (format == LogFormat::kJson) {
    sink->set_formatter(std::make_unique<JsonFormatter>(process));
  } else {
    // The process name is part of the pattern, so escape '%' in it.
    std::string escaped;
    for (char c : process) {
      escaped += c;
      if (c == '%') escaped += '%';
    }
    sink->set_formatter(std::make_unique<spdlog::pattern_formatter>("%Y-%m-%d %H:%M:%S.%e [" + escaped + "] %l: %v"));
  }
  auto logger = std::make_shared<spdlog::logger>(process, std::move(sink));
  const auto parsed = ParseLevel(level);
  logger->set_level(parsed.value_or(spdlog::level::info));
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(logger);
  if (!parsed) spdlog::warn("unknown log level '{}'; using info", level);
}

}  // namespace hanse
