#include "cli/report.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <thread>

#include "cli/format.h"
#include "core/fsutil.h"

extern char** environ;

namespace hanse::cli {

namespace fs = std::filesystem;

namespace {

std::string Html(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string Base64(const std::string& in) {
  static const char* kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = (uint32_t(uint8_t(in[i])) << 16) | (uint32_t(uint8_t(in[i + 1])) << 8) | uint8_t(in[i + 2]);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += kAlphabet[v & 63];
  }
  if (i + 1 == in.size()) {
    uint32_t v = uint32_t(uint8_t(in[i])) << 16;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == in.size()) {
    uint32_t v = (uint32_t(uint8_t(in[i])) << 16) | (uint32_t(uint8_t(in[i + 1])) << 8);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

// A gnuplot single-quoted string: no escapes are processed inside, '' is one quote.
std::string GpQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += '\'';
    out += c;
  }
  return out + "'";
}

// A data-file string column: double quotes keep names with spaces in one column.
std::string GpDataString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) out += (c == '"' || c == '\n') ? '\'' : c;
  return out + "\"";
}

std::string Num(double v, int digits) { return std::isfinite(v) ? Fixed(v, digits) : "?"; }

// Sites in a stable order (by name) over all rounds.
std::vector<std::string> SiteNames(const proto::JobStatus& st) {
  std::set<std::string> names;
  for (const auto& r : st.rounds) {
    for (const auto& s : r.sites) names.insert(s.site);
  }
  return {names.begin(), names.end()};
}

const proto::SiteRoundInfo* Find(const proto::RoundInfo& r, const std::string& site) {
  for (const auto& s : r.sites) {
    if (s.site == site) return &s;
  }
  return nullptr;
}

bool HasEval(const proto::RoundInfo& r) { return r.eval_examples > 0; }
bool HasUpdate(const proto::SiteRoundInfo& s) { return s.examples > 0; }

