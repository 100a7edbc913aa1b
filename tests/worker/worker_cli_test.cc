// hanse-worker as a process: --check-config, init-model, evaluate, refusing a
// broken audit log, clean stop on SIGTERM. Needs the LibTorch build.
#include <signal.h>

#include <regex>
#include <string>

#include <gtest/gtest.h>

#include "core/keys.h"
#include "test_util.h"
#include "worker/audit_log.h"

namespace hanse::site {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using hanse::testing::Child;
using hanse::testing::ReadFile;
using hanse::testing::RunResult;
// A wrapper, not `using ...Run`: that would clash with testing::Test::Run in fixtures.
RunResult RunCmd(const std::vector<std::string>& argv, const fs::path& log,
                 std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  return hanse::testing::Run(argv, log, timeout);
}
using hanse::testing::TempDir;
using hanse::testing::WaitFor;
using hanse::testing::WriteFile;

std::string Worker() { return (hanse::testing::BinDir() / "hanse-worker").string(); }

std::string BigEndian32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8), static_cast<char>(v)};
}

// Writes `n` 28x28 images and labels as raw IDX files.
void WriteTinyIdx(const fs::path& images, const fs::path& labels, uint32_t n) {
  std::string img = BigEndian32(0x803) + BigEndian32(n) + BigEndian32(28) + BigEndian32(28);
  std::string lab = BigEndian32(0x801) + BigEndian32(n);
  for (uint32_t i = 0; i < n; ++i) {
    for (int p = 0; p < 28 * 28; ++p) img.push_back(static_cast<char>((p * 7 + i * 13) % 256));
    lab.push_back(static_cast<char>(i % 10));
  }
  WriteFile(images, img);
  WriteFile(labels, lab);
}

class WorkerCli : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK(WriteKeyPair("paris", dir_.path()).status());
    ASSERT_OK(WriteKeyPair("coordinator", dir_.path()).status());
    WriteTinyIdx(dir_ / "img.idx", dir_ / "lab.idx", 16);
  }

  fs::path WriteSite(const std::string& extra_policy = "", int port = 1) {
    std::string text =
        "name = \"paris\"\n"
        "coordinator = \"tcp://127.0.0.1:" + std::to_string(port) + "\"\n"
        "coordinator_public_key = \"coordinator.pub\"\n"
        "key = \"paris.key\"\n"
        "data_dir = \"data\"\n"
        "[datasets.tiny]\n"
        "format = \"idx\"\n"
        "train_images = \"img.idx\"\n"
        "train_labels = \"lab.idx\"\n"
        "test_fraction = 0.25\n"
        "[policy]\n"
        "leads = [\"alice\"]\n" + extra_policy;
    fs::path p = dir_ / "site.toml";
    WriteFile(p, text);
    return p;
  }

  TempDir dir_;
};

TEST_F(WorkerCli, CheckConfigAcceptsAValidSiteFile) {
  auto r = RunCmd({Worker(), "--check-config", WriteSite().string()}, dir_ / "out.log");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("ok:"), std::string::npos) << r.output;
}

TEST_F(WorkerCli, CheckConfigNamesFileLineAndKey) {
  auto r = RunCmd({Worker(), "--check-config", WriteSite("max_epochs = \"ten\"\n").string()}, dir_ / "out.log");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("site.toml:13:"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("max_epochs"), std::string::npos) << r.output;

  r = RunCmd({Worker(), "--check-config", WriteSite("timezone = \"Mars/Base\"\n").string()}, dir_ / "out.log");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("Mars/Base"), std::string::npos) << r.output;
}

TEST_F(WorkerCli, InitModelIsSeededAndEvaluatePrintsAccuracyAndLoss) {
  auto a = dir_ / "a.safetensors", b = dir_ / "b.safetensors", c = dir_ / "c.safetensors";
  ASSERT_EQ(RunCmd({Worker(), "init-model", "--arch", "cnn", "--seed", "3", "-o", a.string()}, dir_ / "o").exit_code, 0);
  ASSERT_EQ(RunCmd({Worker(), "init-model", "--arch", "cnn", "--seed", "3", "-o", b.string()}, dir_ / "o").exit_code, 0);
  ASSERT_EQ(RunCmd({Worker(), "init-model", "--arch", "cnn", "--seed", "4", "-o", c.string()}, dir_ / "o").exit_code, 0);
  EXPECT_EQ(ReadFile(a), ReadFile(b)) << "same seed, same weights";
  EXPECT_NE(ReadFile(a), ReadFile(c));

  auto r = RunCmd({Worker(), "evaluate", "--arch", "cnn", "--model", a.string(), "--images", (dir_ / "img.idx").string(),
                "--labels", (dir_ / "lab.idx").string()},
               dir_ / "eval.log", 120s);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(std::regex_search(r.output, std::regex(R"(accuracy [01]\.\d{4} loss \d+\.\d{4} examples 16)")))
      << r.output;
}

TEST_F(WorkerCli, EvaluateRefusesAModelOfAnotherArchitectureNamingTheTensor) {
  auto m = dir_ / "mlp.safetensors";
  ASSERT_EQ(RunCmd({Worker(), "init-model", "--arch", "mlp", "--hidden", "32", "--seed", "1", "-o", m.string()}, dir_ / "o")
                .exit_code,
            0);
  auto r = RunCmd({Worker(), "evaluate", "--arch", "cnn", "--model", m.string(), "--images", (dir_ / "img.idx").string(),
                "--labels", (dir_ / "lab.idx").string()},
               dir_ / "eval.log", 120s);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("conv1.weight"), std::string::npos) << r.output;
}

TEST_F(WorkerCli, RefusesToStartOnABrokenAuditLogUnlessToldToStartANewChain) {
  auto site = WriteSite("", hanse::testing::FreePort());
  fs::path audit = dir_ / "data/audit.log";
  {
    auto log = AuditLog::Open(audit, false, nullptr);
    ASSERT_OK(log.status());
    AuditRecord r;
    r.event = "task";
    r.lead = "alice";
    ASSERT_OK((*log)->Append(r).status());
    ASSERT_OK((*log)->Append(r).status());
  }
  std::string text = ReadFile(audit);
  text.replace(text.find("alice"), 5, "mal!!");
  WriteFile(audit, text);

  auto r = RunCmd({Worker(), "--config", site.string()}, dir_ / "run.log", 60s);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("audit.log:1:"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--new-audit-log"), std::string::npos) << r.output;

  // With --new-audit-log it starts (no coordinator is listening: it keeps
  // trying) and stops cleanly on SIGTERM.
  Child c = Child::Start({Worker(), "--config", site.string(), "--new-audit-log"}, dir_ / "run2.log");
  ASSERT_TRUE(WaitFor([&] { return ReadFile(audit).find("\"event\":\"start\"") != std::string::npos &&
                                   ReadFile(audit).find("connecting") != std::string::npos; },
                      60s))
      << c.Log();
  c.Signal(SIGTERM);
  auto code = c.WaitExitCode(30s);
  ASSERT_TRUE(code.has_value()) << "did not stop on SIGTERM";
  EXPECT_EQ(*code, 0) << c.Log();
  auto n = VerifyAuditLog(audit);
  ASSERT_OK(n.status());
  EXPECT_EQ(*n, 3u) << "start (new chain), start (daemon), stop";
}

}  // namespace
}  // namespace hanse::site
