// A real hanse-worker against a real hanse-coordinator (CURVE on 127.0.0.1),
// driven by the hanse CLI: one round served and recorded, a policy refusal the
// lead sees, and the coordinator killed mid-task then restarted.
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "test_util.h"
#include "worker/audit_log.h"

namespace hanse::site {
namespace {

namespace fs = std::filesystem;
using hanse::testing::Bin;
using hanse::testing::CountOf;
using hanse::testing::ReadFile;
using hanse::testing::RunResult;
using hanse::testing::WaitFor;
using hanse::testing::WriteFile;
using std::chrono::seconds;

class WorkerRound : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* exe : {"hanse", "hanse-coordinator", "hanse-worker"}) {
      ASSERT_TRUE(fs::exists(Bin(exe))) << Bin(exe) << " is not built";
    }
    ASSERT_NO_FATAL_FAILURE(dir_.MakeKeys({"coordinator", "alice", "bob", "admin", "paris"}));
    endpoint_ = hanse::testing::LocalEndpoint();
    WriteFile(dir_ / "coordinator.toml",
              hanse::testing::CoordinatorToml(endpoint_, "coord", {{"paris"}, {"alice", "bob"}, {"admin"}}));
    WriteFile(dir_ / "site-paris.toml",
              hanse::testing::SiteTomlHead("paris", endpoint_) + "threads = 1\n" +
                  hanse::testing::FashionMnistToml(2000, 500) +
                  "[policy]\nleads = [\"alice\"]\narchitectures = [\"mlp\"]\nmax_epochs = 3\n"
                  "[policy.models]\nround-mlp = \"\"\n");
    for (const char* who : {"alice", "bob", "admin"}) {
      WriteFile(dir_ / (std::string(who) + ".toml"), hanse::testing::ClientToml(endpoint_, who));
    }
    auto init = RunCmd({Bin("hanse-worker"), "init-model", "--arch", "mlp", "--hidden", "32", "--seed", "5", "-o",
                        (dir_ / "models" / "round-mlp.safetensors").string()});
    ASSERT_EQ(init.exit_code, 0) << init.output;
  }

  void TearDown() override {
    for (pid_t pid : hanse::testing::StopAll({&worker_, &coordinator_}, seconds(20))) {
      ADD_FAILURE() << "pid " << pid << " ignored SIGTERM";
    }
  }

  RunResult RunCmd(const std::vector<std::string>& argv, seconds limit = seconds(120)) { return dir_.Run(argv, limit); }
  RunResult Hanse(std::vector<std::string> args, const std::string& who = "alice", seconds limit = seconds(120)) {
    return dir_.Hanse(who + ".toml", std::move(args), limit);
  }
  std::string Logs() { return dir_.LogTails({"coordinator", "paris"}, 4000); }

  void StartCoordinator() {
    coordinator_ = dir_.StartCoordinator();
    ASSERT_TRUE(dir_.WaitServing(coordinator_, "alice.toml", seconds(60))) << Logs();
  }
  void StartWorker() {
    worker_ = dir_.StartWorker("paris");
    ASSERT_TRUE(dir_.WaitSitesConnected("admin.toml", 1, seconds(120))) << Logs();
  }

  // Submits a job; returns its id.
  std::string Submit(const std::string& lead, uint32_t rounds, uint32_t epochs) {
    fs::path job = dir_ / ("job-" + lead + ".toml");
    WriteFile(job, "name = \"round-" + lead + "\"\ninitial_model = \"models/round-mlp.safetensors\"\n"
                   "architecture = \"mlp\"\nhidden = [32]\ndataset = \"fashion-mnist\"\nrounds = " +
                       std::to_string(rounds) +
                       "\nmin_sites = 1\nsites = [\"paris\"]\nround_deadline_s = 120\nmax_retries = 0\n"
                       "evaluate = true\nseed = 1\n[strategy]\nrule = \"fedavg\"\n"
                       "[training]\nepochs = " + std::to_string(epochs) + "\nbatch_size = 32\nlr = 0.05\n");
    auto sub = Hanse({"submit", job.string()}, lead);
    EXPECT_EQ(sub.exit_code, 0) << sub.output << Logs();
    auto lines = hanse::testing::Split(sub.output);
    return lines.empty() ? "" : lines.back();
  }

  std::vector<AuditEntry> Audit() {
    auto n = VerifyAuditLog(dir_ / "paris" / "audit.log");
    EXPECT_TRUE(n.ok()) << n.status().ToString();
    auto entries = ReadAuditLog(dir_ / "paris" / "audit.log");
    return entries.ok() ? *entries : std::vector<AuditEntry>{};
  }
  static size_t Events(const std::vector<AuditEntry>& entries, const std::string& event, const std::string& job) {
    size_t n = 0;
    for (const auto& e : entries) {
      if (e.event == event && e.line.find("\"job\":\"" + job + "\"") != std::string::npos) ++n;
    }
    return n;
  }

  // Commands run for up to 120 s by default, their output in run-N.log.
  hanse::testing::Deployment dir_{{.log_prefix = "run", .limit = seconds(120)}};
  std::string endpoint_;
  hanse::testing::Child coordinator_, worker_;
};

