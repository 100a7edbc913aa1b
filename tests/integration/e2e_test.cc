// End to end, as a user runs it: real keys from `hanse keygen`, a real
// hanse-coordinator and real hanse-worker processes over CURVE on 127.0.0.1,
// driven by the `hanse` CLI: an mlp job of 3 rounds on a subset of
// Fashion-MNIST, and a TorchScript job (module made by the example script)
// that one site's policy refuses.
#include <gtest/gtest.h>

#include "core/sha256.h"
#include "test_util.h"

namespace hanse {
namespace {

namespace fs = std::filesystem;
using hanse::testing::Bin;
using hanse::testing::CountOf;
using hanse::testing::ReadFile;
using hanse::testing::RunResult;
using hanse::testing::Split;
using hanse::testing::WriteFile;
using std::chrono::seconds;

// "accuracy 0.8123 loss 0.51 examples 10000" -> 0.8123
double ParseAccuracy(const std::string& out) {
  auto p = out.rfind("accuracy ");
  if (p == std::string::npos) return -1;
  return std::stod(out.substr(p + 9));
}

class EndToEnd : public ::testing::Test {
 protected:
  RunResult Run(std::vector<std::string> argv, seconds limit = seconds(60)) { return dir_.Run(argv, limit); }
  RunResult Hanse(std::vector<std::string> args, const std::string& config = "client.toml",
                  seconds limit = seconds(60)) {
    return dir_.Hanse(config, std::move(args), limit);
  }
  std::string Logs() { return dir_.LogTails({"coordinator", "paris", "lyon", "berlin"}, 3000); }

  void WriteConfigs(const std::string& endpoint) {
    WriteFile(dir_ / "coordinator.toml",
              hanse::testing::CoordinatorToml(endpoint, "coord", {{"paris", "lyon"}, {"alice"}, {"admin"}},
                                              "[rates]\ncpu_hour = 1.0\ngpu_hour = 2.0\ncurrency = \"EUR\"\n"));
    for (const auto& [site, share] : std::vector<std::pair<std::string, int>>{{"paris", 0}, {"lyon", 1}}) {
      WriteFile(dir_ / ("site-" + site + ".toml"),
                hanse::testing::SiteTomlHead(site, endpoint) + "audit_log = \"" + site + "/audit.log\"\nthreads = 1\n" +
                    hanse::testing::FashionMnistToml(3000, 1000) +
                    "[datasets.fashion-mnist.partition]\nkind = \"dirichlet\"\nalpha = 0.5\nseed = 7\n"
                    "num_shares = 2\nshare = " + std::to_string(share) + "\n"
                    "[policy]\nleads = [\"alice\"]\narchitectures = [\"mlp\"]\ndatasets = [\"fashion-mnist\"]\n"
                    "max_epochs = 5\n[policy.models]\ne2e-mlp = \"\"\n");
    }
    WriteFile(dir_ / "job.toml",
              "name = \"e2e\"\ninitial_model = \"models/e2e-mlp.safetensors\"\narchitecture = \"mlp\"\n"
              "hidden = [64]\ndataset = \"fashion-mnist\"\nrounds = 3\nmin_sites = 2\nsites = [\"paris\", \"lyon\"]\n"
              "round_deadline_s = 120\nmax_retries = 1\nevaluate = true\nseed = 3\n"
              "[strategy]\nrule = \"fedavg\"\n"
              "[training]\nepochs = 1\nbatch_size = 32\noptimizer = \"sgd\"\nlr = 0.05\nmomentum = 0.9\n");
    WriteFile(dir_ / "client.toml", hanse::testing::ClientToml(endpoint, "alice"));
    WriteFile(dir_ / "admin.toml", hanse::testing::ClientToml(endpoint, "admin"));
  }

  void TearDown() override {
    for (pid_t pid : hanse::testing::StopAll({&paris_, &lyon_, &berlin_, &coordinator_}, seconds(20))) {
      ADD_FAILURE() << "pid " << pid << " ignored SIGTERM for 20 s";
    }
  }

