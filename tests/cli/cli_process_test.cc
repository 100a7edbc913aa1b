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
#include "test_util.h"

namespace hanse::cli {
namespace {

namespace fs = std::filesystem;
using hanse::testing::Child;
using hanse::testing::FreePort;
using hanse::testing::ReadFile;
using hanse::testing::Run;
using hanse::testing::RunResult;
using hanse::testing::TempDir;
using hanse::testing::WriteFile;
using std::chrono::seconds;

std::string HanseBin() { return (hanse::testing::BinDir() / "hanse").string(); }
std::string Coordinator() { return (hanse::testing::BinDir() / "hanse-coordinator").string(); }

// Runs hanse with `args`; never longer than `limit` (the child is killed: exit_code -1).
RunResult H(const TempDir& dir, std::vector<std::string> args, seconds limit = seconds(30)) {
  args.insert(args.begin(), HanseBin());
  static int n = 0;
  return Run(args, dir / ("hanse-" + std::to_string(++n) + ".log"), limit,
             {"XDG_CACHE_HOME=" + (dir / "cache").string(), "XDG_CONFIG_HOME=" + (dir / "xdg").string()});
}

void MakeKey(const TempDir& dir, const std::string& name) {
  auto r = H(dir, {"keygen", name, "--out", (dir / "keys").string()});
  ASSERT_EQ(r.exit_code, 0) << r.output;
}

void WriteClient(const TempDir& dir, const std::string& endpoint, const std::string& server_pub,
                 const std::string& me, const std::string& file = "client.toml") {
  WriteFile(dir / file, "coordinator = \"" + endpoint + "\"\ncoordinator_public_key = \"keys/" + server_pub +
                            ".pub\"\nkey = \"keys/" + me + ".key\"\n");
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
  TempDir dir;
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
  TempDir dir;
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
  TempDir dir;
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
  TempDir dir;
  auto r = H(dir, {"jobs"});
  EXPECT_EQ(r.exit_code, 4) << r.output;
  EXPECT_NE(r.output.find((dir / "xdg" / "hanse" / "client.toml").string()), std::string::npos) << r.output;
}

TEST(HanseCli, WrongEndpointFailsFastWithExitThree) {
  TempDir dir;
  MakeKey(dir, "coordinator");
  MakeKey(dir, "alice");
  std::string endpoint = "tcp://127.0.0.1:" + std::to_string(FreePort());
  WriteClient(dir, endpoint, "coordinator", "alice");
  auto r = H(dir, {"--config", (dir / "client.toml").string(), "--connect-timeout", "1", "jobs"}, seconds(30));
  ASSERT_NE(r.exit_code, -1) << "hung: " << r.output;
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("cannot reach the coordinator at " + endpoint + " within 1 s"), std::string::npos)
      << r.output;
}

TEST(HanseCli, JobFileWithABadKeyNamesFileLineAndKey) {
  TempDir dir;
  MakeKey(dir, "coordinator");
  MakeKey(dir, "alice");
  WriteClient(dir, "tcp://127.0.0.1:" + std::to_string(FreePort()), "coordinator", "alice");
  WriteJob(dir / "job.toml", "", "epochz = 3\n");
  auto r = H(dir, {"--config", (dir / "client.toml").string(), "submit", (dir / "job.toml").string()});
  EXPECT_EQ(r.exit_code, 4) << r.output;
  // The key is on line 15 of the file written above.
  EXPECT_NE(r.output.find("job.toml:15"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("epochz"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("cannot reach"), std::string::npos) << "validated before connecting";
}

TEST(HanseCli, AggregateFedAvgWeightsByExamples) {
  TempDir dir;
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
  TempDir dir;
  auto r = H(dir, {"audit", "verify", (dir / "nope.log").string()});
  EXPECT_EQ(r.exit_code, 4) << r.output;
  EXPECT_NE(r.output.find("nope.log"), std::string::npos) << r.output;
}

// A CURVE server in this process: the handshake needs no loop on our side.
struct FakeCoordinator {
  std::unique_ptr<proto::Server> server;
  std::string endpoint;
};

FakeCoordinator StartFake(const TempDir& dir, const std::string& lead) {
  FakeCoordinator f;
  auto secret = LoadSecretKey(dir / "keys" / "coordinator.key");
  auto pub = LoadPublicKey(dir / "keys" / "coordinator.pub");
  auto lead_pub = LoadPublicKey(dir / "keys" / (lead + ".pub"));
  if (!secret.ok() || !pub.ok() || !lead_pub.ok()) return f;
  proto::ServerOptions o;
  o.endpoint = "tcp://127.0.0.1:0";
  o.secret_key = secret.value();
  o.public_key = pub.value();
  o.principals = {{lead, proto::Role::kLead, lead_pub.value()}};
  auto s = proto::Server::Bind(o);
  if (!s.ok()) {
    ADD_FAILURE() << s.status().ToString();
    return f;
  }
  f.server = std::move(s).value();
  f.endpoint = f.server->endpoint();
  return f;
}

TEST(HanseCli, WrongCoordinatorKeyIsExitThreeWithoutHanging) {
  TempDir dir;
  for (const char* k : {"coordinator", "alice", "impostor"}) MakeKey(dir, k);
  FakeCoordinator fake = StartFake(dir, "alice");
  ASSERT_TRUE(fake.server);
  WriteClient(dir, fake.endpoint, "impostor", "alice");  // the wrong server key
  auto r = H(dir, {"--config", (dir / "client.toml").string(), "--connect-timeout", "2", "sites"}, seconds(30));
  ASSERT_NE(r.exit_code, -1) << "hung: " << r.output;
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("coordinator_public_key"), std::string::npos) << r.output;
}

TEST(HanseCli, UnlistedClientKeyIsExitThree) {
  TempDir dir;
  for (const char* k : {"coordinator", "alice", "mallory"}) MakeKey(dir, k);
  FakeCoordinator fake = StartFake(dir, "alice");
  ASSERT_TRUE(fake.server);
  WriteClient(dir, fake.endpoint, "coordinator", "mallory");
  auto r = H(dir, {"--config", (dir / "client.toml").string(), "--connect-timeout", "2", "jobs"}, seconds(30));
  ASSERT_NE(r.exit_code, -1) << "hung: " << r.output;
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("coordinator"), std::string::npos) << r.output;
}

TEST(HanseCli, SecretKeyReadableByOthersIsALocalError) {
  TempDir dir;
  MakeKey(dir, "coordinator");
  MakeKey(dir, "alice");
  fs::permissions(dir / "keys" / "alice.key", fs::perms::group_read | fs::perms::others_read, fs::perm_options::add);
  WriteClient(dir, "tcp://127.0.0.1:" + std::to_string(FreePort()), "coordinator", "alice");
  auto r = H(dir, {"--config", (dir / "client.toml").string(), "jobs"});
  EXPECT_EQ(r.exit_code, 4) << r.output;
  EXPECT_NE(r.output.find("alice.key"), std::string::npos) << r.output;
}

// ---------------------------------------------------------- real coordinator ----

class WithCoordinator : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(Coordinator())) << Coordinator() << " is not built";
    for (const char* k : {"coordinator", "alice", "admin", "paris"}) ASSERT_NO_FATAL_FAILURE(MakeKey(dir_, k));
    endpoint_ = "tcp://127.0.0.1:" + std::to_string(FreePort());
    WriteFile(dir_ / "coordinator.toml", "listen = \"" + endpoint_ +
                                             "\"\nkey = \"keys/coordinator.key\"\ndata_dir = \"data\"\n"
                                             "[[site]]\nname = \"paris\"\npublic_key = \"keys/paris.pub\"\n"
                                             "[[lead]]\nname = \"alice\"\npublic_key = \"keys/alice.pub\"\n"
                                             "[[admin]]\nname = \"admin\"\npublic_key = \"keys/admin.pub\"\n");
    WriteClient(dir_, endpoint_, "coordinator", "alice");
    WriteClient(dir_, endpoint_, "coordinator", "admin", "admin.toml");
    coordinator_ = Child::Start({Coordinator(), "--config", (dir_ / "coordinator.toml").string()},
                                dir_ / "coordinator.log");
    bool up = hanse::testing::WaitFor(
        [&] { return coordinator_.Running() && Hanse({"--connect-timeout", "1", "jobs"}).exit_code == 0; },
        std::chrono::seconds(30));
    ASSERT_TRUE(up) << "coordinator did not come up:\n" << coordinator_.Log();
  }
  void TearDown() override {
    coordinator_.Signal(SIGTERM);
    if (!coordinator_.Wait(std::chrono::seconds(10))) coordinator_.Signal(SIGKILL);
  }
  RunResult Hanse(std::vector<std::string> args, seconds limit = seconds(30),
                  const std::string& config = "client.toml") {
    args.insert(args.begin(), {"--config", (dir_ / config).string()});
    return H(dir_, args, limit);
  }

  TempDir dir_;
  std::string endpoint_;
  Child coordinator_;
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
