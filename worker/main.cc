// hanse-worker: the site daemon, plus two local tools.
//
//   hanse-worker --config site.toml [--log-format text|json] [--log-level L] [--new-audit-log]
//   hanse-worker --check-config site.toml
//   hanse-worker init-model --arch cnn|mlp [--hidden 256,128] [--in-features 784] [--classes 10] --seed N -o FILE
//   hanse-worker init-model --arch torchscript --module net.pt -o FILE
//   hanse-worker evaluate --arch cnn|mlp|torchscript [--module net.pt] --model M.safetensors
//                         [--images F --labels F | --config site.toml --dataset NAME] [--threads N]
//
// CLI11 stays in this file (it costs ~10 s per translation unit).
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "core/blob_store.h"
#include "core/config.h"
#include "core/fsutil.h"
#include "core/log.h"
#include "core/sha256.h"
#include "worker/audit_log.h"
#include "worker/daemon.h"
#include "worker/dataset.h"
#include "worker/policy.h"
#include "worker/site_ledger.h"
#include "worker/torch_trainer.h"

namespace hanse::site {
namespace {

namespace fs = std::filesystem;

constexpr const char* kFashionTestImages = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";
constexpr const char* kFashionTestLabels = "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz";

int Fail(const Status& st) {
  std::cerr << "hanse-worker: " << st.ToString() << "\n";
  return 1;
}

// SIGINT/SIGTERM ask the daemon to stop. A handler (not sigwait) because
// LibTorch and OpenMP may start threads before main() that a blocked mask would
// not cover. The flag is the one process-wide state a signal handler needs.
std::atomic<bool> stop_requested{false};
static_assert(std::atomic<bool>::is_always_lock_free);

void OnStopSignal(int) { stop_requested.store(true); }

void InstallStopHandlers() {
  struct sigaction sa {};
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

int CheckConfig(const std::string& file) {
  auto config = LoadSiteConfig(file);
  if (!config.ok()) return Fail(config.status());
  Status st = ValidatePolicy(config->policy);
  if (!st.ok()) return Fail(st.WithContext(file));
  std::cout << "ok: " << file << ": site " << config->name << ", " << config->datasets.size() << " dataset(s), "
            << config->policy.windows.size() << " availability window(s)\n";
  return 0;
}

int RunDaemon(const std::string& file, const std::string& log_format, const std::string& log_level,
              bool new_audit_log) {
  auto format = ParseLogFormat(log_format);
  if (!format.ok()) return Fail(format.status());
  SetupLogging("hanse-worker", *format, log_level);
  auto config = LoadSiteConfig(file);
  if (!config.ok()) return Fail(config.status());

  Clock clock = [] { return std::chrono::system_clock::now(); };
  auto audit = AuditLog::Open(config->audit_log, new_audit_log, clock);
  if (!audit.ok()) return Fail(audit.status());
  auto ledger = SiteLedger::Open(config->data_dir / "ledger.jsonl");
  if (!ledger.ok()) return Fail(ledger.status());
  auto store = BlobStore::Open(config->data_dir);
  if (!store.ok()) return Fail(store.status());
  auto datasets = LoadSiteDatasets(*config);
  if (!datasets.ok()) return Fail(datasets.status());
  for (const auto& [name, ds] : *datasets) {
    spdlog::info("dataset {}: {} train / {} test examples, {} classes", name, ds.train.size(), ds.test.size(),
                 ds.num_classes);
  }
  auto trainer = train::MakeTorchTrainer(static_cast<int>(config->threads));

  DaemonOptions options;
  auto client = ClientOptionsFor(*config);
  if (!client.ok()) return Fail(client.status());
  options.client = std::move(client).value();

  DaemonParts parts;
  parts.config = &*config;
  parts.trainer = trainer.get();
  parts.audit = audit->get();
  parts.ledger = ledger->get();
  parts.store = store->get();
  parts.datasets = &*datasets;
  parts.clock = clock;
  auto daemon = Daemon::Create(parts, std::move(options));
  if (!daemon.ok()) return Fail(daemon.status());

  Status st = (*daemon)->Run(stop_requested);
  if (!st.ok()) return Fail(st);
  return 0;
}

int InitModelCommand(const std::string& arch, const std::vector<uint32_t>& hidden, int64_t in_features,
                     int64_t classes, uint64_t seed, const std::string& out) {
  std::error_code ec;
  if (fs::path(out).has_parent_path()) fs::create_directories(fs::path(out).parent_path(), ec);
  Status st = train::InitModel(arch, hidden, in_features, classes, seed, out);
  if (!st.ok()) return Fail(st);
  auto bytes = ReadWholeFile(out);
  if (!bytes.ok()) return Fail(bytes.status());
  std::cout << "wrote " << out << " (" << arch << ", seed " << seed << ", " << bytes->size() << " bytes, sha256 "
            << Sha256Hex(*bytes) << ")\n";
  return 0;
}

// init-model --arch torchscript: the module's own parameters. Prints the module's
// hash too: it is what sites list in policy.torchscript_hashes.
int InitModuleCommand(const std::string& module, const std::string& out) {
  std::error_code ec;
  if (fs::path(out).has_parent_path()) fs::create_directories(fs::path(out).parent_path(), ec);
  auto module_hash = train::InitModuleWeights(module, out);
  if (!module_hash.ok()) return Fail(module_hash.status());
  auto bytes = ReadWholeFile(out);
  if (!bytes.ok()) return Fail(bytes.status());
  std::cout << "wrote " << out << " (torchscript, parameters of " << module << ", " << bytes->size()
            << " bytes, sha256 " << Sha256Hex(*bytes) << ")\n"
            << "module " << module << " sha256 " << *module_hash << "  (sites list it in policy.torchscript_hashes)\n";
  return 0;
}

// Evaluates on IDX files, or on the test split of a dataset of a site config
// (`site_config` + `dataset`, partition and caps applied as the daemon would).
int EvaluateCommand(const std::string& arch, const std::vector<uint32_t>& hidden, const std::string& module,
                    const std::string& model, const std::string& images, const std::string& labels,
                    const std::string& site_config, const std::string& dataset, int threads) {
  std::vector<int64_t> shape;
  Split split;
  if (!site_config.empty()) {
    auto config = LoadSiteConfig(site_config);
    if (!config.ok()) return Fail(config.status());
    auto it = config->datasets.find(dataset);
    if (it == config->datasets.end()) {
      return Fail(Status::NotFound(site_config + ": no dataset \"" + dataset + "\" (use --dataset NAME)"));
    }
    auto ds = LoadDataset(it->second);
    if (!ds.ok()) return Fail(ds.status());
    shape = ds->sample_shape;
    split = std::move(ds->test);
  } else {
    auto loaded = LoadIdx(images, labels, &shape);
    if (!loaded.ok()) return Fail(loaded.status());
    split = std::move(loaded).value();
  }
  auto out = train::EvaluateModel(arch, hidden, model, split, shape, threads, module);
  if (!out.ok()) return Fail(out.status());
  std::printf("accuracy %.4f loss %.4f examples %llu\n", out->accuracy, out->loss,
              static_cast<unsigned long long>(out->examples));
  return 0;
}

}  // namespace
}  // namespace hanse::site

int main(int argc, char** argv) {
  // Before LibTorch starts: OpenBLAS threads would fight LibTorch's own (see TOOLCHAIN.md).
  setenv("OPENBLAS_NUM_THREADS", "1", /*overwrite=*/0);
  hanse::site::InstallStopHandlers();

  CLI::App app{"hanse-worker: federated fine-tuning site daemon"};
  app.require_subcommand(0, 1);
  std::string config_file, check_file, log_format = "text", log_level = "info";
  bool new_audit_log = false;
  app.add_option("--config", config_file, "site config (TOML)");
  app.add_option("--check-config", check_file, "validate a site config and exit");
  app.add_option("--log-format", log_format, "text | json")->check(CLI::IsMember({"text", "json"}));
  app.add_option("--log-level", log_level, "trace | debug | info | warn | error");
  app.add_flag("--new-audit-log", new_audit_log,
               "if the audit log's chain is broken, move it aside and start a new chain");

  auto* init = app.add_subcommand(
      "init-model", "write freshly initialized weights of a built-in architecture, or a TorchScript module's own");
  std::string init_arch, init_out, init_module;
  std::vector<uint32_t> init_hidden;
  int64_t in_features = 784, classes = 10;
  uint64_t seed = 0;
  init->add_option("--arch", init_arch, "mlp | cnn | torchscript")
      ->required()
      ->check(CLI::IsMember({"mlp", "cnn", "torchscript"}));
  auto* init_module_opt = init->add_option("--module", init_module, "torchscript: the module (torch.jit.save) file");
  auto* init_hidden_opt =
      init->add_option("--hidden", init_hidden, "mlp hidden sizes, e.g. --hidden 256 128")->delimiter(',');
  auto* in_features_opt = init->add_option("--in-features", in_features, "mlp input features (default 784)");
  auto* classes_opt = init->add_option("--classes", classes, "output classes (default 10)");
  auto* seed_opt = init->add_option("--seed", seed, "random seed (mlp, cnn: required)");
  init->add_option("-o,--output", init_out, "output .safetensors file")->required();

  auto* eval = app.add_subcommand("evaluate", "loss and accuracy of a model on a local IDX test set");
  std::string eval_arch, eval_model, images = hanse::site::kFashionTestImages,
                                     labels = hanse::site::kFashionTestLabels;
  std::vector<uint32_t> eval_hidden;
  int threads = 1;
  std::string eval_module;
  eval->add_option("--arch", eval_arch, "mlp | cnn | torchscript")
      ->required()
      ->check(CLI::IsMember({"mlp", "cnn", "torchscript"}));
  auto* eval_module_opt = eval->add_option("--module", eval_module, "torchscript: the module file the model is for");
  eval->add_option("--hidden", eval_hidden, "mlp hidden sizes")->delimiter(',');
  eval->add_option("--model", eval_model, "model .safetensors")->required();
  eval->add_option("--images", images, "IDX images (raw or .gz); default: Debian's Fashion-MNIST test set");
  eval->add_option("--labels", labels, "IDX labels (raw or .gz)");
  std::string eval_config, eval_dataset;
  auto* eval_config_opt = eval->add_option("--config", eval_config, "site config: evaluate on a dataset's test split");
  eval->add_option("--dataset", eval_dataset, "dataset name in --config")->needs(eval_config_opt);
  eval->add_option("--threads", threads, "intra-op threads")->check(CLI::Range(1, 1024));

  CLI11_PARSE(app, argc, argv);

  // Options that depend on --arch (CLI11 cannot say "required unless").
  auto usage_error = [](const std::string& what) {
    std::cerr << "hanse-worker: " << what << "\n";
    return 2;
  };
  if (init->parsed()) {
    if (init_arch == "torchscript") {
      if (init_module_opt->count() == 0) return usage_error("init-model --arch torchscript needs --module FILE");
      for (const auto* opt : {seed_opt, init_hidden_opt, in_features_opt, classes_opt}) {
        if (opt->count() > 0)
          return usage_error("init-model --arch torchscript: " + opt->get_name() +
                             " does not apply (the weights are the module's own parameters)");
      }
      return hanse::site::InitModuleCommand(init_module, init_out);
    }
    if (init_module_opt->count() > 0) return usage_error("init-model: --module applies only to --arch torchscript");
    if (seed_opt->count() == 0) return usage_error("init-model --arch " + init_arch + " needs --seed N");
    return hanse::site::InitModelCommand(init_arch, init_hidden, in_features, classes, seed, init_out);
  }
  if (eval->parsed()) {
    if (eval_arch == "torchscript" && eval_module_opt->count() == 0)
      return usage_error("evaluate --arch torchscript needs --module FILE");
    if (eval_arch != "torchscript" && eval_module_opt->count() > 0)
      return usage_error("evaluate: --module applies only to --arch torchscript");
    return hanse::site::EvaluateCommand(eval_arch, eval_hidden, eval_module, eval_model, images, labels, eval_config,
                                        eval_dataset, threads);
  }
  if (!check_file.empty()) return hanse::site::CheckConfig(check_file);
  if (config_file.empty()) {
    std::cerr << app.help() << "\nhanse-worker: --config FILE is required to run the daemon\n";
    return 2;
  }
  return hanse::site::RunDaemon(config_file, log_format, log_level, new_audit_log);
}
