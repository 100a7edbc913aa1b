// The site's local usage ledger: device-seconds per lead per month, for the
// policy's monthly quota. Persisted as JSON lines under the site's data folder
// (one line per finished task, fsynced), summed in memory when opened.
//
// Thread-safe (internal mutex).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "core/status.h"

namespace hanse::site {

struct LedgerRecord {
  std::string month;          // "YYYY-MM" (policy time zone)
  std::string lead;
  std::string job_id;
  std::string task_id;
  std::string time;           // ISO 8601 UTC, informative
  double device_seconds = 0;  // what the quota counts
  double cpu_seconds = 0;
  double gpu_seconds = 0;
  std::string device_kind;    // "cpu" | "cuda"
};

class SiteLedger {
 public:
  // Opens (creating when missing) and sums the file. A malformed line is
  // kCorruption "<path>:<line>: <why>"; an incomplete last line (a write torn by
  // a crash) is dropped from the sum and truncated away.
  static Result<std::unique_ptr<SiteLedger>> Open(const std::filesystem::path& file);
  ~SiteLedger();

  // Appends and fsyncs, then counts it.
  Status Record(const LedgerRecord& record);
  double DeviceSeconds(const std::string& lead, const std::string& month) const;
  double DeviceHours(const std::string& lead, const std::string& month) const {
    return DeviceSeconds(lead, month) / 3600.0;
  }

 private:
  SiteLedger() = default;
  std::filesystem::path path_;
  int fd_ = -1;
  mutable std::mutex mu_;
  std::map<std::pair<std::string, std::string>, double> seconds_;  // (lead, month); guarded by mu_
};

}  // namespace hanse::site
