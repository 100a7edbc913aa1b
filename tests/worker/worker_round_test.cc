// A real hanse-worker against a real hanse-coordinator (CURVE on 127.0.0.1),
// driven by the hanse CLI: one round served and recorded, a policy refusal the
// lead sees, and the coordinator killed mid-task then restarted.
#include <signal.h>

#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "test_util.h"
#include "worker/audit_log.h"

namespace hanse::site {
namespace {

namespace fs = std::filesystem;
using hanse::testing::Child;
using hanse::testing::ReadFile;
using hanse::testing::RunResult;
using hanse::testing::TempDir;
using hanse::testing::WaitFor;
using hanse::testing::WriteFile;
using std::chrono::seconds;

const std::string kFashion = "/usr/share/datasets/fashion-mnist/";

std::string Bin(const std::string& name) { return (hanse::testing::BinDir() / name).string(); }

std::vector<std::string> Lines(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string line;
  while (std::getline(ss, line)) out.push_back(line);
  return out;
}

size_t Count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) ++n;
  return n;
}

class WorkerRound : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* exe : {"hanse", "hanse-coordinator", "hanse-worker"}) {
      ASSERT_TRUE(fs::exists(Bin(exe))) << Bin(exe) << " is not built";
    }
    for (const char* name : {"coordinator", "alice", "bob", "admin", "paris"}) {
      auto r = RunCmd({Bin("hanse"), "keygen", name, "--out", (dir_ / "keys").string()});
      ASSERT_EQ(r.exit_code, 0) << r.output;
    }
    endpoint_ = "tcp://127.0.0.1:" + std::to_string(hanse::testing::FreePort());
    WriteFile(dir_ / "coordinator.toml",
              "listen = \"" + endpoint_ + "\"\nkey = \"keys/coordinator.key\"\ndata_dir = \"coord\"\n"
              "[[site]]\nname = \"paris\"\npublic_key = \"keys/paris.pub\"\n"
              "[[lead]]\nname = \"alice\"\npublic_key = \"keys/alice.pub\"\n"
              "[[lead]]\nname = \"bob\"\npublic_key = \"keys/bob.pub\"\n"
              "[[admin]]\nname = \"admin\"\npublic_key = \"keys/admin.pub\"\n");
    WriteFile(dir_ / "site-paris.toml",
              "name = \"paris\"\ncoordinator = \"" + endpoint_ +
                  "\"\ncoordinator_public_key = \"keys/coordinator.pub\"\nkey = \"keys/paris.key\"\n"
                  "data_dir = \"paris\"\nthreads = 1\n"
                  "[datasets.fashion-mnist]\nformat = \"idx\"\n"
                  "train_images = \"" + kFashion + "train-images-idx3-ubyte.gz\"\n"
                  "train_labels = \"" + kFashion + "train-labels-idx1-ubyte.gz\"\n"
                  "test_images = \"" + kFashion + "t10k-images-idx3-ubyte.gz\"\n"
                  "test_labels = \"" + kFashion + "t10k-labels-idx1-ubyte.gz\"\n"
                  "max_train_examples = 2000\nmax_test_examples = 500\n"
                  "[policy]\nleads = [\"alice\"]\narchitectures = [\"mlp\"]\nmax_epochs = 3\n"
                  "[policy.models]\nround-mlp = \"\"\n");
    for (const char* who : {"alice", "bob", "admin"}) {
      WriteFile(dir_ / (std::string(who) + ".toml"), "coordinator = \"" + endpoint_ +
                                                         "\"\ncoordinator_public_key = \"keys/coordinator.pub\"\n"
                                                         "key = \"keys/" + who + ".key\"\n");
    }
    auto init = RunCmd({Bin("hanse-worker"), "init-model", "--arch", "mlp", "--hidden", "32", "--seed", "5", "-o",
                        (dir_ / "models" / "round-mlp.safetensors").string()});
    ASSERT_EQ(init.exit_code, 0) << init.output;
  }

  void TearDown() override {
    for (auto* c : {&worker_, &coordinator_}) c->Signal(SIGTERM);
    for (auto* c : {&worker_, &coordinator_}) {
      if (c->pid() > 0 && !c->Wait(seconds(20))) ADD_FAILURE() << "pid " << c->pid() << " ignored SIGTERM";
    }
  }

  RunResult RunCmd(const std::vector<std::string>& argv, seconds limit = seconds(120)) {
    return hanse::testing::Run(argv, dir_ / ("run-" + std::to_string(++runs_) + ".log"), limit);
  }
  RunResult Hanse(std::vector<std::string> args, const std::string& who = "alice", seconds limit = seconds(120)) {
    args.insert(args.begin(), {Bin("hanse"), "--config", (dir_ / (who + ".toml")).string()});
    return RunCmd(args, limit);
  }
  std::string Logs() {
    std::string out;
    for (const char* n : {"coordinator", "paris"}) {
      std::string text = ReadFile(dir_ / (std::string(n) + ".log"));
      if (text.size() > 4000) text = text.substr(text.size() - 4000);
      out += std::string("---- ") + n + ".log (tail)\n" + text + "\n";
    }
    return out;
  }

  void StartCoordinator() {
    coordinator_ = Child::Start({Bin("hanse-coordinator"), "--config", (dir_ / "coordinator.toml").string()},
                                dir_ / "coordinator.log");
    ASSERT_TRUE(WaitFor([&] { return coordinator_.Running() && Hanse({"--connect-timeout", "1", "jobs"}).exit_code == 0; },
                        seconds(60)))
        << Logs();
  }
  void StartWorker() {
    worker_ = Child::Start({Bin("hanse-worker"), "--config", (dir_ / "site-paris.toml").string()}, dir_ / "paris.log",
                           {"OMP_NUM_THREADS=1"});
    ASSERT_TRUE(WaitFor([&] { return Count(Hanse({"sites"}, "admin").output, " connected ") == 1; }, seconds(120)))
        << Logs();
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
    auto lines = Lines(sub.output);
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

  TempDir dir_;
  std::string endpoint_;
  int runs_ = 0;
  Child coordinator_, worker_;
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
  EXPECT_EQ(Count(ReadFile(dir_ / "paris" / "ledger.jsonl"), "\"" + job + "\""), 2u);
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
  ASSERT_TRUE(WaitFor([&] { return Count(ReadFile(dir_ / "paris" / "audit.log"), "\"event\":\"task\"") >= 1; },
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
