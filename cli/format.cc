#include "cli/format.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <ctime>

namespace hanse::cli {

namespace {

// Display width of UTF-8 text: counts code points, not bytes ("Düsseldorf").
size_t Width(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) {
    if ((c & 0xC0) != 0x80) ++n;
  }
  return n;
}

std::string Pad(const std::string& s, size_t width, bool right) {
  size_t w = Width(s);
  if (w >= width) return s;
  std::string fill(width - w, ' ');
  return right ? fill + s : s + fill;
}

}  // namespace

std::string FormatTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows,
                        const std::vector<bool>& right_align) {
  size_t cols = header.size();
  for (const auto& r : rows) cols = std::max(cols, r.size());
  std::vector<size_t> width(cols, 0);
  for (size_t i = 0; i < header.size(); ++i) width[i] = Width(header[i]);
  for (const auto& r : rows) {
    for (size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], Width(r[i]));
  }
  auto line = [&](const std::vector<std::string>& cells) {
    std::string out;
    for (size_t i = 0; i < cols; ++i) {
      std::string cell = i < cells.size() ? cells[i] : "";
      bool right = i < right_align.size() && right_align[i];
      bool last = i + 1 == cols;
      out += last && !right ? cell : Pad(cell, width[i], right);
      if (!last) out += "  ";
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    return out + "\n";
  };
  std::string out = line(header);
  std::string rule;
  for (size_t i = 0; i < cols; ++i) {
    rule += std::string(width[i], '-');
    if (i + 1 < cols) rule += "  ";
  }
  out += rule + "\n";
  for (const auto& r : rows) out += line(r);
  return out;
}

std::string CsvRow(const std::vector<std::string>& fields) {
  std::string out;
  for (size_t i = 0; i < fields.size(); ++i) {
    if (i) out += ',';
    const std::string& f = fields[i];
    if (f.find_first_of(",\"\n\r") == std::string::npos) {
      out += f;
    } else {
      out += '"';
      for (char c : f) {
        if (c == '"') out += '"';
        out += c;
      }
      out += '"';
    }
  }
  return out + "\n";
}

std::string Fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string Percent(double fraction, int digits) { return Fixed(fraction * 100.0, digits) + "%"; }

std::string FormatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) seconds = 0;
  char buf[64];
  if (seconds < 10) {
    std::snprintf(buf, sizeof buf, "%.1fs", seconds);
  } else if (seconds < 60) {
    std::snprintf(buf, sizeof buf, "%.0fs", std::floor(seconds));
  } else if (seconds < 3600) {
    auto s = static_cast<long>(seconds);
    std::snprintf(buf, sizeof buf, "%ldm %02lds", s / 60, s % 60);
  } else {
    auto s = static_cast<long>(seconds);
    std::snprintf(buf, sizeof buf, "%ldh %02ldm", s / 3600, (s % 3600) / 60);
  }
  return buf;
}

std::string ProgressBar(uint64_t done, uint64_t total, int width) {
  if (width < 1) width = 1;
  int filled = 0;
  if (total > 0) {
    done = std::min(done, total);
    filled = static_cast<int>((done * static_cast<uint64_t>(width)) / total);
  }
  std::string bar = "[";
  bar.append(static_cast<size_t>(filled), '#');
  bar.append(static_cast<size_t>(width - filled), '-');
  bar += ']';
  return bar;
}

