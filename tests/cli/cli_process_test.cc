// The `hanse` binary as users run it: exit codes, messages in plain words, no
// hangs. Wrong endpoint / wrong keys / bad job files need no coordinator (an
// in-process CURVE server stands in where a handshake is needed); unknown job and
// watch on a failing job run against a real hanse-coordinator when it is built.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "core/keys.h"
#include "protocol/transport.h"
#include "test_net.h"
#include "test_util.h"

namespace hanse::cli {
namespace {

namespace fs = std::filesystem;
using hanse::testing::ClientToml;
using hanse::testing::LocalEndpoint;
using hanse::testing::ReadFile;
using hanse::testing::RunResult;
using hanse::testing::WriteFile;
using std::chrono::seconds;

// A test's folder: hanse runs in it with its own XDG config and cache folders,
// its output in hanse-N.log, never longer than 30 s unless told.
struct CliDir : hanse::testing::Deployment {
  CliDir() : Deployment({.log_prefix = "hanse", .limit = seconds(30), .xdg_cache = true, .xdg_config = true}) {}
};

// Runs hanse with `args`; never longer than `limit` (the child is killed: exit_code -1).
RunResult H(CliDir& dir, std::vector<std::string> args, seconds limit = seconds(30)) {
  args.insert(args.begin(), hanse::testing::Bin("hanse"));
  return dir.Run(args, limit);
}

// A model file in the safetensors layout: mlp 784-8-10, every value `value`.
void WriteTinyMlp(const fs::path& p, float value = 0.0f) {
  struct T { const char* name; std::vector<int> shape; };
  std::vector<T> ts = {{"fc1.bias", {8}}, {"fc1.weight", {8, 784}}, {"fc2.bias", {10}}, {"fc2.weight", {10, 8}}};
  std::string header = "{";
  size_t off = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    size_t n = 1;
    std::string shape;
    for (size_t k = 0; k < ts[i].shape.size(); ++k) {
      n *= static_cast<size_t>(ts[i].shape[k]);
      if (k) shape += ',';
      shape += std::to_string(ts[i].shape[k]);
    }
    if (i) header += ",";
    header += '"';
    header += ts[i].name;
    header += "\":{\"dtype\":\"F32\",\"shape\":[";
    header += shape;
    header += "],\"data_offsets\":[";
    header += std::to_string(off);
    header += ',';
    header += std::to_string(off + 4 * n);
    header += "]}";
    off += 4 * n;
  }
  header += "}";
  while ((8 + header.size()) % 8) header += ' ';
  std::string file(8, '\0');
  uint64_t len = header.size();
  std::memcpy(file.data(), &len, 8);  // little-endian host
  file += header;
  size_t data_start = file.size();
  file += std::string(off, '\0');
  for (size_t i = 0; i < off / 4; ++i) std::memcpy(file.data() + data_start + 4 * i, &value, 4);
  WriteFile(p, file);
}

// Every float in the data section of a safetensors file written as above.
std::vector<float> ReadFloats(const fs::path& p) {
  std::string file = ReadFile(p);
  if (file.size() < 8) return {};
  uint64_t len = 0;
  std::memcpy(&len, file.data(), 8);
  std::vector<float> out((file.size() - 8 - len) / 4);
  std::memcpy(out.data(), file.data() + 8 + len, out.size() * 4);
  return out;
}

void WriteJob(const fs::path& p, const std::string& extra_top = "", const std::string& extra_training = "") {
  WriteTinyMlp(p.parent_path() / "models" / "tiny-mlp.safetensors");
  WriteFile(p, "name = \"cli-test\"\n"
               "initial_model = \"models/tiny-mlp.safetensors\"\n"
               "architecture = \"mlp\"\n"
               "hidden = [8]\n"
               "dataset = \"fashion-mnist\"\n"
               "rounds = 2\n"
               "min_sites = 1\n"
               "sites = [\"paris\"]\n"
               "round_deadline_s = 1\n"
               "max_retries = 0\n" +
                   extra_top +
                   "[strategy]\nrule = \"fedavg\"\n"
                   "[training]\nepochs = 1\n" +
                   extra_training);
}

// ---------------------------------------------------------------- no server ----

TEST(HanseCli, HelpListsCommandsAndExitCodes) {
  CliDir dir;
  auto r = H(dir, {"--help"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  for (const char* word : {"keygen", "submit", "jobs", "status", "watch", "cancel", "fetch", "report", "usage",
                           "sites", "audit", "aggregate", "Exit codes", "3  the coordinator cannot be reached"}) {
    EXPECT_NE(r.output.find(word), std::string::npos) << word << "\n" << r.output;
  }
  for (const char* cmd : {"keygen", "submit", "jobs", "status", "watch", "cancel", "fetch", "report", "usage", "sites",
                          "audit", "aggregate"}) {
    auto sub = H(dir, {cmd, "--help"});
    EXPECT_EQ(sub.exit_code, 0) << cmd << ": " << sub.output;
  }
}

TEST(HanseCli, UnknownCommandOrMissingArgumentIsExitOne) {
  CliDir dir;
  EXPECT_EQ(H(dir, {"frobnicate"}).exit_code, 1);
  EXPECT_EQ(H(dir, {}).exit_code, 1);
  auto r = H(dir, {"fetch", "j1"});  // no -o
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("output"), std::string::npos) << r.output;
  auto w = H(dir, {"aggregate", "--weights", "1,x", "a.safetensors", "-o", "out.safetensors"});
  EXPECT_EQ(w.exit_code, 1) << w.output;
  EXPECT_NE(w.output.find("'x'"), std::string::npos) << w.output;
}

TEST(HanseCli, KeygenWritesAPrivateKeyAndRefusesToOverwrite) {
  CliDir dir;
  auto r = H(dir, {"keygen", "--name", "paris", "--out", (dir / "k").string()});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto pub = LoadPublicKey(dir / "k" / "paris.pub");
  ASSERT_TRUE(pub.ok()) << pub.status().ToString();
  EXPECT_NE(r.output.find(pub.value()), std::string::npos) << "prints the public key";
  EXPECT_EQ(fs::status(dir / "k" / "paris.key").permissions() & (fs::perms::group_all | fs::perms::others_all),
            fs::perms::none);
  auto again = H(dir, {"keygen", "paris", "--out", (dir / "k").string()});
  EXPECT_EQ(again.exit_code, 4) << again.output;
  EXPECT_NE(again.output.find("paris.key"), std::string::npos) << again.output;
}

TEST(HanseCli, MissingClientConfigSaysWhereItLooked) {
  CliDir dir;
  auto r = H(dir, {"jobs"});
  EXPECT_EQ(r.exit_code, 4) << r.output;
  EXPECT_NE(r.output.find((dir / "xdg" / "hanse" / "client.toml").string()), std::string::npos) << r.output;
}

TEST(HanseCli, WrongEndpointFailsFastWithExitThree) {
  CliDir dir;
  dir.MakeKeys({"coordinator", "alice"});
  std::string endpoint = LocalEndpoint();
  WriteFile(dir / "client.toml", ClientToml(endpoint, "alice"));
  auto r = H(dir, {"--config", (dir / "client.toml").string(), "--connect-timeout", "1", "jobs"}, seconds(30));
  ASSERT_NE(r.exit_code, -1) << "hung: " << r.output;
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("cannot reach the coordinator at " + endpoint + " within 1 s"), std::string::npos)
      << r.output;
}

TEST(HanseCli, JobFileWithABadKeyNamesFileLineAndKey) {
  CliDir dir;
  dir.MakeKeys({"coordinator", "alice"});
  WriteFile(dir / "client.toml", ClientToml(LocalEndpoint(), "alice"));
  WriteJob(dir / "job.toml", "", "epochz = 3\n");
  auto r = H(dir, {"--config", (dir / "client.toml").string(), "submit", (dir / "job.toml").string()});
  EXPECT_EQ(r.exit_code, 4) << r.output;
  // The key is on line 15 of the file written above.
  EXPECT_NE(r.output.find("job.toml:15"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("epochz"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("cannot reach"), std::string::npos) << "validated before connecting";
}

TEST(HanseCli, AggregateFedAvgWeightsByExamples) {
  CliDir dir;
  WriteTinyMlp(dir / "a.safetensors", 1.0f);
  WriteTinyMlp(dir / "b.safetensors", 3.0f);
  auto r = H(dir, {"aggregate", "--rule", "fedavg", "--weights", "100,300", (dir / "a.safetensors").string(),
                   (dir / "b.safetensors").string(), "-o", (dir / "out.safetensors").string()});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto values = ReadFloats(dir / "out.safetensors");
  ASSERT_EQ(values.size(), 8u + 8 * 784 + 10 + 10 * 8);
  for (float v : values) ASSERT_FLOAT_EQ(v, 2.5f);  // (100 x 1 + 300 x 3) / 400

  auto median = H(dir, {"aggregate", "--rule", "median", (dir / "a.safetensors").string(),
                        (dir / "b.safetensors").string(), (dir / "b.safetensors").string(), "-o",
                        (dir / "median.safetensors").string()});
  ASSERT_EQ(median.exit_code, 0) << median.output;
  EXPECT_FLOAT_EQ(ReadFloats(dir / "median.safetensors").at(0), 3.0f);

  auto bad_rule = H(dir, {"aggregate", "--rule", "fedsum", (dir / "a.safetensors").string(), "-o",
                          (dir / "x.safetensors").string()});
  EXPECT_EQ(bad_rule.exit_code, 1) << bad_rule.output;
  EXPECT_NE(bad_rule.output.find("fedsum"), std::string::npos) << bad_rule.output;
  auto missing = H(dir, {"aggregate", (dir / "a.safetensors").string(), (dir / "nope.safetensors").string(), "-o",
                         (dir / "x.safetensors").string()});
  EXPECT_EQ(missing.exit_code, 4) << missing.output;
  EXPECT_NE(missing.output.find("nope.safetensors"), std::string::npos) << missing.output;
  EXPECT_FALSE(fs::exists(dir / "x.safetensors"));
}

TEST(HanseCli, AuditVerifyOfAMissingFileIsALocalError) {
  CliDir dir;
  auto r = H(dir, {"audit", "verify", (dir / "nope.log").string()});
  EXPECT_EQ(r.exit_code, 4) << r.output;
  EXPECT_NE(r.output.find("nope.log"), std::string::npos) << r.output;
}

// A CURVE server in this process: the handshake needs no loop on our side.
struct FakeCoordinator {
  std::unique_ptr<proto::Server> server;
  std::string endpoint;
};

FakeCoordinator StartFake(const CliDir& dir, const std::string& lead) {
  FakeCoordinator f;
  auto secret = LoadSecretKey(dir / "keys" / "coordinator.key");
  auto pub = LoadPublicKey(dir / "keys" / "coordinator.pub");
  auto lead_pub = LoadPublicKey(dir / "keys" / (lead + ".pub"));
  if (!secret.ok() || !pub.ok() || !lead_pub.ok()) return f;
  auto s = proto::Server::Bind(hanse::testing::CurveServerOptions({pub.value(), secret.value()},
                                                                  {{lead, proto::Role::kLead, lead_pub.value()}}));
  if (!s.ok()) {
    ADD_FAILURE() << s.status().ToString();
    return f;
  }
  f.server = std::move(s).value();
  f.endpoint = f.server->endpoint();
  return f;
}

TEST(HanseCli, WrongCoordinatorKeyIsExitThreeWithoutHanging) {
  CliDir dir;
  dir.MakeKeys({"coordinator", "alice", "impostor"});
  FakeCoordinator fake = StartFake(dir, "alice");
  ASSERT_TRUE(fake.server);
  WriteFile(dir / "client.toml", ClientToml(fake.endpoint, "alice", "impostor"));  // the wrong server key
  auto r = H(dir, {"--config", (dir / "client.toml").string(), "--connect-timeout", "2", "sites"}, seconds(30));
  ASSERT_NE(r.exit_code, -1) << "hung: " << r.output;
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("coordinator_public_key"), std::string::npos) << r.output;
}

TEST(HanseCli, UnlistedClientKeyIsExitThree) {
  CliDir dir;
  dir.MakeKeys({"coordinator", "alice", "mallory"});
  FakeCoordinator fake = StartFake(dir, "alice");
  ASSERT_TRUE(fake.server);
  WriteFile(dir / "client.toml", ClientToml(fake.endpoint, "mallory"));
  auto r = H(dir, {"--config", (dir / "client.toml").string(), "--connect-timeout", "2", "jobs"}, seconds(30));
  ASSERT_NE(r.exit_code, -1) << "hung: " << r.output;
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("coordinator"), std::string::npos) << r.output;
}

TEST(HanseCli, SecretKeyReadableByOthersIsALocalError) {
  CliDir dir;
  dir.MakeKeys({"coordinator", "alice"});
  fs::permissions(dir / "keys" / "alice.key", fs::perms::group_read | fs::perms::others_read, fs::perm_options::add);
  WriteFile(dir / "client.toml", ClientToml(LocalEndpoint(), "alice"));
  auto r = H(dir, {"--config", (dir / "client.toml").string(), "jobs"});
  EXPECT_EQ(r.exit_code, 4) << r.output;
  EXPECT_NE(r.output.find("alice.key"), std::string::npos) << r.output;
}

// ---------------------------------------------------------- real coordinator ----

class WithCoordinator : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string coordinator = hanse::testing::Bin("hanse-coordinator");
    ASSERT_TRUE(fs::exists(coordinator)) << coordinator << " is not built";
    ASSERT_NO_FATAL_FAILURE(dir_.MakeKeys({"coordinator", "alice", "admin", "paris"}));
    endpoint_ = LocalEndpoint();
    WriteFile(dir_ / "coordinator.toml",
              hanse::testing::CoordinatorToml(endpoint_, "data", {{"paris"}, {"alice"}, {"admin"}}));
    WriteFile(dir_ / "client.toml", ClientToml(endpoint_, "alice"));
    WriteFile(dir_ / "admin.toml", ClientToml(endpoint_, "admin"));
    coordinator_ = dir_.StartCoordinator();
    bool up = dir_.WaitServing(coordinator_, "client.toml", seconds(30));
    ASSERT_TRUE(up) << "coordinator did not come up:\n" << coordinator_.Log();
  }
  void TearDown() override { hanse::testing::StopAll({&coordinator_}, seconds(10)); }
  RunResult Hanse(std::vector<std::string> args, seconds limit = seconds(30),
                  const std::string& config = "client.toml") {
    return dir_.Hanse(config, std::move(args), limit);
  }

  CliDir dir_;
  std::string endpoint_;
  hanse::testing::Child coordinator_;
};

