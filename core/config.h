// The four configuration files (coordinator, site, job, client), parsed in one
// place into typed option structs. TOML via toml++.
//
// Every error names file, line, column and key, e.g.
//   configs/site-paris.toml:12:1: policy.max_epochs: expected an integer >= 1, got "ten"
// Unknown keys are errors. Paths inside a file are resolved relative to the
// folder of that file, so the structs below hold absolute (or caller-relative)
// paths ready to open.
//
// Error codes: kNotFound when the config file itself is missing; kInvalidArgument
// for everything in it (syntax: "FILE:LINE:COL: syntax error: ...", a missing
// required key points at the table that should hold it, or 1:1).
// Files named by a config are checked when it loads: public key files must hold
// one 40-char Z85 key; secret key files must exist with mode 0600 or stricter
// but are NOT read (programs call LoadSecretKey from core/keys.h at start, so
// --check-config never holds a secret); dataset files must exist. The key
// layout of each kind is documented in the examples under configs/.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"

namespace hanse {

namespace fs = std::filesystem;

// ---------------- coordinator.toml ----------------
struct PrincipalEntry {
  std::string name;
  fs::path public_key_file;   // resolved
  std::string public_key;     // Z85, read from the file and checked (40 chars, decodes)
};

struct CostRates {
  double gpu_hour = 0.0;      // per device-hour
  double cpu_hour = 0.0;
  std::string currency = "EUR";
};

struct CoordinatorConfig {
  fs::path source;                       // the file it came from
  std::string listen = "tcp://127.0.0.1:7700";
  fs::path secret_key_file;              // resolved; NAME.key
  fs::path public_key_file;              // resolved; NAME.pub (default: secret with .pub)
  fs::path data_dir;                     // SQLite + blob store
  uint64_t chunk_bytes = 4ull << 20;     // [transport] chunk_bytes
  uint32_t window = 4;                   // [transport] window (credits in flight)
  uint32_t heartbeat_ms = 1000;          // [transport] heartbeat_ms
  uint32_t heartbeat_timeout_ms = 3000;  // [transport] heartbeat_timeout_ms
  uint32_t keep_updates_rounds = 0;      // [retention] updates kept this many rounds after commit
  uint32_t keep_checkpoints = 0;         // [retention] 0 = all
  CostRates rates;                       // [rates]
  std::vector<PrincipalEntry> sites;     // [[site]]
  std::vector<PrincipalEntry> leads;     // [[lead]]
  std::vector<PrincipalEntry> admins;    // [[admin]]
};

// ---------------- site-NAME.toml ----------------
struct PartitionConfig {
  enum class Kind { kNone, kLabels, kDirichlet } kind = Kind::kNone;
  std::vector<int64_t> labels;   // kLabels
  double alpha = 0.5;            // kDirichlet
  uint64_t seed = 0;             // kDirichlet
  uint32_t num_shares = 1;       // kDirichlet: how many shares the file is cut into
  uint32_t share = 0;            // kDirichlet: which one this site holds (0-based)
};

struct DatasetConfig {
  std::string name;                       // logical name ([datasets.NAME])
  std::string format;                     // "idx" | "csv"
  // idx: images + labels files (raw or .gz); test_* optional (else split)
  fs::path train_images, train_labels, test_images, test_labels;
  // csv: one file with a header
  fs::path path;
  std::string label_column;               // csv
  std::vector<std::string> feature_columns;  // csv; empty = all but the label
  double test_fraction = 0.0;             // when no separate test files: share held out
  uint64_t max_train_examples = 0;        // 0 = all
  uint64_t max_test_examples = 0;
  PartitionConfig partition;
};

struct AvailabilityWindow {
  std::vector<int> days;                  // 0=Mon..6=Sun
  int start_minute = 0;                   // minutes since local midnight
  int end_minute = 24 * 60;
};

struct PolicyConfig {
  std::vector<std::string> leads;         // allowed lead names; empty = none allowed; ["*"] = all
  std::vector<std::string> architectures; // "mlp", "cnn", "torchscript"
  std::map<std::string, std::string> models;  // allowed initial model names -> optional hash ("" = any)
  std::vector<std::string> torchscript_hashes;// allowed TorchScript module blob hashes
  std::vector<std::string> datasets;      // allowed logical datasets; empty = all announced
  uint32_t max_epochs = 10;
  uint32_t max_batch_size = 1024;
  std::vector<std::string> devices = {"cpu"};   // "cpu", "cuda"
  std::string timezone = "Europe/Paris";
  std::vector<AvailabilityWindow> windows;      // empty = always
  double quota_device_hours_per_lead_month = 0; // 0 = unlimited
  uint64_t max_model_bytes = 1ull << 30;
};

struct SiteConfig {
  fs::path source;
  std::string name;
  std::string coordinator;                // endpoint
  fs::path coordinator_public_key_file;
  std::string coordinator_public_key;     // Z85
  fs::path secret_key_file;
  fs::path public_key_file;
  fs::path data_dir;                      // blob store, local ledger
  fs::path audit_log;
  uint32_t threads = 1;
  std::vector<std::string> devices = {"cpu"};
  std::map<std::string, DatasetConfig> datasets;
  PolicyConfig policy;
};

// ---------------- job-NAME.toml ----------------
struct StrategyConfig {
  std::string rule = "fedavg";  // fedavg, fedprox, fedadam, fedyogi, fedadagrad, median, trimmed_mean, krum, multi_krum
  double server_lr = 1.0;       // FedOpt
  double beta1 = 0.9;
  double beta2 = 0.99;
  double tau = 1e-3;
  double trim_beta = 0.1;       // trimmed mean: fraction trimmed at each end
  uint32_t krum_f = 0;
  uint32_t krum_m = 1;
};

struct TrainingSection {
  uint32_t epochs = 1;
  uint32_t batch_size = 64;
  std::string optimizer = "sgd";
  double lr = 0.05;
  double momentum = 0.0;
  double weight_decay = 0.0;
  double prox_mu = 0.0;
  std::vector<std::string> trainable;
  std::string update_dtype = "f32";
  uint64_t max_examples = 0;
};

struct JobConfig {
  fs::path source;
  std::string name;
  fs::path initial_model;               // safetensors file (resolved)
  std::string model_name;               // policy name of the initial model (default: file stem)
  std::string architecture;             // mlp | cnn | torchscript
  std::vector<uint32_t> hidden;         // mlp hidden sizes
  fs::path torchscript_module;          // when architecture = torchscript
  std::string dataset;
  StrategyConfig strategy;
  TrainingSection training;
  uint32_t rounds = 1;
  uint32_t min_sites = 1;
  std::vector<std::string> sites;       // names; ["all"] = every known site
  uint32_t round_deadline_s = 600;
  uint32_t max_retries = 2;
  bool evaluate = true;                 // federated evaluation after each round
  std::optional<double> max_update_norm;
  std::optional<double> clip_norm;
  uint64_t seed = 0;