std::string FormatUnixTime(int64_t unix_seconds) {
  if (unix_seconds == 0) return "-";
  std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

Result<int64_t> ParseTime(const std::string& text) {
  auto bad = [&] {
    return Status::InvalidArgument("'" + text +
                                   "' is not a time: use 2026-11-25, 2026-11-25T13:05[:00] (UTC) or unix seconds");
  };
  if (text.empty()) return bad();
  if (std::all_of(text.begin(), text.end(), [](unsigned char c) { return std::isdigit(c); })) {
    if (text.size() > 12) return bad();
    return static_cast<int64_t>(std::stoll(text));
  }
  std::tm tm{};
  int y = 0, mo = 0, d = 0, h = 0, mi = 0, s = 0;
  char sep = 0;
  int consumed = 0;
  int n = std::sscanf(text.c_str(), "%4d-%2d-%2d%n", &y, &mo, &d, &consumed);
  if (n != 3) return bad();
  std::string rest = text.substr(static_cast<size_t>(consumed));
  if (!rest.empty()) {
    int c2 = 0;
    int m = std::sscanf(rest.c_str(), "%c%2d:%2d%n", &sep, &h, &mi, &c2);
    if (m != 3 || (sep != 'T' && sep != ' ')) return bad();
    std::string tail = rest.substr(static_cast<size_t>(c2));
    if (!tail.empty()) {
      int c3 = 0;
      if (std::sscanf(tail.c_str(), ":%2d%n", &s, &c3) != 1 || static_cast<size_t>(c3) != tail.size()) return bad();
    }
  }
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60 || h < 0 || mi < 0 || s < 0) return bad();
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = s;
  return static_cast<int64_t>(timegm(&tm));
}

const char* UsageGroupName(proto::UsageGroup by) {
  switch (by) {
    case proto::UsageGroup::kSite: return "site";
    case proto::UsageGroup::kLead: return "lead";
    case proto::UsageGroup::kJob: return "job";
  }
  return "?";
}

std::string FormatJobList(const proto::JobList& list) {
  if (list.jobs.empty()) return "no jobs\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& j : list.jobs) {
    rows.push_back({j.job_id, j.name, j.lead, proto::JobStateName(j.state),
                    std::to_string(j.rounds_done) + "/" + std::to_string(j.rounds_total),
                    FormatUnixTime(j.created_unix), j.reason});
  }
  return FormatTable({"JOB", "NAME", "LEAD", "STATE", "ROUNDS", "CREATED", "REASON"}, rows,
                     {false, false, false, false, true, false, false});
}

std::string FormatSiteList(const proto::SiteList& list) {
  if (list.sites.empty()) return "no sites configured\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& s : list.sites) {
    std::string datasets;
    for (const auto& d : s.datasets) {
      if (!datasets.empty()) datasets += ", ";
      datasets += d.name + " (" + std::to_string(d.train_examples) + " train)";
    }
    std::string devices;
    for (const auto& d : s.devices) {
      if (!devices.empty()) devices += ", ";
      devices += d.name.empty() ? d.kind : d.name;
    }
    rows.push_back({s.name, s.connected ? "connected" : "offline", FormatUnixTime(s.last_seen_unix),
                    datasets.empty() ? "-" : datasets, devices.empty() ? "-" : devices,
                    s.software_version.empty() ? "-" : s.software_version});
  }
  return FormatTable({"SITE", "STATE", "LAST SEEN", "DATASETS", "DEVICES", "VERSION"}, rows);
}

std::string FormatUsage(const proto::UsageReport& report, proto::UsageGroup by) {
  std::string key = UsageGroupName(by);
  for (auto& c : key) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  std::string cost = "COST (" + (report.currency.empty() ? std::string("EUR") : report.currency) + ")";
  uint64_t tasks = 0;
  double cpu = 0, gpu = 0, total = 0;
  for (const auto& r : report.rows) {
    tasks += r.tasks;
    cpu += r.cpu_hours;
    gpu += r.gpu_hours;
    total += r.cost;
  }
  // Short demo jobs cost fractions of a cent: show enough digits to see them.
  int cost_digits = total < 1.0 ? 4 : 2;
  std::vector<std::vector<std::string>> rows;
  auto row = [&](const std::string& k, uint64_t n, double c, double g, double money) {
    rows.push_back({k, std::to_string(n), FormatDuration(c * 3600), FormatDuration(g * 3600), Fixed(c, 4),
                    Fixed(g, 4), Fixed(money, cost_digits)});
  };
  for (const auto& r : report.rows) row(r.key, r.tasks, r.cpu_hours, r.gpu_hours, r.cost);
  row("total", tasks, cpu, gpu, total);
  return FormatTable({key, "TASKS", "CPU TIME", "GPU TIME", "CPU HOURS", "GPU HOURS", cost}, rows,
                     {false, true, true, true, true, true, true});
}