  // Commands run for up to 60 s by default, with their own XDG cache folder.
  hanse::testing::Deployment dir_{{.log_prefix = "run", .limit = seconds(60), .xdg_cache = true}};
  hanse::testing::Child coordinator_, paris_, lyon_, berlin_;
};

TEST_F(EndToEnd, ThreeRoundsOfFedAvgOverTwoSites) {
  for (const char* exe : {"hanse", "hanse-coordinator", "hanse-worker"}) {
    ASSERT_TRUE(fs::exists(Bin(exe))) << Bin(exe) << " is not built";
  }
  ASSERT_NO_FATAL_FAILURE(dir_.MakeKeys({"coordinator", "alice", "admin", "paris", "lyon"}));
  std::string endpoint = hanse::testing::LocalEndpoint();
  WriteConfigs(endpoint);
  fs::create_directories(dir_ / "models");
  auto init = Run({Bin("hanse-worker"), "init-model", "--arch", "mlp", "--hidden", "64", "--seed", "3", "-o",
                   (dir_ / "models" / "e2e-mlp.safetensors").string()});
  ASSERT_EQ(init.exit_code, 0) << init.output;

  coordinator_ = dir_.StartCoordinator();
  ASSERT_TRUE(dir_.WaitServing(coordinator_, "client.toml", seconds(30))) << Logs();
  paris_ = dir_.StartWorker("paris");
  lyon_ = dir_.StartWorker("lyon");
  ASSERT_TRUE(dir_.WaitSitesConnected("admin.toml", 2, seconds(90))) << Logs();

  // Submit and watch to the end.
  auto sub = Hanse({"submit", (dir_ / "job.toml").string()});
  ASSERT_EQ(sub.exit_code, 0) << sub.output << Logs();
  auto lines = Split(sub.output, '\n');
  ASSERT_FALSE(lines.empty());
  std::string job = lines.back();
  auto watch = Hanse({"watch", job, "--max-wait", "400"}, "client.toml", seconds(420));
  ASSERT_EQ(watch.exit_code, 0) << watch.output << Logs();
  EXPECT_NE(watch.output.find("round 3/3 committed"), std::string::npos) << watch.output;
  EXPECT_NE(watch.output.find("succeeded"), std::string::npos) << watch.output;

  // Accuracy rises: the final model beats the initial one on the 10,000 test images.
  auto fetch = Hanse({"fetch", job, "-o", (dir_ / "final.safetensors").string()});
  ASSERT_EQ(fetch.exit_code, 0) << fetch.output << Logs();
  auto fetch0 = Hanse({"fetch", job, "--round", "0", "-o", (dir_ / "initial.safetensors").string()});
  ASSERT_EQ(fetch0.exit_code, 0) << fetch0.output << Logs();
  EXPECT_EQ(ReadFile(dir_ / "initial.safetensors"), ReadFile(dir_ / "models" / "e2e-mlp.safetensors"))
      << "round 0 is the uploaded initial model, byte for byte";
  double acc[2];
  for (int i = 0; i < 2; ++i) {
    auto ev = Run({Bin("hanse-worker"), "evaluate", "--arch", "mlp", "--hidden", "64", "--model",
                   (dir_ / (i ? "final.safetensors" : "initial.safetensors")).string()},
                  seconds(120));
    ASSERT_EQ(ev.exit_code, 0) << ev.output;
    acc[i] = ParseAccuracy(ev.output);
  }
  EXPECT_GT(acc[1], acc[0] + 0.2) << "initial " << acc[0] << ", final " << acc[1];
  EXPECT_GT(acc[1], 0.6);

  // The report holds every round, and federated accuracy rises over the rounds.
  auto report = Hanse({"report", job, "-o", (dir_ / "report").string()});
  ASSERT_EQ(report.exit_code, 0) << report.output;
  EXPECT_TRUE(fs::exists(dir_ / "report" / "report.html"));
  EXPECT_NE(ReadFile(dir_ / "report" / "report.html").find("data:image/svg+xml;base64,"), std::string::npos);
  auto rounds = Split(ReadFile(dir_ / "report" / "rounds.csv"), '\n');
  ASSERT_EQ(rounds.size(), 4u) << ReadFile(dir_ / "report" / "rounds.csv");
  std::vector<double> round_acc;
  for (size_t i = 1; i < rounds.size(); ++i) {
    auto cells = Split(rounds[i], ',');
    ASSERT_GE(cells.size(), 7u) << rounds[i];
    EXPECT_EQ(cells[0], std::to_string(i));
    ASSERT_FALSE(cells[6].empty()) << "round " << i << " has no federated evaluation";
    round_acc.push_back(std::stod(cells[6]));
  }
  EXPECT_GT(round_acc.back(), round_acc.front()) << ReadFile(dir_ / "report" / "rounds.csv");
  auto site_rows = Split(ReadFile(dir_ / "report" / "sites.csv"), '\n');
  EXPECT_EQ(site_rows.size(), 1u + 3 * 2) << ReadFile(dir_ / "report" / "sites.csv");

  // The ledger has one row per task: the coordinator's task count for the job
  // equals the tasks the sites recorded in their own ledgers.
  auto usage = Hanse({"usage", "--by", "job", "--csv"}, "admin.toml");
  ASSERT_EQ(usage.exit_code, 0) << usage.output;
  uint64_t coordinator_tasks = 0;
  for (const auto& row : Split(usage.output, '\n')) {
    auto cells = Split(row, ',');
    if (cells.size() >= 2 && cells[0] == job) coordinator_tasks = std::stoull(cells[1]);
  }
  uint64_t site_tasks = 0;
  for (const char* site : {"paris", "lyon"}) {
    for (const auto& line : Split(ReadFile(dir_ / site / "ledger.jsonl"), '\n')) {
      if (line.find("\"" + job + "\"") != std::string::npos) ++site_tasks;
    }
  }
  EXPECT_GE(coordinator_tasks, 6u) << usage.output;
  EXPECT_EQ(coordinator_tasks, site_tasks) << usage.output;
  auto by_site = Hanse({"usage"}, "admin.toml");
  EXPECT_EQ(by_site.exit_code, 0) << by_site.output;
  EXPECT_NE(by_site.output.find("paris"), std::string::npos) << by_site.output;
  EXPECT_NE(by_site.output.find("lyon"), std::string::npos) << by_site.output;

  // Each site's audit log verifies.
  auto audit = Run({Bin("hanse"), "audit", "verify", (dir_ / "paris" / "audit.log").string(),
                    (dir_ / "lyon" / "audit.log").string()});
  EXPECT_EQ(audit.exit_code, 0) << audit.output;
  EXPECT_EQ(CountOf(audit.output, "audit ok"), 2u) << audit.output;
  auto show = Run({Bin("hanse"), "audit", "show", (dir_ / "paris" / "audit.log").string()});
  EXPECT_EQ(show.exit_code, 0) << show.output;
  EXPECT_NE(show.output.find(job), std::string::npos) << "the history names the job:\n" << show.output;

  // A tampered copy does not verify, and the message names the line.
  auto lines_of_log = Split(ReadFile(dir_ / "paris" / "audit.log"), '\n');
  ASSERT_GE(lines_of_log.size(), 3u);
  std::string& victim = lines_of_log[1];
  auto pos = victim.find("\"seq\":2");
  ASSERT_NE(pos, std::string::npos) << victim;
  victim.replace(pos, 7, "\"seq\":7");
  std::string tampered;
  for (const auto& l : lines_of_log) tampered += l + "\n";
  WriteFile(dir_ / "tampered.log", tampered);
  auto bad = Run({Bin("hanse"), "audit", "verify", (dir_ / "tampered.log").string()});
  EXPECT_EQ(bad.exit_code, 4) << bad.output;
  EXPECT_NE(bad.output.find("tampered.log:2"), std::string::npos) << bad.output;
}

// A TorchScript job as a lead runs it (README "TorchScript models"): the module
// from examples/torchscript/make_module.py, its own parameters as the initial
// model (init-model --module), 2 rounds of FedAvg. paris and lyon list the
// module's hash in policy.torchscript_hashes and train; berlin allows
// torchscript but not this module, and refuses every task with a policy reason.
TEST_F(EndToEnd, TorchScriptJobRunsWhereThePolicyListsTheModule) {
  for (const char* exe : {"hanse", "hanse-coordinator", "hanse-worker"}) {
    ASSERT_TRUE(fs::exists(Bin(exe))) << Bin(exe) << " is not built";
  }
  const fs::path script = hanse::testing::SourceDir() / "examples" / "torchscript" / "make_module.py";
  ASSERT_TRUE(fs::exists(script)) << script;
  // The module, as a lead makes it (python3-torch; importing torch takes a while on a busy machine).
  fs::create_directories(dir_ / "models");
  const fs::path module = dir_ / "models" / "net.pt";
  auto made = Run({"/usr/bin/python3", script.string(), module.string()}, seconds(180));
  if (made.exit_code != 0 && made.output.find("No module named 'torch'") != std::string::npos) {
    GTEST_SKIP() << "python3-torch is not installed: " << made.output;
  }
  ASSERT_EQ(made.exit_code, 0) << made.output;
  const std::string module_hash = Sha256Hex(ReadFile(module));
  auto init = Run({Bin("hanse-worker"), "init-model", "--arch", "torchscript", "--module", module.string(), "-o",
                   (dir_ / "models" / "e2e-ts.safetensors").string()});
  ASSERT_EQ(init.exit_code, 0) << init.output;
  EXPECT_NE(init.output.find("sha256 " + module_hash), std::string::npos) << "init-model prints the module's hash\n"
                                                                          << init.output;

  ASSERT_NO_FATAL_FAILURE(dir_.MakeKeys({"coordinator", "alice", "admin", "paris", "lyon", "berlin"}));
  const std::string endpoint = hanse::testing::LocalEndpoint();
  WriteFile(dir_ / "coordinator.toml",
            hanse::testing::CoordinatorToml(endpoint, "coord", {{"paris", "lyon", "berlin"}, {"alice"}, {"admin"}}));
  const std::string other_hash(64, '0');  // berlin allows some other module only
  for (const auto& [site, share, hash] : std::vector<std::tuple<std::string, int, std::string>>{
           {"paris", 0, module_hash}, {"lyon", 1, module_hash}, {"berlin", 0, other_hash}}) {
    WriteFile(dir_ / ("site-" + site + ".toml"),
              hanse::testing::SiteTomlHead(site, endpoint) + "threads = 1\n" +
                  hanse::testing::FashionMnistToml(3000, 1000) +
                  "[datasets.fashion-mnist.partition]\nkind = \"dirichlet\"\nalpha = 5.0\nseed = 7\n"
                  "num_shares = 2\nshare = " + std::to_string(share) + "\n"
                  "[policy]\nleads = [\"alice\"]\narchitectures = [\"torchscript\"]\n"
                  "torchscript_hashes = [\"" + hash + "\"]\ndatasets = [\"fashion-mnist\"]\nmax_epochs = 5\n"
                  "[policy.models]\ne2e-ts = \"\"\n");
  }
  WriteFile(dir_ / "job.toml",
            "name = \"e2e-ts\"\ninitial_model = \"models/e2e-ts.safetensors\"\narchitecture = \"torchscript\"\n"
            "torchscript_module = \"models/net.pt\"\ndataset = \"fashion-mnist\"\nrounds = 2\nmin_sites = 2\n"
            "sites = [\"paris\", \"lyon\", \"berlin\"]\nround_deadline_s = 120\nmax_retries = 1\nevaluate = true\n"
            "seed = 5\n[strategy]\nrule = \"fedavg\"\n"
            "[training]\nepochs = 1\nbatch_size = 32\noptimizer = \"sgd\"\nlr = 0.05\nmomentum = 0.9\n");
  WriteFile(dir_ / "client.toml", hanse::testing::ClientToml(endpoint, "alice"));
  WriteFile(dir_ / "admin.toml", hanse::testing::ClientToml(endpoint, "admin"));

  coordinator_ = dir_.StartCoordinator();
  ASSERT_TRUE(dir_.WaitServing(coordinator_, "client.toml", seconds(30))) << Logs();
  paris_ = dir_.StartWorker("paris");
  lyon_ = dir_.StartWorker("lyon");
  berlin_ = dir_.StartWorker("berlin");
  // Each worker loads LibTorch and Fashion-MNIST first: seconds on an idle machine,
  // over a minute each on a 2-core machine shared with builds.
  ASSERT_TRUE(dir_.WaitSitesConnected("admin.toml", 3, seconds(180))) << Logs();

  auto sub = Hanse({"submit", (dir_ / "job.toml").string()});
  ASSERT_EQ(sub.exit_code, 0) << sub.output << Logs();
  auto lines = Split(sub.output, '\n');
  ASSERT_FALSE(lines.empty());
  const std::string job = lines.back();
  auto watch = Hanse({"watch", job, "--max-wait", "240"}, "client.toml", seconds(260));
  ASSERT_EQ(watch.exit_code, 0) << watch.output << Logs();
  EXPECT_NE(watch.output.find("round 2/2 committed"), std::string::npos) << watch.output;
  EXPECT_NE(watch.output.find("succeeded"), std::string::npos) << watch.output;

  // berlin refused with the policy's reason, naming the module; the others trained.
  auto status = Hanse({"status", job});
  ASSERT_EQ(status.exit_code, 0) << status.output;
  bool berlin_refused = false;
  for (const auto& row : Split(status.output, '\n')) {
    if (row.rfind("berlin", 0) == 0) {
      berlin_refused = row.find("refused") != std::string::npos &&
                       row.find("policy_architecture") != std::string::npos &&
                       row.find("is not in policy.torchscript_hashes") != std::string::npos;
    }
  }
  EXPECT_TRUE(berlin_refused) << status.output;
  const std::string coordinator_log = ReadFile(dir_ / "coordinator.log");
  EXPECT_NE(coordinator_log.find("site berlin refused task"), std::string::npos) << Logs();
  EXPECT_NE(coordinator_log.find(module_hash + " is not in policy.torchscript_hashes"), std::string::npos) << Logs();
  const std::string berlin_log = ReadFile(dir_ / "berlin.log");
  EXPECT_NE(berlin_log.find("refused task"), std::string::npos) << berlin_log;
  EXPECT_EQ(berlin_log.find("accepted "), std::string::npos) << "berlin ran nothing\n" << berlin_log;
  for (const char* site : {"paris", "lyon"}) {
    EXPECT_EQ(ReadFile(dir_ / (std::string(site) + ".log")).find("refused task"), std::string::npos) << Logs();
  }

  // The final model, loaded into the module, classifies well above chance; the
  // initial weights (the module's own) do not.
  auto fetch = Hanse({"fetch", job, "-o", (dir_ / "final.safetensors").string()});
  ASSERT_EQ(fetch.exit_code, 0) << fetch.output << Logs();
  double acc[2];
  for (int i = 0; i < 2; ++i) {
    auto ev = Run({Bin("hanse-worker"), "evaluate", "--arch", "torchscript", "--module", module.string(), "--model",
                   (i ? dir_ / "final.safetensors" : dir_ / "models" / "e2e-ts.safetensors").string()},
                  seconds(120));
    ASSERT_EQ(ev.exit_code, 0) << ev.output;
    acc[i] = ParseAccuracy(ev.output);
  }
  EXPECT_LT(acc[0], 0.3) << "initial " << acc[0];
  EXPECT_GT(acc[1], 0.5) << "initial " << acc[0] << ", final " << acc[1];
}

}  // namespace
}  // namespace hanse