  // The key naming the model-module file that some architectures ship with the
  // job (the lead uploads it as a blob beside the initial model).
  static constexpr const char* kModuleKey = "torchscript_module";
  bool needs_module() const { return architecture == "torchscript"; }
};

// ---------------- client.toml ----------------
struct ClientConfig {
  fs::path source;
  std::string coordinator;
  fs::path coordinator_public_key_file;
  std::string coordinator_public_key;
  fs::path secret_key_file;
  fs::path public_key_file;
};

Result<CoordinatorConfig> LoadCoordinatorConfig(const fs::path& file);
// SiteConfig::audit_log defaults to data_dir/audit.log.
Result<SiteConfig> LoadSiteConfig(const fs::path& file);
// initial_model is required; it and torchscript_module (architecture =
// "torchscript") must exist. model_name defaults to initial_model's file stem.
Result<JobConfig> LoadJobConfig(const fs::path& file);
// Parses a job from text (the coordinator receives the file's text). `name_for_errors`
// stands for the file in messages; `base_dir` resolves relative paths ("" = none:
// paths stay as written). Same checks as LoadJobConfig except that initial_model
// and torchscript_module are not looked for on disk (the client uploads them).
Result<JobConfig> ParseJobConfig(const std::string& text, const std::string& name_for_errors,
                                 const fs::path& base_dir);
Result<ClientConfig> LoadClientConfig(const fs::path& file);

}  // namespace hanse
