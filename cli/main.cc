// hanse: the command line for research leads and site admins. Argument parsing
// only (CLI11 lives in this one file: it is slow to compile); the commands are
// in commands.h.
#include <unistd.h>

#include <functional>
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "core/log.h"

namespace {

using hanse::cli::Outcome;

std::vector<uint64_t> ParseWeights(const std::string& text, std::string* error) {
  std::vector<uint64_t> out;
  if (text.empty()) return out;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    std::string item = text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    try {
      size_t used = 0;
      if (item.empty() || item[0] == '-') throw std::invalid_argument(item);
      unsigned long long v = std::stoull(item, &used);
      if (used != item.size()) throw std::invalid_argument(item);
      out.push_back(v);
    } catch (const std::exception&) {
      *error = "--weights: '" + item + "' is not a whole number (expected e.g. 100,300)";
      return {};
    }
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  namespace cli = hanse::cli;
  // Library code logs through spdlog; the CLI shows warnings and errors only.
  hanse::SetupLogging("hanse", hanse::LogFormat::kText, "warn");

  CLI::App app{"hanse: submit, watch and inspect federated training jobs; manage keys and audit logs."};
  app.footer(std::string("\n") + cli::kExitCodeHelp +
             "\n\nThe commands that talk to the coordinator read its endpoint, its public key and your key from\n"
             "the client config: --config FILE, else $XDG_CONFIG_HOME/hanse/client.toml\n"
             "(~/.config/hanse/client.toml). See docs/CLI.md.");
  app.set_version_flag("--version", std::string("hanse ") + HANSE_VERSION);
  app.require_subcommand(1);
  app.fallthrough();  // global options may follow the command

  cli::ConnectOptions conn;
  double connect_timeout_s = 5, reply_timeout_s = 30;
  app.add_option("--config", conn.config, "client config file (default: $XDG_CONFIG_HOME/hanse/client.toml)");
  app.add_option("--connect-timeout", connect_timeout_s, "seconds to wait for the coordinator's handshake")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--timeout", reply_timeout_s, "seconds to wait for each reply")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--cache-dir", conn.blob_cache, "local blob cache for uploads and downloads "
                                                 "(default: $XDG_CACHE_HOME/hanse)");

  std::function<Outcome()> run;
  auto conn_ready = [&] {
    conn.connect_timeout = std::chrono::milliseconds(static_cast<int64_t>(connect_timeout_s * 1000));
    conn.reply_timeout = std::chrono::milliseconds(static_cast<int64_t>(reply_timeout_s * 1000));
    return conn;
  };

  // ---- keygen ----
  std::string key_name;
  std::string key_dir = ".";
  std::string key_name_pos;
  auto* keygen = app.add_subcommand("keygen", "make a CURVE key pair: DIR/NAME.key (0600) and DIR/NAME.pub");
  keygen->add_option("name", key_name_pos, "key name: a site, lead or coordinator name (or --name)");
  keygen->add_option("--name", key_name, "key name (same as the positional NAME)");
  keygen->add_option("-o,--out,--dir", key_dir, "folder to write into (created if missing)")->capture_default_str();
  keygen->callback([&] {
    run = [&]() -> Outcome {
      if (!key_name.empty() && !key_name_pos.empty() && key_name != key_name_pos) {
        return Outcome::Usage("keygen: two different names given ('" + key_name_pos + "' and --name '" + key_name +
                              "')");
      }
      std::string name = key_name.empty() ? key_name_pos : key_name;
      if (name.empty()) return Outcome::Usage("keygen needs a name: hanse keygen NAME [--out DIR]");
      return cli::RunKeygen(name, key_dir, std::cout);
    };
  });

  // ---- submit ----
  std::string job_file;
  auto* submit = app.add_subcommand("submit", "validate a job file, upload its initial model, print the job id");
  submit->add_option("job", job_file, "job file (TOML)")->required();
  submit->callback([&] { run = [&] { return cli::RunSubmit(conn_ready(), job_file, std::cout, std::cerr); }; });