class TempFolder {
 public:
  static Result<TempFolder> Make() {
    std::string tmpl = (fs::temp_directory_path() / "hanse-report-XXXXXX").string();
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (!mkdtemp(buf.data())) return ErrnoStatus("cannot create temp folder", tmpl, errno);
    TempFolder t;
    t.path_ = buf.data();
    return t;
  }
  TempFolder() = default;
  TempFolder(TempFolder&& o) noexcept : path_(std::move(o.path_)) { o.path_.clear(); }
  TempFolder& operator=(TempFolder&&) = delete;
  ~TempFolder() {
    if (!path_.empty()) {
      std::error_code ec;
      fs::remove_all(path_, ec);
    }
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

Status WriteText(const fs::path& p, const std::string& text) { return WriteFileAtomic(p, std::string_view(text)); }

// Runs `program script` with output to `log`, killing it after `timeout_s`.
Status RunGnuplot(const std::string& program, const fs::path& script, const fs::path& log, int timeout_s) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  std::string script_s = script.string();
  std::vector<char*> argv = {const_cast<char*>(program.c_str()), const_cast<char*>(script_s.c_str()), nullptr};
  pid_t pid = 0;
  int rc = posix_spawnp(&pid, program.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    return Status::NotFound("cannot run '" + program + "' (" + std::strerror(rc) +
                            "); install gnuplot-nox (scripts/setup does)");
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  int wstatus = 0;
  while (true) {
    pid_t r = waitpid(pid, &wstatus, WNOHANG);
    if (r == pid) break;
    if (r < 0 && errno != EINTR) return ErrnoStatus("waitpid for", program, errno);
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &wstatus, 0);
      return Status::DeadlineExceeded(program + " did not finish within " + std::to_string(timeout_s) + " s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0) return Status::Ok();
  auto text = ReadWholeFile(log);
  std::string detail = text.ok() ? text.value() : "";
  if (detail.size() > 600) detail = detail.substr(detail.size() - 600);
  if (WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 127) {
    return Status::NotFound("cannot run '" + program + "'; install gnuplot-nox (scripts/setup does)");
  }
  return Status::Internal(program + " failed: " + detail);
}

struct Plot {
  std::string file;     // svg name
  std::string title;    // caption in the page
};

// Writes the gnuplot data files and script into `tmp`; returns the plots it draws.
std::vector<Plot> WritePlotInputs(const proto::JobStatus& st, const fs::path& tmp, std::string* script,
                                  std::map<std::string, std::string>* data) {
  std::vector<std::string> sites = SiteNames(st);
  std::string rounds_dat = "# round accuracy_pct eval_loss answered expected duration_s\n";
  std::string train_loss_dat = "# round then train loss per site\n";
  std::string eval_acc_dat = "# round then eval accuracy per site (pct)\n";
  bool any_site_eval = false, any_train_loss = false, any_eval = false;
  for (const auto& r : st.rounds) {
    rounds_dat += std::to_string(r.round) + " " + (HasEval(r) ? Num(r.eval_accuracy * 100, 4) : "?") + " " +
                  (HasEval(r) ? Num(r.eval_loss, 6) : "?") + " " + std::to_string(r.answered) + " " +
                  std::to_string(r.expected) + " " + Num(r.duration_seconds, 3) + "\n";
    any_eval |= HasEval(r);
    train_loss_dat += std::to_string(r.round);
    eval_acc_dat += std::to_string(r.round);
    for (const auto& name : sites) {
      const auto* s = Find(r, name);
      bool upd = s && HasUpdate(*s);
      bool ev = s && s->eval_examples > 0;
      any_train_loss |= upd;
      any_site_eval |= ev;
      train_loss_dat += ' ';
      train_loss_dat += upd ? Num(s->train_loss, 6) : std::string("?");
      eval_acc_dat += ' ';
      eval_acc_dat += ev ? Num(s->eval_accuracy * 100, 4) : std::string("?");
    }
    train_loss_dat += "\n";
    eval_acc_dat += "\n";
  }
  std::string usage_dat = "# site device_seconds examples\n";
  for (const auto& t : SumBySite(st)) {
    usage_dat += GpDataString(t.site) + " " + Num(t.device_seconds, 3) + " " + std::to_string(t.examples) + "\n";
  }
  (*data)["rounds.dat"] = rounds_dat;
  (*data)["train_loss.dat"] = train_loss_dat;
  (*data)["eval_acc.dat"] = eval_acc_dat;
  (*data)["usage.dat"] = usage_dat;

  std::string& s = *script;
  s += "cd " + GpQuote(tmp.string()) + "\n";
  s += "set terminal svg size 760,360 dynamic noenhanced font 'Helvetica,12' background rgb 'white'\n";
  s += "set datafile missing '?'\n";
  s += "set grid\nset key outside right top\nset xlabel 'round'\n";
  if (st.rounds.size() <= 25) s += "set xtics 1\n";
  uint32_t max_round = 1;
  for (const auto& r : st.rounds) max_round = std::max(max_round, r.round);
  s += "set xrange [0.5:" + std::to_string(max_round) + ".5]\n";

  std::vector<Plot> plots;
  if (any_eval || any_site_eval) {
    s += "set output 'accuracy.svg'\nset ylabel 'accuracy (%)'\nset title 'Accuracy per round (federated evaluation)'\n";
    std::vector<std::string> parts;
    if (any_eval) parts.push_back("'rounds.dat' using 1:2 with linespoints lw 3 pt 7 lc rgb '#1f4e99' title 'global'");
    if (any_site_eval) {
      for (size_t i = 0; i < sites.size(); ++i) {
        parts.push_back("'eval_acc.dat' using 1:" + std::to_string(i + 2) + " with linespoints dt 2 pt 6 title " +
                        GpQuote(sites[i]));
      }
    }
    s += "plot ";
    for (size_t i = 0; i < parts.size(); ++i) s += (i ? ", \\\n     " : "") + parts[i];
    s += "\n";
    plots.push_back({"accuracy.svg", "Accuracy per round: global model on the sites' test splits"});
  }
  if (any_eval || any_train_loss) {
    s += "set output 'loss.svg'\nset ylabel 'loss'\nset title 'Loss per round'\n";
    std::vector<std::string> parts;
    if (any_eval) {
      parts.push_back("'rounds.dat' using 1:3 with linespoints lw 3 pt 7 lc rgb '#1f4e99' title 'global (evaluation)'");
    }
    if (any_train_loss) {
      for (size_t i = 0; i < sites.size(); ++i) {
        parts.push_back("'train_loss.dat' using 1:" + std::to_string(i + 2) + " with linespoints dt 2 pt 6 title " +
                        GpQuote(sites[i] + " (train)"));
      }
    }
    s += "plot ";
    for (size_t i = 0; i < parts.size(); ++i) s += (i ? ", \\\n     " : "") + parts[i];
    s += "\n";
    plots.push_back({"loss.svg", "Loss per round: global evaluation loss and each site's training loss"});
  }
  if (!st.rounds.empty()) {
    s += "set output 'participation.svg'\nset title 'Participation and duration per round'\n";
    uint32_t max_expected = 1;
    for (const auto& r : st.rounds) max_expected = std::max({max_expected, r.expected, r.answered});
    if (max_expected <= 20) s += "set ytics 1\n";
    s += "set ylabel 'sites'\nset y2label 'duration (s)'\nset ytics nomirror\nset y2tics\nset yrange [0:*]\n"
         "set y2range [0:*]\nset style fill solid 0.5 border -1\nset boxwidth 0.6\n";
    s += "plot 'rounds.dat' using 1:5 with boxes lc rgb '#c0c0c0' title 'expected', \\\n"
         "     'rounds.dat' using 1:4 with boxes lc rgb '#2e8b57' title 'answered', \\\n"
         "     'rounds.dat' using 1:6 axes x1y2 with linespoints lw 2 pt 7 lc rgb '#b22222' title 'duration'\n";
    s += "unset y2label\nunset y2tics\nset ytics autofreq mirror\nunset yrange\n";
    plots.push_back({"participation.svg", "Sites answered out of those expected, and round duration"});
  }
  if (!SumBySite(st).empty()) {
    s += "set output 'usage.svg'\nset title 'Device time per site over the job'\nset xlabel 'site'\n"
         "set ylabel 'device seconds'\nunset xrange\nset xrange [-0.5:*]\nset yrange [0:*]\nunset key\n"
         "set style fill solid 0.6 border -1\nset boxwidth 0.6\nset xtics nomirror\n";
    s += "plot 'usage.dat' using 0:2:xtic(1) with boxes lc rgb '#1f4e99'\n";
    plots.push_back({"usage.svg", "Device seconds each site spent on this job"});
  }
  return plots;
}

std::string Table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows) {
  std::string out = "<table>\n<tr>";
  for (const auto& h : header) out += "<th>" + Html(h) + "</th>";
  out += "</tr>\n";
  for (const auto& r : rows) {
    out += "<tr>";
    for (const auto& c : r) out += "<td>" + Html(c) + "</td>";
    out += "</tr>\n";
  }
  return out + "</table>\n";
}

}  // namespace

std::vector<SiteTotals> SumBySite(const proto::JobStatus& st) {
  std::map<std::string, SiteTotals> by;
  for (const auto& r : st.rounds) {
    for (const auto& s : r.sites) {
      auto& t = by[s.site];
      t.site = s.site;
      if (HasUpdate(s)) ++t.rounds;
      t.examples += s.examples;
      t.device_seconds += s.seconds;
    }
  }
  std::vector<SiteTotals> out;
  for (auto& [_, t] : by) out.push_back(t);
  return out;
}

std::string RoundsCsv(const proto::JobStatus& st) {
  std::string out = CsvRow({"round", "state", "expected_sites", "answered_sites", "duration_s", "eval_loss",
                            "eval_accuracy", "eval_examples", "model_hash"});
  for (const auto& r : st.rounds) {
    out += CsvRow({std::to_string(r.round), r.state, std::to_string(r.expected), std::to_string(r.answered),
                   Fixed(r.duration_seconds, 3), HasEval(r) ? Fixed(r.eval_loss, 6) : "",
                   HasEval(r) ? Fixed(r.eval_accuracy, 6) : "", std::to_string(r.eval_examples), r.model_hash});
  }
  return out;
}

std::string SitesCsv(const proto::JobStatus& st) {
  std::string out = CsvRow({"round", "site", "state", "train_examples", "train_loss", "train_accuracy",
                            "eval_examples", "eval_loss", "eval_accuracy", "device_seconds", "reason"});
  for (const auto& r : st.rounds) {
    for (const auto& s : r.sites) {
      bool upd = HasUpdate(s);
      bool ev = s.eval_examples > 0;
      out += CsvRow({std::to_string(r.round), s.site, s.state, std::to_string(s.examples),
                     upd ? Fixed(s.train_loss, 6) : "", upd ? Fixed(s.train_accuracy, 6) : "",
                     std::to_string(s.eval_examples), ev ? Fixed(s.eval_loss, 6) : "",
                     ev ? Fixed(s.eval_accuracy, 6) : "", Fixed(s.seconds, 3), s.reason});
    }
  }
  return out;
}

std::string SiteUsageCsv(const proto::JobStatus& st) {
  std::string out = CsvRow({"site", "rounds_with_update", "train_examples", "device_seconds"});
  for (const auto& t : SumBySite(st)) {
    out += CsvRow({t.site, std::to_string(t.rounds), std::to_string(t.examples), Fixed(t.device_seconds, 3)});
  }
  return out;
}

Result<ReportFiles> WriteReport(const proto::JobStatus& st, const fs::path& dir, const ReportOptions& options) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::Io("cannot create report folder " + dir.string() + ": " + ec.message());

