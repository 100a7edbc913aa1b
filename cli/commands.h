// The `hanse` commands, callable without CLI11 (main.cc parses arguments and
// calls these). Each prints its result to `out` and returns an Outcome: exit
// code plus, on failure, a message in plain words for stderr.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <iosfwd>
#include <optional>
#include <string>
#include <vector>

#include "cli/outcome.h"
#include "protocol/messages.h"

namespace hanse::cli {

namespace fs = std::filesystem;

// Options shared by the commands that talk to the coordinator.
struct ConnectOptions {
  fs::path config;                                   // "" = default location
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds reply_timeout{30000};
  fs::path blob_cache;                               // "" = DefaultBlobCache()
};

// --config, else $XDG_CONFIG_HOME/hanse/client.toml, else ~/.config/hanse/client.toml.
fs::path DefaultClientConfigPath();

// ---- local commands (no coordinator) ----
Outcome RunKeygen(const std::string& name, const fs::path& out_dir, std::ostream& out);
Outcome RunAuditVerify(const std::vector<fs::path>& logs, std::ostream& out);
Outcome RunAuditShow(const fs::path& log, std::ostream& out);

struct AggregateArgs {
  std::string rule = "fedavg";
  std::vector<fs::path> inputs;
  std::vector<uint64_t> weights;
  fs::path base;
  bool deltas = false;
  fs::path output;
  fs::path state_in, state_out;
  double server_lr = 1.0, beta1 = 0.9, beta2 = 0.99, tau = 1e-3, trim_beta = 0.1;
  uint32_t krum_f = 0, krum_m = 1;
  std::optional<double> max_update_norm, clip_norm;
};
Outcome RunAggregate(const AggregateArgs& args, std::ostream& out);

// ---- commands that talk to the coordinator ----
// Validates the job file locally (file:line:key errors, exit 4), uploads the
// initial model, prints the job id on `out` (alone on its line).
Outcome RunSubmit(const ConnectOptions& c, const fs::path& job_file, std::ostream& out, std::ostream& info);
Outcome RunJobs(const ConnectOptions& c, std::ostream& out);
Outcome RunStatus(const ConnectOptions& c, const std::string& job_id, std::ostream& out);
struct WatchArgs {
  std::string job_id;
  std::chrono::milliseconds poll{1000};
  std::chrono::seconds timeout{0};  // 0 = until the job ends
  bool tty = false;                 // redraw the progress line in place
};
Outcome RunWatch(const ConnectOptions& c, const WatchArgs& args, std::ostream& out);
Outcome RunCancel(const ConnectOptions& c, const std::string& job_id, std::ostream& out);
Outcome RunFetch(const ConnectOptions& c, const std::string& job_id, std::optional<uint32_t> round,
              const fs::path& output, std::ostream& out);
Outcome RunReport(const ConnectOptions& c, const std::string& job_id, const fs::path& dir, std::ostream& out);
struct UsageArgs {
  std::string from, to;  // "" = open
  proto::UsageGroup by = proto::UsageGroup::kSite;
  bool csv = false;
};
Outcome RunUsage(const ConnectOptions& c, const UsageArgs& args, std::ostream& out);
Outcome RunSites(const ConnectOptions& c, std::ostream& out);

}  // namespace hanse::cli