  // ---- jobs ----
  auto* jobs = app.add_subcommand("jobs", "list the jobs you may see");
  jobs->callback([&] { run = [&] { return cli::RunJobs(conn_ready(), std::cout); }; });

  // ---- status ----
  std::string job_id;
  auto* status = app.add_subcommand("status", "a job's rounds, per-site state and metrics");
  status->add_option("job", job_id, "job id")->required();
  status->callback([&] { run = [&] { return cli::RunStatus(conn_ready(), job_id, std::cout); }; });

  // ---- watch ----
  cli::WatchArgs watch_args;
  int64_t watch_timeout_s = 0;
  auto* watch = app.add_subcommand("watch", "follow a job live until it ends (exit 5 if it fails or is cancelled)");
  watch->add_option("job", watch_args.job_id, "job id")->required();
  watch->add_option("--max-wait", watch_timeout_s, "give up after this many seconds (0: wait for the end)")
      ->capture_default_str();
  watch->callback([&] {
    run = [&] {
      watch_args.timeout = std::chrono::seconds(watch_timeout_s);
      watch_args.tty = isatty(STDOUT_FILENO) == 1;
      return cli::RunWatch(conn_ready(), watch_args, std::cout);
    };
  });

  // ---- cancel ----
  auto* cancel = app.add_subcommand("cancel", "cancel a queued or running job");
  cancel->add_option("job", job_id, "job id")->required();
  cancel->callback([&] { run = [&] { return cli::RunCancel(conn_ready(), job_id, std::cout); }; });

  // ---- fetch ----
  int64_t fetch_round = -1;
  std::string fetch_out;
  auto* fetch = app.add_subcommand("fetch", "download a job's model (the latest committed round by default)");
  fetch->add_option("job", job_id, "job id")->required();
  fetch->add_option("--round", fetch_round, "round to fetch (0: the initial model)")->check(CLI::NonNegativeNumber);
  fetch->add_option("-o,--output", fetch_out, "file to write (safetensors)")->required();
  fetch->callback([&] {
    run = [&] {
      std::optional<uint32_t> round;
      if (fetch_round >= 0) round = static_cast<uint32_t>(fetch_round);
      return cli::RunFetch(conn_ready(), job_id, round, fetch_out, std::cout);
    };
  });

  // ---- report ----
  std::string report_dir;
  auto* report = app.add_subcommand("report", "write an HTML report with plots (gnuplot) and CSV data into DIR");
  report->add_option("job", job_id, "job id")->required();
  report->add_option("-o,--output", report_dir, "folder to write (created if missing)")->required();
  report->callback([&] { run = [&] { return cli::RunReport(conn_ready(), job_id, report_dir, std::cout); }; });

  // ---- usage ----
  cli::UsageArgs usage_args;
  std::string usage_by = "site";
  auto* usage = app.add_subcommand("usage", "compute given and used, and its cost, per site, lead or job");
  usage->add_option("--from", usage_args.from, "start (UTC): 2026-11-01, 2026-11-01T08:00 or unix seconds");
  usage->add_option("--to", usage_args.to, "end, exclusive (UTC); default now");
  usage->add_option("--by", usage_by, "group rows by site, lead or job")
      ->capture_default_str()
      ->check(CLI::IsMember({"site", "lead", "job"}));
  usage->add_flag("--csv", usage_args.csv, "print CSV instead of a table");
  usage->callback([&] {
    run = [&] {
      usage_args.by = usage_by == "lead" ? hanse::proto::UsageGroup::kLead
                      : usage_by == "job" ? hanse::proto::UsageGroup::kJob
                                          : hanse::proto::UsageGroup::kSite;
      return cli::RunUsage(conn_ready(), usage_args, std::cout);
    };
  });

  // ---- sites ----
  auto* sites = app.add_subcommand("sites", "list the sites the coordinator knows and whether they are connected");
  sites->callback([&] { run = [&] { return cli::RunSites(conn_ready(), std::cout); }; });

