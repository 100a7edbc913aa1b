// `hanse report`: a job's results as CSV files, SVG plots drawn by gnuplot and
// one self-contained HTML page (plots inlined as data: URIs, no external links
// except to the CSV files next to it).
//
// Everything comes from one proto::JobStatus, so a report can be rebuilt from a
// saved status and is unit-tested with a synthetic one.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "core/status.h"
#include "protocol/messages.h"

namespace hanse::cli {

struct ReportOptions {
  std::string gnuplot = "gnuplot";  // program name (searched in PATH) or path
  int gnuplot_timeout_s = 60;       // gnuplot is killed after this
};

struct ReportFiles {
  std::filesystem::path html;                 // DIR/report.html
  std::vector<std::filesystem::path> csv;     // rounds.csv, sites.csv, usage.csv
  std::vector<std::filesystem::path> svg;     // the plots gnuplot drew (empty when it could not)
  std::string warning;                        // why plots are missing, if they are
};

// Per-site totals over a job: the usage table of the report.
struct SiteTotals {
  std::string site;
  uint32_t rounds = 0;        // rounds in which the site sent an update
  uint64_t examples = 0;      // summed over rounds
  double device_seconds = 0;  // as reported by the site
};
std::vector<SiteTotals> SumBySite(const proto::JobStatus& status);

// The CSV files' contents (header row first, one row per round / per round x site / per site).
std::string RoundsCsv(const proto::JobStatus& status);
std::string SitesCsv(const proto::JobStatus& status);
std::string SiteUsageCsv(const proto::JobStatus& status);

// Writes DIR/{report.html, rounds.csv, sites.csv, usage.csv, *.svg} (creating
// DIR). A missing or failing gnuplot is not an error: the page is written
// without plots and `warning` says why. Errors: kIo naming the file.
Result<ReportFiles> WriteReport(const proto::JobStatus& status, const std::filesystem::path& dir,
                                const ReportOptions& options = {});

}  // namespace hanse::cli
