// Exit codes of the `hanse` CLI and the value every command returns.
//
// The codes are part of the CLI's interface (scripts test them); they are listed
// in `hanse --help` and docs/CLI.md. Keep the numbers stable.
#pragma once

#include <string>
#include <utility>

#include "core/status.h"

namespace hanse::cli {

enum class Exit : int {
  kOk = 0,
  kUsage = 1,        // wrong arguments or options
  kRefused = 2,      // the coordinator answered with a refusal (reason printed)
  kUnreachable = 3,  // no connection, handshake refused (wrong keys) or no reply in time
  kLocal = 4,        // a local file or config is missing, unreadable or invalid
  kJobFailed = 5,    // `watch`: the job ended failed or cancelled
};

// What a command ends with: an exit code and, when not ok, a message in plain words.
struct Outcome {
  Exit exit = Exit::kOk;
  std::string message;

  bool ok() const { return exit == Exit::kOk; }
  int code() const { return static_cast<int>(exit); }

  static Outcome Ok() { return {}; }
  static Outcome Usage(std::string m) { return {Exit::kUsage, std::move(m)}; }
  static Outcome Refused(std::string m) { return {Exit::kRefused, std::move(m)}; }
  static Outcome Unreachable(std::string m) { return {Exit::kUnreachable, std::move(m)}; }
  static Outcome Local(std::string m) { return {Exit::kLocal, std::move(m)}; }
  static Outcome Local(const Status& s) { return {Exit::kLocal, s.ToString()}; }
  static Outcome JobFailed(std::string m) { return {Exit::kJobFailed, std::move(m)}; }
};

// The text `hanse --help` ends with.
inline constexpr const char* kExitCodeHelp =
    "Exit codes:\n"
    "  0  ok\n"
    "  1  wrong arguments or options\n"
    "  2  the coordinator refused the request (its reason is printed)\n"
    "  3  the coordinator cannot be reached, refused our key, or did not answer in time\n"
    "  4  a local file or config is missing, unreadable or invalid\n"
    "  5  watch: the job ended failed or cancelled";

}  // namespace hanse::cli