std::string UsageCsv(const proto::UsageReport& report, proto::UsageGroup by) {
  std::string out = CsvRow({UsageGroupName(by), "tasks", "cpu_hours", "gpu_hours", "cost", "currency"});
  for (const auto& r : report.rows) {
    out += CsvRow({r.key, std::to_string(r.tasks), Fixed(r.cpu_hours, 6), Fixed(r.gpu_hours, 6), Fixed(r.cost, 4),
                   report.currency});
  }
  return out;
}

std::string FormatJobStatus(const proto::JobStatus& st) {
  const auto& s = st.summary;
  std::string out;
  out += "job       " + s.job_id + (s.name.empty() ? "" : "  (" + s.name + ")") + "\n";
  out += "lead      " + s.lead + "\n";
  out += "state     " + std::string(proto::JobStateName(s.state)) +
         (s.reason.empty() ? "" : "  (" + s.reason + ")") + "\n";
  out += "rounds    " + std::to_string(s.rounds_done) + "/" + std::to_string(s.rounds_total) + " committed\n";
  out += "model     " + st.architecture + " on " + st.dataset + ", " + st.strategy + "\n";
  out += "created   " + FormatUnixTime(s.created_unix) + "\n";
  if (st.rounds.empty()) return out + "\nno rounds yet\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& r : st.rounds) {
    bool has_eval = r.eval_examples > 0;
    rows.push_back({std::to_string(r.round), r.state,
                    std::to_string(r.answered) + "/" + std::to_string(r.expected),
                    has_eval ? Fixed(r.eval_loss, 4) : "-", has_eval ? Percent(r.eval_accuracy) : "-",
                    FormatDuration(r.duration_seconds)});
  }
  out += '\n';
  out += FormatTable({"ROUND", "STATE", "SITES", "LOSS", "ACCURACY", "DURATION"}, rows,
                            {true, false, true, true, true, true});
  // Per-site detail of the latest round: who trained, on how much, with what result.
  const auto& last = st.rounds.back();
  if (!last.sites.empty()) {
    std::vector<std::vector<std::string>> site_rows;
    for (const auto& x : last.sites) {
      site_rows.push_back({x.site, x.state, std::to_string(x.examples),
                           x.examples ? Fixed(x.train_loss, 4) : "-",
                           x.eval_examples ? Percent(x.eval_accuracy) : "-", FormatDuration(x.seconds),
                           x.reason});
    }
    out += "\nround " + std::to_string(last.round) + " by site:\n";
    out += FormatTable({"SITE", "STATE", "EXAMPLES", "TRAIN LOSS", "EVAL ACC", "DEVICE TIME", "REASON"}, site_rows,
                       {false, false, true, true, true, true, false});
  }
  return out;
}

std::string FormatRoundProgress(uint32_t round, uint32_t rounds_total, uint32_t answered, uint32_t expected,
                                double elapsed_seconds) {
  return "round " + std::to_string(round) + "/" + std::to_string(rounds_total) + " " +
         ProgressBar(answered, expected, 20) + " " + std::to_string(answered) + "/" + std::to_string(expected) +
         " sites  " + FormatDuration(elapsed_seconds);
}

std::string FormatRoundCommitted(uint32_t round, uint32_t rounds_total, double loss, double accuracy,
                                 double elapsed_seconds) {
  return "round " + std::to_string(round) + "/" + std::to_string(rounds_total) + " committed: loss " +
         Fixed(loss, 4) + "  accuracy " + Percent(accuracy) + "  (" + FormatDuration(elapsed_seconds) + ")";
}

}  // namespace hanse::cli