  ReportFiles files;
  const std::pair<const char*, std::string> csvs[] = {
      {"rounds.csv", RoundsCsv(st)}, {"sites.csv", SitesCsv(st)}, {"usage.csv", SiteUsageCsv(st)}};
  for (const auto& [name, text] : csvs) {
    HANSE_RETURN_IF_ERROR(WriteText(dir / name, text));
    files.csv.push_back(dir / name);
  }

  // Plots: gnuplot draws SVGs in a temp folder; they are copied next to the page and inlined.
  std::vector<std::pair<Plot, std::string>> drawn;  // plot, svg text
  if (st.rounds.empty()) {
    files.warning = "no rounds yet: nothing to plot";
  } else {
    auto tmp = TempFolder::Make();
    if (!tmp.ok()) return tmp.status();
    std::string script;
    std::map<std::string, std::string> data;
    std::vector<Plot> plots = WritePlotInputs(st, tmp->path(), &script, &data);
    for (const auto& [name, text] : data) HANSE_RETURN_IF_ERROR(WriteText(tmp->path() / name, text));
    HANSE_RETURN_IF_ERROR(WriteText(tmp->path() / "plots.gp", script));
    Status ran = RunGnuplot(options.gnuplot, tmp->path() / "plots.gp", tmp->path() / "gnuplot.log",
                            options.gnuplot_timeout_s);
    if (!ran.ok()) {
      files.warning = "plots omitted: " + ran.message();
    } else {
      for (const auto& p : plots) {
        auto svg = ReadWholeFile(tmp->path() / p.file);
        if (!svg.ok()) {
          files.warning = "plots omitted: gnuplot wrote no " + p.file;
          drawn.clear();
          break;
        }
        drawn.emplace_back(p, svg.value());
      }
      for (const auto& [p, svg] : drawn) {
        HANSE_RETURN_IF_ERROR(WriteText(dir / p.file, svg));
        files.svg.push_back(dir / p.file);
      }
    }
  }

