// hanse-coordinator --config coordinator.toml [--log-format text|json]
// hanse-coordinator --check-config coordinator.toml
#include <csignal>

#include <CLI/CLI.hpp>
#include <atomic>
#include <iostream>
#include <spdlog/spdlog.h>

#include "core/config.h"
#include "core/log.h"
#include "coordinator/coordinator.h"

namespace {
std::atomic<bool> g_stop{false};  // set from the signal handler: the only global, by necessity
void OnSignal(int) { g_stop.store(true); }
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"hanse coordinator: runs federated fine-tuning jobs"};
  std::string config_file, check_file, log_format = "text", log_level = "info";
  app.add_option("--config", config_file, "coordinator.toml");
  app.add_option("--check-config", check_file, "validate a coordinator config file and exit");
  app.add_option("--log-format", log_format, "text | json");
  app.add_option("--log-level", log_level, "trace | debug | info | warn | error");
  CLI11_PARSE(app, argc, argv);

  auto format = hanse::ParseLogFormat(log_format);
  if (!format.ok()) {
    std::cerr << "hanse-coordinator: --log-format: " << format.status().message() << "\n";
    return 2;
  }
  hanse::SetupLogging("coordinator", *format, log_level);

  if (!check_file.empty()) {
    auto cfg = hanse::LoadCoordinatorConfig(check_file);
    if (!cfg.ok()) {
      std::cerr << cfg.status().message() << "\n";
      return 1;
    }
    std::cout << check_file << ": ok (" << cfg->sites.size() << " sites, " << cfg->leads.size() << " leads, "
              << cfg->admins.size() << " admins)\n";
    return 0;
  }
  if (config_file.empty()) {
    std::cerr << "hanse-coordinator: --config FILE is required\n";
    return 2;
  }
  auto cfg = hanse::LoadCoordinatorConfig(config_file);
  if (!cfg.ok()) {
    spdlog::error("{}", cfg.status().message());
    return 1;
  }
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  auto coord = hanse::coord::Coordinator::Open(*cfg);
  if (!coord.ok()) {
    spdlog::error("cannot start: {}", coord.status().ToString());
    return 1;
  }
  hanse::Status s = (*coord)->Run(g_stop);
  if (!s.ok()) {
    spdlog::error("{}", s.ToString());
    return 1;
  }
  return 0;
}