  // ---- audit verify | show ----
  std::vector<std::string> audit_files;
  std::string audit_file;
  auto* audit = app.add_subcommand("audit", "check or read a site's hash-chained audit log");
  audit->require_subcommand(1);
  auto* verify = audit->add_subcommand("verify", "check the hash chain of each file (exit 4 if one is broken)");
  verify->add_option("files", audit_files, "audit log files")->required();
  verify->callback([&] {
    run = [&] {
      std::vector<std::filesystem::path> paths(audit_files.begin(), audit_files.end());
      return cli::RunAuditVerify(paths, std::cout);
    };
  });
  auto* show = audit->add_subcommand("show", "print the log's history readably, then the chain verdict");
  show->add_option("file", audit_file, "audit log file")->required();
  show->callback([&] { run = [&] { return cli::RunAuditShow(audit_file, std::cout); }; });

  // ---- aggregate (offline) ----
  cli::AggregateArgs agg;
  std::vector<std::string> agg_inputs;
  std::string agg_weights, agg_out, agg_base, agg_state_in, agg_state_out;
  double max_norm = 0, clip_norm = 0;
  auto* aggregate = app.add_subcommand("aggregate", "combine model files offline with an aggregation rule");
  aggregate->add_option("inputs", agg_inputs, "input models (safetensors)")->required();
  aggregate->add_option("-o,--output", agg_out, "output model (safetensors)")->required();
  aggregate->add_option("--rule", agg.rule,
                        "fedavg, fedprox, fedadam, fedyogi, fedadagrad, median, trimmed_mean, krum, multi_krum")
      ->capture_default_str();
  aggregate->add_option("--weights", agg_weights, "example counts, one per input, e.g. 100,300 (default: equal)");
  aggregate->add_option("--base", agg_base, "global model the inputs were trained from (needed by FedOpt rules)");
  aggregate->add_flag("--deltas", agg.deltas, "the inputs are updates (new minus base), not models");
  aggregate->add_option("--state-in", agg_state_in, "FedOpt optimizer state from a previous run");
  aggregate->add_option("--state-out", agg_state_out, "where to write the FedOpt optimizer state");
  aggregate->add_option("--server-lr", agg.server_lr, "FedOpt server learning rate")->capture_default_str();
  aggregate->add_option("--beta1", agg.beta1, "FedOpt beta1")->capture_default_str();
  aggregate->add_option("--beta2", agg.beta2, "FedOpt beta2")->capture_default_str();
  aggregate->add_option("--tau", agg.tau, "FedOpt tau")->capture_default_str();
  aggregate->add_option("--trim-beta", agg.trim_beta, "trimmed_mean: fraction cut at each end")->capture_default_str();
  aggregate->add_option("--krum-f", agg.krum_f, "krum: assumed Byzantine inputs")->capture_default_str();
  aggregate->add_option("--krum-m", agg.krum_m, "multi_krum: inputs averaged")->capture_default_str();
  auto* max_norm_opt = aggregate->add_option("--max-update-norm", max_norm, "reject inputs above this L2 norm");
  auto* clip_norm_opt = aggregate->add_option("--clip-norm", clip_norm, "scale inputs down to this L2 norm");
  aggregate->callback([&] {
    run = [&]() -> Outcome {
      std::string error;
      agg.weights = ParseWeights(agg_weights, &error);
      if (!error.empty()) return Outcome::Usage(error);
      agg.inputs.assign(agg_inputs.begin(), agg_inputs.end());
      agg.output = agg_out;
      agg.base = agg_base;
      agg.state_in = agg_state_in;
      agg.state_out = agg_state_out;
      if (max_norm_opt->count()) agg.max_update_norm = max_norm;
      if (clip_norm_opt->count()) agg.clip_norm = clip_norm;
      return cli::RunAggregate(agg, std::cout);
    };
  });

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);  // prints help or the parse error
    return rc == 0 ? 0 : static_cast<int>(cli::Exit::kUsage);
  }
  if (!run) {
    std::cerr << app.help();
    return static_cast<int>(cli::Exit::kUsage);
  }
  Outcome outcome = run();
  std::cout.flush();
  if (!outcome.ok()) std::cerr << "hanse: error: " << outcome.message << "\n";
  return outcome.code();
}