  const auto& sum = st.summary;
  std::string title = "hanse report: " + (sum.name.empty() ? sum.job_id : sum.name + " (" + sum.job_id + ")");
  std::string h;
  h += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>" + Html(title) + "</title>\n";
  h += "<style>\nbody{font-family:Helvetica,Arial,sans-serif;margin:2em auto;max-width:60em;color:#222}\n"
       "table{border-collapse:collapse;margin:0.5em 0 1.5em}\n"
       "th,td{border:1px solid #ccc;padding:0.25em 0.6em;text-align:right}\n"
       "th{background:#eef2f8}td:first-child,th:first-child{text-align:left}\n"
       "figure{margin:1em 0}figcaption{color:#555;font-size:0.9em}img{max-width:100%}\n"
       ".warn{color:#a33}.big{font-size:1.4em}\n</style>\n</head>\n<body>\n";
  h += "<h1>" + Html(title) + "</h1>\n";
  std::vector<std::vector<std::string>> summary_rows = {
      {"state", std::string(proto::JobStateName(sum.state)) + (sum.reason.empty() ? "" : " (" + sum.reason + ")")},
      {"lead", sum.lead},
      {"rounds committed", std::to_string(sum.rounds_done) + " of " + std::to_string(sum.rounds_total)},
      {"architecture", st.architecture},
      {"dataset", st.dataset},
      {"strategy", st.strategy},
      {"created", FormatUnixTime(sum.created_unix)},
  };
  const proto::RoundInfo* last_eval = nullptr;
  for (const auto& r : st.rounds) {
    if (HasEval(r)) last_eval = &r;
  }
  if (last_eval) {
    h += "<p class=\"big\">Accuracy after round " + std::to_string(last_eval->round) + ": <b>" +
         Html(Percent(last_eval->eval_accuracy)) + "</b> (loss " + Html(Fixed(last_eval->eval_loss, 4)) + ", " +
         std::to_string(last_eval->eval_examples) + " test examples across sites)</p>\n";
  }
  h += "<h2>Job</h2>\n" + Table({"", ""}, summary_rows);

