// Plain-text rendering for the CLI: tables, durations, progress bars, times,
// and the CSV form of tables. Pure functions, no I/O, so they are unit-tested.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "protocol/messages.h"

namespace hanse::cli {

// Column-aligned table: header, a rule of dashes, rows. Columns whose flag in
// `right_align` is true are right-aligned (numbers). Missing flags mean left.
std::string FormatTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows,
                        const std::vector<bool>& right_align = {});

// RFC 4180 CSV: fields with a comma, quote or newline are quoted, quotes doubled.
std::string CsvRow(const std::vector<std::string>& fields);

// "0.8s", "12s", "3m 05s", "2h 01m".
std::string FormatDuration(double seconds);
// "[########------------]" with `width` cells filled by done/total (total 0: empty).
std::string ProgressBar(uint64_t done, uint64_t total, int width = 20);
// "%.<digits>f" of a double.
std::string Fixed(double v, int digits);
// "85.31%" of a fraction in [0, 1].
std::string Percent(double fraction, int digits = 2);
// "2026-11-25 12:00:05 UTC"; "-" for 0.
std::string FormatUnixTime(int64_t unix_seconds);
// Accepts "2026-11-25", "2026-11-25T13:05", "2026-11-25 13:05:00" (UTC) or plain
// unix seconds. kInvalidArgument naming the text otherwise.
Result<int64_t> ParseTime(const std::string& text);

// The tables behind `hanse jobs`, `hanse sites`, `hanse usage`, `hanse status`.
std::string FormatJobList(const proto::JobList& list);
std::string FormatSiteList(const proto::SiteList& list);
std::string FormatUsage(const proto::UsageReport& report, proto::UsageGroup by);
std::string UsageCsv(const proto::UsageReport& report, proto::UsageGroup by);
std::string FormatJobStatus(const proto::JobStatus& status);

// One line of `hanse watch` for an in-progress round:
// "round 3/10 [#######-----] 2/3 sites  0m 41s".
std::string FormatRoundProgress(uint32_t round, uint32_t rounds_total, uint32_t answered, uint32_t expected,
                                double elapsed_seconds);
// "round 3/10 committed: loss 0.4213  accuracy 84.12%  (0m 45s)".
std::string FormatRoundCommitted(uint32_t round, uint32_t rounds_total, double loss, double accuracy,
                                 double elapsed_seconds);

const char* UsageGroupName(proto::UsageGroup by);

}  // namespace hanse::cli