TEST_F(WorkerRound, ServesARoundAndRecordsItInAuditLogAndLedger) {
  StartCoordinator();
  StartWorker();
  std::string job = Submit("alice", 1, 1);
  ASSERT_FALSE(job.empty());
  auto watch = Hanse({"watch", job, "--max-wait", "300"}, "alice", seconds(320));
  ASSERT_EQ(watch.exit_code, 0) << watch.output << Logs();
  EXPECT_NE(watch.output.find("succeeded"), std::string::npos) << watch.output;

  auto status = Hanse({"status", job});
  EXPECT_NE(status.output.find("paris"), std::string::npos) << status.output;
  auto entries = Audit();
  EXPECT_EQ(Events(entries, "task", job), 2u) << "a train and an evaluate task";
  EXPECT_EQ(Events(entries, "update_sent", job), 1u);
  EXPECT_EQ(Events(entries, "evaluation", job), 1u);
  EXPECT_EQ(Events(entries, "result_acked", job), 2u);
  // The update sent is the one named in the audit log; the ledger counts both tasks.
  EXPECT_EQ(CountOf(ReadFile(dir_ / "paris" / "ledger.jsonl"), "\"" + job + "\""), 2u);
  auto show = RunCmd({Bin("hanse"), "audit", "show", (dir_ / "paris" / "audit.log").string()});
  EXPECT_EQ(show.exit_code, 0) << show.output;
  EXPECT_NE(show.output.find("update_sent"), std::string::npos) << show.output;
}

TEST_F(WorkerRound, PolicyRefusalReachesTheLeadWithItsReason) {
  StartCoordinator();
  StartWorker();
  std::string job = Submit("bob", 1, 1);
  ASSERT_FALSE(job.empty());
  auto watch = Hanse({"watch", job, "--max-wait", "200"}, "bob", seconds(220));
  EXPECT_NE(watch.exit_code, 0) << "the only site refused: the job cannot succeed\n" << watch.output << Logs();
  auto status = Hanse({"status", job}, "bob");
  EXPECT_NE(status.output.find("policy_lead"), std::string::npos) << status.output << Logs();
  auto entries = Audit();
  ASSERT_GE(Events(entries, "refusal", job), 1u);
  for (const auto& e : entries) {
    if (e.event == "refusal") {
      EXPECT_NE(e.line.find("\"reason\":\"policy_lead\""), std::string::npos) << e.line;
    }
  }
  EXPECT_EQ(Events(entries, "update_sent", job), 0u);
}

TEST_F(WorkerRound, CoordinatorKilledMidTaskLosesNothing) {
  StartCoordinator();
  StartWorker();
  std::string job = Submit("alice", 2, 3);
  ASSERT_FALSE(job.empty());
  // As soon as the site has accepted its first task, the coordinator dies.
  // (Read without verifying: the worker may be halfway through appending a line.)
  ASSERT_TRUE(WaitFor([&] { return CountOf(ReadFile(dir_ / "paris" / "audit.log"), "\"event\":\"task\"") >= 1; },
                      seconds(120)))
      << Logs();
  coordinator_.Signal(SIGKILL);
  ASSERT_TRUE(coordinator_.Wait(seconds(20)).has_value());
  StartCoordinator();
  auto watch = Hanse({"watch", job, "--max-wait", "400"}, "alice", seconds(420));
  ASSERT_EQ(watch.exit_code, 0) << watch.output << Logs();
  EXPECT_NE(watch.output.find("succeeded"), std::string::npos) << watch.output;
  EXPECT_TRUE(worker_.Running()) << "the worker rode out the coordinator's restart";
  auto entries = Audit();
  EXPECT_GE(Events(entries, "update_sent", job), 2u) << "both rounds trained";
  auto status = Hanse({"status", job});
  EXPECT_NE(status.output.find("2/2 committed"), std::string::npos) << status.output;
}

}  // namespace
}  // namespace hanse::site