  h += "<h2>Plots</h2>\n";
  if (!files.warning.empty()) h += "<p class=\"warn\">" + Html(files.warning) + "</p>\n";
  for (const auto& [p, svg] : drawn) {
    h += "<figure><img alt=\"" + Html(p.title) + "\" src=\"data:image/svg+xml;base64," + Base64(svg) +
         "\"><figcaption>" + Html(p.title) + "</figcaption></figure>\n";
  }

  h += "<h2>Rounds</h2>\n";
  std::vector<std::vector<std::string>> round_rows;
  for (const auto& r : st.rounds) {
    round_rows.push_back({std::to_string(r.round), r.state, std::to_string(r.answered) + "/" + std::to_string(r.expected),
                          HasEval(r) ? Fixed(r.eval_loss, 4) : "-", HasEval(r) ? Percent(r.eval_accuracy) : "-",
                          FormatDuration(r.duration_seconds),
                          r.model_hash.size() > 12 ? r.model_hash.substr(0, 12) : r.model_hash});
  }
  h += Table({"round", "state", "sites answered", "eval loss", "eval accuracy", "duration", "model"}, round_rows);

  h += "<h2>Sites per round</h2>\n";
  std::vector<std::vector<std::string>> site_rows;
  for (const auto& r : st.rounds) {
    for (const auto& s : r.sites) {
      site_rows.push_back({std::to_string(r.round), s.site, s.state, std::to_string(s.examples),
                           HasUpdate(s) ? Fixed(s.train_loss, 4) : "-", s.eval_examples ? Percent(s.eval_accuracy) : "-",
                           FormatDuration(s.seconds), s.reason});
    }
  }
  h += Table({"round", "site", "state", "train examples", "train loss", "eval accuracy", "device time", "reason"},
             site_rows);

  h += "<h2>Usage per site</h2>\n";
  std::vector<std::vector<std::string>> usage_rows;
  for (const auto& t : SumBySite(st)) {
    usage_rows.push_back({t.site, std::to_string(t.rounds), std::to_string(t.examples), Fixed(t.device_seconds, 1)});
  }
  h += Table({"site", "rounds with update", "train examples", "device seconds"}, usage_rows);

  h += "<h2>Data</h2>\n<p>";
  for (const auto& c : files.csv) {
    std::string n = c.filename().string();
    h += "<a href=\"" + Html(n) + "\">" + Html(n) + "</a> ";
  }
  h += "</p>\n<p><small>Written by hanse report. Plots drawn by gnuplot.</small></p>\n</body>\n</html>\n";
  files.html = dir / "report.html";
  HANSE_RETURN_IF_ERROR(WriteText(files.html, h));
  return files;
}

}  // namespace hanse::cli
