#include "core/log.h"

#include <fcntl.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <gtest/gtest.h>

#include "test_util.h"

namespace hanse {
namespace {

// Captures what the process writes to fd 2 while `fn` runs.
template <class Fn>
std::string CaptureStderr(const std::filesystem::path& file, Fn fn) {
  fflush(stderr);
  const int saved = dup(2);
  const int fd = open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  dup2(fd, 2);
  close(fd);
  fn();
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  return testing::ReadFile(file);
}

std::vector<std::string> Lines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

TEST(Log, ParsesFormats) {
  EXPECT_EQ(*ParseLogFormat("text"), LogFormat::kText);
  EXPECT_EQ(*ParseLogFormat("json"), LogFormat::kJson);
  auto bad = ParseLogFormat("xml");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("xml"), std::string::npos);
  EXPECT_TRUE(IsValidLogLevel("debug"));
  EXPECT_TRUE(IsValidLogLevel("warning"));
  EXPECT_FALSE(IsValidLogLevel("loud"));
}

TEST(Log, JsonLinesAreParseableAndEscaped) {
  testing::TempDir dir;
  const std::string tricky = "quote \" backslash \\ newline \n tab \t ctrl \x01 done";
  const std::string out = CaptureStderr(dir / "err.txt", [&] {
    SetupLogging("site-paris", LogFormat::kJson, "debug");
    spdlog::info("round {} finished", 3);
    spdlog::warn("{}", tricky);
    spdlog::debug("details");
    spdlog::trace("hidden at debug level");
  });
  const auto lines = Lines(out);
  ASSERT_EQ(lines.size(), 3u) << out;
  std::vector<nlohmann::json> objs;
  for (const auto& l : lines) {
    objs.push_back(nlohmann::json::parse(l));  // throws (fails the test) if not JSON
    EXPECT_EQ(objs.back().size(), 4u) << l;
    EXPECT_EQ(objs.back()["process"], "site-paris");
    const std::string ts = objs.back()["ts"];
    EXPECT_EQ(ts.size(), 24u) << ts;  // 2026-11-25T12:00:00.123Z
    EXPECT_EQ(ts.back(), 'Z');
  }
  EXPECT_EQ(objs[0]["level"], "info");
  EXPECT_EQ(objs[0]["msg"], "round 3 finished");
  EXPECT_EQ(objs[1]["level"], "warn");
  EXPECT_EQ(objs[1]["msg"], tricky);
  EXPECT_EQ(objs[2]["level"], "debug");
}

TEST(Log, TextLinesNameTheProcess) {
  testing::TempDir dir;
  const std::string out = CaptureStderr(dir / "err.txt", [&] {
    SetupLogging("coordinator", LogFormat::kText);
    spdlog::info("listening on {}", "tcp://127.0.0.1:7700");
    spdlog::debug("not shown at info");
  });
  const auto lines = Lines(out);
  ASSERT_EQ(lines.size(), 1u) << out;
  // "2026-11-25 12:00:00.123 [coordinator] info: listening on tcp://127.0.0.1:7700"
  const std::string& l = lines[0];
  ASSERT_GT(l.size(), 24u);
  EXPECT_EQ(l[4], '-');
  EXPECT_EQ(l[10], ' ');
  EXPECT_EQ(l[19], '.');
  EXPECT_EQ(l.substr(23), " [coordinator] info: listening on tcp://127.0.0.1:7700");
}

}  // namespace
}  // namespace hanse