TEST_F(WithCoordinator, UnknownJobIsRefusedWithExitTwo) {
  for (std::vector<std::string> args : std::vector<std::vector<std::string>>{
           {"status", "no-such-job"}, {"watch", "no-such-job"}, {"cancel", "no-such-job"},
           {"fetch", "no-such-job", "-o", (dir_ / "m.safetensors").string()},
           {"report", "no-such-job", "-o", (dir_ / "rep").string()}}) {
    auto r = Hanse(args);
    EXPECT_EQ(r.exit_code, 2) << args[0] << ": " << r.output;
    EXPECT_NE(r.output.find("unknown_job"), std::string::npos) << args[0] << ": " << r.output;
  }
  EXPECT_FALSE(fs::exists(dir_ / "m.safetensors"));
}

TEST_F(WithCoordinator, SitesListsTheConfiguredSiteAsOfflineToAnAdmin) {
  auto r = Hanse({"sites"}, seconds(30), "admin.toml");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("paris"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("offline"), std::string::npos) << r.output;
  auto lead = Hanse({"sites"});
  EXPECT_EQ(lead.exit_code, 2) << "a lead may not list sites: " << lead.output;
  EXPECT_NE(lead.output.find("unauthorized"), std::string::npos) << lead.output;
}

TEST_F(WithCoordinator, WatchOnAJobThatFailsEndsWithExitFive) {
  // No site is connected: the only round cannot reach min_sites before its 1 s
  // deadline and max_retries = 0, so the job fails.
  WriteJob(dir_ / "job.toml");
  auto sub = Hanse({"submit", (dir_ / "job.toml").string()});
  ASSERT_EQ(sub.exit_code, 0) << sub.output << "\n" << coordinator_.Log();
  std::string job_id = sub.output.substr(sub.output.rfind('\n', sub.output.size() - 2) + 1);
  job_id = job_id.substr(0, job_id.find('\n'));
  ASSERT_FALSE(job_id.empty()) << sub.output;

  auto w = Hanse({"watch", job_id, "--max-wait", "90"}, seconds(120));
  ASSERT_NE(w.exit_code, -1) << "watch hung: " << w.output;
  EXPECT_EQ(w.exit_code, 5) << w.output << "\n" << coordinator_.Log();
  EXPECT_NE(w.output.find("failed"), std::string::npos) << w.output;

  auto jobs = Hanse({"jobs"});
  EXPECT_EQ(jobs.exit_code, 0) << jobs.output;
  EXPECT_NE(jobs.output.find(job_id), std::string::npos) << jobs.output;

  auto rep = Hanse({"report", job_id, "-o", (dir_ / "report").string()});
  EXPECT_EQ(rep.exit_code, 0) << rep.output;
  EXPECT_TRUE(fs::exists(dir_ / "report" / "report.html"));
}

}  // namespace
}  // namespace hanse::cli
