// The site's audit log: append-only JSON lines, hash-chained, so a site admin
// can verify what was done on the site's data.
//
// One entry per line, keys in this order:
//   {"seq":N,"time":"2026-11-25T12:00:00Z","prev":"<hex>","event":"task",...,"hash":"<hex>"}
// `prev` is the SHA-256 of the previous line's bytes (without its newline); 64
// zeros for the first entry. `hash` is the SHA-256 of the line with its `hash`
// member removed (the bytes up to `,"hash":` followed by `}`), so that the last
// entry is protected too. `seq` counts from 1 without gaps.
//
// Appends open the file with O_APPEND, write one whole line and fsync before
// returning. Thread-safe: appends are serialized by an internal mutex.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <iosfwd>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "protocol/messages.h"

namespace hanse::site {

// What an entry records. Empty strings / unset optionals are left out of the line.
struct AuditRecord {
  // "start" | "task" | "refusal" | "update_sent" | "evaluation" | "result_acked"
  // | "result_rejected" | "cancelled" | "failed" | "stop"
  std::string event;
  std::string job_id;
  std::string task_id;
  std::optional<uint32_t> round;
  std::string task_kind;      // "train" | "evaluate"
  std::string lead;
  std::string model_hash;
  std::string module_hash;
  std::string architecture;
  std::string decision;       // "accepted" | "refused"
  std::string reason;         // proto reason name, e.g. "policy_lead"
  std::string detail;         // human text
  std::string dataset;        // the dataset touched (logical name)
  std::string update_hash;
  std::optional<uint64_t> examples;
  std::vector<proto::Metric> metrics;   // train loss/accuracy, eval loss/accuracy
  std::optional<proto::Usage> usage;
};

struct AuditEntry {
  uint64_t seq = 0;
  std::string time;           // ISO 8601 UTC
  std::string event;
  std::string line;           // the raw line, for `show --raw` and debugging
};

using Clock = std::function<std::chrono::system_clock::time_point()>;

class AuditLog {
 public:
  // Opens `path` for appending, creating it (and its folder) when missing. An
  // existing file is verified first: a broken chain is kCorruption naming the
  // first broken line, unless `start_new_if_broken`, in which case the broken
  // file is moved aside to "<path>.broken-<UTC time>" and a new chain starts with
  // a "start" entry that names the moved file. `clock` stamps entries.
  static Result<std::unique_ptr<AuditLog>> Open(const std::filesystem::path& path, bool start_new_if_broken,
                                                Clock clock);
  ~AuditLog();

  // Appends one entry (fsynced before returning). Returns the entry's seq.
  Result<uint64_t> Append(const AuditRecord& record);

  const std::filesystem::path& path() const { return path_; }
  uint64_t entries() const;   // entries in the file, including those appended here

 private:
  AuditLog() = default;
  std::filesystem::path path_;
  Clock clock_;
  int fd_ = -1;
  mutable std::mutex mu_;
  uint64_t last_seq_ = 0;     // guarded by mu_
  std::string last_line_hash_;// SHA-256 of the last line; guarded by mu_
};

// Checks the whole chain. Returns the number of entries, or kCorruption
// "<path>:<line>: <why>" naming the first broken entry (bad JSON, missing
// member, seq gap, prev mismatch, hash mismatch, incomplete last line).
// kNotFound when the file does not exist.
Result<uint64_t> VerifyAuditLog(const std::filesystem::path& path);

// Parses the entries without checking the chain (reading what can be read).
Result<std::vector<AuditEntry>> ReadAuditLog(const std::filesystem::path& path);

// Prints the history readably, one line per entry, e.g.
//   #3  2026-11-25T12:00:01Z  task         job=j1 round=2 lead=alice dataset=fmnist accepted
// followed by the chain verdict ("chain ok: 12 entries" or the first broken line).
// Returns the verification status (the history is printed either way).
Status ShowAuditLog(const std::filesystem::path& path, std::ostream& out);

}  // namespace hanse::site
