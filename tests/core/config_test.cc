#include "core/config.h"

#include <sys/stat.h>

#include <regex>
#include <set>

#include <gtest/gtest.h>

#include "core/keys.h"
#include "test_util.h"

namespace hanse {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;
using testing::WriteFile;

// A folder holding what configs refer to: key pairs, data files, model files.
class ConfigDir {
 public:
  ConfigDir() {
    for (const char* n : {"coordinator", "paris", "lyon", "alice", "root"}) {
      auto kp = WriteKeyPair(n, dir_ / "keys");
      if (!kp.ok()) throw std::runtime_error(kp.status().ToString());
    }
    WriteFile(dir_ / "keys/bad.pub", std::string(39, 'a') + "\n");
    WriteFile(dir_ / "keys/open.key", std::string(40, '0') + "\n");
    chmod((dir_ / "keys/open.key").c_str(), 0644);
    for (const char* f : {"data/train-images.gz", "data/train-labels.gz", "data/test-images.gz",
                          "data/test-labels.gz", "data/table.csv", "models/init.safetensors", "models/net.pt"}) {
      WriteFile(dir_ / f, "x");
    }
  }
  fs::path Write(const std::string& name, const std::string& text) const {
    WriteFile(dir_ / name, text);
    return dir_ / name;
  }
  const fs::path& path() const { return dir_.path(); }

 private:
  TempDir dir_;
};

const char kCoordinatorMin[] =
    "key = \"keys/coordinator.key\"\n"
    "data_dir = \"coord-data\"\n";
const char kSiteMin[] =
    "name = \"paris\"\n"
    "coordinator = \"tcp://127.0.0.1:7700\"\n"
    "coordinator_public_key = \"keys/coordinator.pub\"\n"
    "key = \"keys/paris.key\"\n"
    "data_dir = \"paris-data\"\n";
const char kJobMin[] =
    "name = \"j1\"\n"
    "initial_model = \"models/init.safetensors\"\n"
    "architecture = \"cnn\"\n"
    "dataset = \"fashion-mnist\"\n";
const char kClientMin[] =
    "coordinator = \"tcp://127.0.0.1:7700\"\n"
    "coordinator_public_key = \"keys/coordinator.pub\"\n"
    "key = \"keys/alice.key\"\n";

enum class Kind { kCoordinator, kSite, kJob, kClient };

Status LoadAs(Kind k, const fs::path& file) {
  switch (k) {
    case Kind::kCoordinator: return LoadCoordinatorConfig(file).status();
    case Kind::kSite: return LoadSiteConfig(file).status();
    case Kind::kJob: return LoadJobConfig(file).status();
    case Kind::kClient: return LoadClientConfig(file).status();
  }
  return Status::Internal("kind");
}

// ---------------------------------------------------------------- positive

TEST(Config, MinimalFilesLoadWithDefaults) {
  ConfigDir d;
  auto c = LoadCoordinatorConfig(d.Write("c.toml", kCoordinatorMin));
  ASSERT_OK(c.status());
  EXPECT_EQ(c->listen, "tcp://127.0.0.1:7700");
  EXPECT_EQ(c->secret_key_file, d.path() / "keys/coordinator.key");
  EXPECT_EQ(c->public_key_file, d.path() / "keys/coordinator.pub");
  EXPECT_EQ(c->data_dir, d.path() / "coord-data");
  EXPECT_EQ(c->chunk_bytes, 4u << 20);
  EXPECT_TRUE(c->sites.empty());

  auto s = LoadSiteConfig(d.Write("s.toml", kSiteMin));
  ASSERT_OK(s.status());
  EXPECT_EQ(s->name, "paris");
  EXPECT_EQ(s->coordinator_public_key, *LoadPublicKey(d.path() / "keys/coordinator.pub"));
  EXPECT_EQ(s->audit_log, d.path() / "paris-data/audit.log");
  EXPECT_EQ(s->threads, 1u);
  EXPECT_EQ(s->devices, std::vector<std::string>{"cpu"});
  EXPECT_TRUE(s->policy.leads.empty());  // nobody may run jobs until the admin says so
  EXPECT_EQ(s->policy.timezone, "Europe/Paris");

  auto j = LoadJobConfig(d.Write("j.toml", kJobMin));
  ASSERT_OK(j.status());
  EXPECT_EQ(j->model_name, "init");
  EXPECT_EQ(j->sites, std::vector<std::string>{"all"});
  EXPECT_EQ(j->strategy.rule, "fedavg");
  EXPECT_FALSE(j->clip_norm.has_value());

  auto cl = LoadClientConfig(d.Write("cl.toml", kClientMin));
  ASSERT_OK(cl.status());
  EXPECT_EQ(cl->public_key_file, d.path() / "keys/alice.pub");
}

TEST(Config, FullCoordinatorFile) {
  ConfigDir d;
  auto c = LoadCoordinatorConfig(d.Write("sub/c.toml", std::string(R"(
listen = "tcp://*:7801"
key = "../keys/coordinator.key"
data_dir = "/var/lib/hanse"
[transport]
chunk_bytes = 65536
window = 8
heartbeat_ms = 500
heartbeat_timeout_ms = 2000
[retention]
keep_updates_rounds = 2
keep_checkpoints = 5
[rates]
gpu_hour = 2.5
cpu_hour = 0
currency = "CHF"
[[site]]
name = "paris"
public_key = "../keys/paris.pub"
[[site]]
name = "lyon"
public_key = "../keys/lyon.pub"
[[lead]]
name = "alice"
public_key = "../keys/alice.pub"
[[admin]]
name = "root"
public_key = "../keys/root.pub"
)")));
  ASSERT_OK(c.status());
  EXPECT_EQ(c->listen, "tcp://*:7801");
  EXPECT_EQ(c->secret_key_file, d.path() / "keys/coordinator.key");  // relative to the file's folder
  EXPECT_EQ(c->data_dir, fs::path("/var/lib/hanse"));
  EXPECT_EQ(c->chunk_bytes, 65536u);
  EXPECT_EQ(c->window, 8u);
  EXPECT_EQ(c->heartbeat_timeout_ms, 2000u);
  EXPECT_EQ(c->keep_checkpoints, 5u);
  EXPECT_DOUBLE_EQ(c->rates.gpu_hour, 2.5);
  EXPECT_EQ(c->rates.currency, "CHF");
  ASSERT_EQ(c->sites.size(), 2u);
  EXPECT_EQ(c->sites[1].name, "lyon");
  EXPECT_EQ(c->sites[1].public_key, *LoadPublicKey(d.path() / "keys/lyon.pub"));
  ASSERT_EQ(c->leads.size(), 1u);
  ASSERT_EQ(c->admins.size(), 1u);
  EXPECT_EQ(c->admins[0].name, "root");
}

TEST(Config, FullSiteFile) {
  ConfigDir d;
  auto s = LoadSiteConfig(d.Write("s.toml", std::string(kSiteMin) + R"(
audit_log = "audit/paris.log"
threads = 2
devices = ["cpu", "cuda:0"]
[datasets.fashion-mnist]
format = "idx"
train_images = "data/train-images.gz"
train_labels = "data/train-labels.gz"
test_images = "data/test-images.gz"
test_labels = "data/test-labels.gz"
max_train_examples = 1000
[datasets.fashion-mnist.partition]
kind = "dirichlet"
alpha = 0.5
seed = 42
num_shares = 3
share = 2
[datasets.tab]
format = "csv"
path = "data/table.csv"
label_column = "y"
feature_columns = ["a", "b"]
test_fraction = 0.2
[datasets.tab.partition]
kind = "labels"
labels = [0, 3]
[policy]
leads = ["alice"]
architectures = ["cnn", "mlp"]
datasets = ["fashion-mnist"]
max_epochs = 5
max_batch_size = 256
devices = ["cpu"]
timezone = "Europe/Berlin"
quota_device_hours_per_lead_month = 12.5
max_model_bytes = 1000000
torchscript_hashes = ["0000000000000000000000000000000000000000000000000000000000000000"]
[policy.models]
init = ""
other = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
[[policy.window]]
days = ["sat", "mon"]
hours = "08:00-20:00"
[[policy.window]]
days = ["sun"]
hours = "00:00-24:00"
)"));
  ASSERT_OK(s.status());
  EXPECT_EQ(s->audit_log, d.path() / "audit/paris.log");
  EXPECT_EQ(s->devices, (std::vector<std::string>{"cpu", "cuda:0"}));
  ASSERT_EQ(s->datasets.size(), 2u);
  const auto& f = s->datasets.at("fashion-mnist");
  EXPECT_EQ(f.name, "fashion-mnist");
  EXPECT_EQ(f.format, "idx");
  EXPECT_EQ(f.train_images, d.path() / "data/train-images.gz");
  EXPECT_EQ(f.test_labels, d.path() / "data/test-labels.gz");
  EXPECT_EQ(f.max_train_examples, 1000u);
  EXPECT_EQ(f.partition.kind, PartitionConfig::Kind::kDirichlet);
  EXPECT_EQ(f.partition.seed, 42u);
  EXPECT_EQ(f.partition.num_shares, 3u);
  EXPECT_EQ(f.partition.share, 2u);
  const auto& t = s->datasets.at("tab");
  EXPECT_EQ(t.path, d.path() / "data/table.csv");
  EXPECT_EQ(t.feature_columns, (std::vector<std::string>{"a", "b"}));
  EXPECT_DOUBLE_EQ(t.test_fraction, 0.2);
  EXPECT_EQ(t.partition.kind, PartitionConfig::Kind::kLabels);
  EXPECT_EQ(t.partition.labels, (std::vector<int64_t>{0, 3}));
  const auto& p = s->policy;
  EXPECT_EQ(p.leads, std::vector<std::string>{"alice"});
  EXPECT_EQ(p.max_epochs, 5u);
  EXPECT_EQ(p.timezone, "Europe/Berlin");
  EXPECT_DOUBLE_EQ(p.quota_device_hours_per_lead_month, 12.5);
  EXPECT_EQ(p.models.at("init"), "");
  EXPECT_EQ(p.models.size(), 2u);
  ASSERT_EQ(p.windows.size(), 2u);
  EXPECT_EQ(p.windows[0].days, (std::vector<int>{0, 5}));
  EXPECT_EQ(p.windows[0].start_minute, 8 * 60);
  EXPECT_EQ(p.windows[0].end_minute, 20 * 60);
  EXPECT_EQ(p.windows[1].days, std::vector<int>{6});
  EXPECT_EQ(p.windows[1].end_minute, 24 * 60);
}

TEST(Config, FullJobFile) {
  ConfigDir d;
  auto j = LoadJobConfig(d.Write("j.toml", R"(
name = "fmnist-mlp"
initial_model = "models/init.safetensors"
model_name = "fmnist-init"
architecture = "mlp"
hidden = [128, 64]
dataset = "fashion-mnist"
rounds = 7
min_sites = 2
sites = ["paris", "lyon", "berlin"]
round_deadline_s = 120
max_retries = 0
evaluate = false
max_update_norm = 10
clip_norm = 5.5
seed = 9
[strategy]
rule = "fedprox"
server_lr = 0.5
[training]
epochs = 2
batch_size = 32
optimizer = "adam"
lr = 0.001
weight_decay = 1e-4
prox_mu = 0.01
trainable = ["fc2.*"]
update_dtype = "bf16"
max_examples = 500
)"));
  ASSERT_OK(j.status());
  EXPECT_EQ(j->name, "fmnist-mlp");
  EXPECT_EQ(j->initial_model, d.path() / "models/init.safetensors");
  EXPECT_EQ(j->model_name, "fmnist-init");
  EXPECT_EQ(j->hidden, (std::vector<uint32_t>{128, 64}));
  EXPECT_EQ(j->rounds, 7u);
  EXPECT_EQ(j->min_sites, 2u);
  EXPECT_EQ(j->sites.size(), 3u);
  EXPECT_EQ(j->max_retries, 0u);
  EXPECT_FALSE(j->evaluate);
  EXPECT_DOUBLE_EQ(*j->max_update_norm, 10.0);
  EXPECT_DOUBLE_EQ(*j->clip_norm, 5.5);
  EXPECT_EQ(j->seed, 9u);
  EXPECT_EQ(j->strategy.rule, "fedprox");
  EXPECT_DOUBLE_EQ(j->strategy.server_lr, 0.5);
  EXPECT_EQ(j->training.optimizer, "adam");
  EXPECT_DOUBLE_EQ(j->training.weight_decay, 1e-4);
  EXPECT_EQ(j->training.trainable, std::vector<std::string>{"fc2.*"});
  EXPECT_EQ(j->training.update_dtype, "bf16");
  EXPECT_EQ(j->training.max_examples, 500u);
}

TEST(Config, ParseJobTextDoesNotNeedModelFiles) {
  const std::string text =
      "name = \"ts\"\n"
      "initial_model = \"weights/w.safetensors\"\n"
      "architecture = \"torchscript\"\n"
      "torchscript_module = \"net.pt\"\n"
      "dataset = \"d\"\n";
  auto j = ParseJobConfig(text, "job-ts.toml", "/home/lead/jobs");
  ASSERT_OK(j.status());
  EXPECT_EQ(j->source, fs::path("job-ts.toml"));
  EXPECT_EQ(j->initial_model, fs::path("/home/lead/jobs/weights/w.safetensors"));
  EXPECT_EQ(j->torchscript_module, fs::path("/home/lead/jobs/net.pt"));
  EXPECT_EQ(j->model_name, "w");
  auto unresolved = ParseJobConfig(text, "job-ts.toml", "");
  ASSERT_OK(unresolved.status());
  EXPECT_EQ(unresolved->initial_model, fs::path("weights/w.safetensors"));

  // From disk the same files must exist.
  TempDir dir;
  WriteFile(dir / "job-ts.toml", text);
  auto from_disk = LoadJobConfig(dir / "job-ts.toml");
  ASSERT_FALSE(from_disk.ok());
  EXPECT_EQ(from_disk.status().message(),
            (dir / "job-ts.toml").string() + ":2:17: initial_model: file not found: " +
                (dir / "weights/w.safetensors").string());
}

TEST(Config, ParseJobTextErrorsUseTheGivenName) {
  auto j = ParseJobConfig("name = \"x\"\nrounds = 0\n", "lead-upload.toml", "");
  ASSERT_FALSE(j.ok());
  EXPECT_EQ(j.status().code(), Code::kInvalidArgument);
  // Unknown keys first, then required keys in a fixed order: architecture is checked before rounds.
  EXPECT_EQ(j.status().message(), "lead-upload.toml:1:1: architecture: missing required key");
}

TEST(Config, MissingConfigFileIsNotFound) {
  TempDir dir;
  auto r = LoadSiteConfig(dir / "nope.toml");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kNotFound);
  EXPECT_NE(r.status().message().find("nope.toml"), std::string::npos);
}

// The examples in configs/ load once their keys (and the demo's initial model) exist.
TEST(Config, ExamplesInConfigsLoad) {
  TempDir dir;
  const fs::path src = testing::SourceDir() / "configs";
  ASSERT_TRUE(fs::is_directory(src)) << src;
  fs::copy(src, dir.path(), fs::copy_options::recursive);
  std::set<std::string> key_names;
  const std::regex key_ref(R"re("keys/([A-Za-z0-9_.-]+)\.(key|pub)")re");
  for (const auto& e : fs::directory_iterator(dir.path())) {
    const std::string text = testing::ReadFile(e.path());
    for (std::sregex_iterator it(text.begin(), text.end(), key_ref), end; it != end; ++it) key_names.insert((*it)[1]);
  }
  EXPECT_EQ(key_names, (std::set<std::string>{"admin", "alice", "berlin", "coordinator", "lyon", "paris"}));
  for (const auto& n : key_names) ASSERT_OK(WriteKeyPair(n, dir / "keys").status());
  WriteFile(dir / "models/fashion-cnn.safetensors", "stand-in: only its existence is checked");

  auto c = LoadCoordinatorConfig(dir / "coordinator.toml");
  ASSERT_OK(c.status());
  auto cl = LoadClientConfig(dir / "client.toml");
  ASSERT_OK(cl.status());
  auto j = LoadJobConfig(dir / "job-fashion-mnist.toml");
  ASSERT_OK(j.status());
  EXPECT_EQ(j->dataset, "fashion-mnist");
  EXPECT_EQ(j->architecture, "cnn");
  EXPECT_EQ(j->strategy.rule, "fedavg");
  EXPECT_EQ(j->model_name, "fashion-cnn");
  const std::string coordinator_pub = *LoadPublicKey(dir / "keys/coordinator.pub");
  EXPECT_EQ(cl->coordinator_public_key, coordinator_pub);
  ASSERT_EQ(c->leads.size(), 1u);
  EXPECT_EQ(c->leads[0].public_key, *LoadPublicKey(cl->public_key_file));

  std::set<uint32_t> shares;
  std::vector<std::string> site_names;
  for (const char* f : {"site-paris.toml", "site-lyon.toml", "site-berlin.toml"}) {
    auto s = LoadSiteConfig(dir / f);
    ASSERT_OK(s.status());
    site_names.push_back(s->name);
    EXPECT_EQ(s->coordinator, cl->coordinator) << f;
    EXPECT_EQ(s->coordinator_public_key, coordinator_pub) << f;
    const auto it = std::find_if(c->sites.begin(), c->sites.end(), [&](const auto& p) { return p.name == s->name; });
    ASSERT_NE(it, c->sites.end()) << s->name << " is not a [[site]] of coordinator.toml";
    EXPECT_EQ(it->public_key, *LoadPublicKey(s->public_key_file)) << f;
    const auto& ds = s->datasets.at(j->dataset);
    EXPECT_EQ(ds.partition.kind, PartitionConfig::Kind::kDirichlet) << f;
    EXPECT_EQ(ds.partition.num_shares, 3u) << f;
    shares.insert(ds.partition.share);
    EXPECT_TRUE(s->policy.models.count(j->model_name)) << f;
    EXPECT_NE(std::find(s->policy.leads.begin(), s->policy.leads.end(), c->leads[0].name), s->policy.leads.end()) << f;
    EXPECT_LE(j->training.epochs, s->policy.max_epochs) << f;
  }
  EXPECT_EQ(shares, (std::set<uint32_t>{0, 1, 2}));
  EXPECT_EQ(j->sites, site_names);
  EXPECT_EQ(LoadSiteConfig(dir / "site-berlin.toml")->policy.timezone, "Europe/Berlin");
  EXPECT_EQ(LoadSiteConfig(dir / "site-lyon.toml")->policy.timezone, "Europe/Paris");
}

// ---------------------------------------------------------------- negative matrix

struct BadCase {
  const char* label;
  Kind kind;
  std::string text;      // full file
  std::string where;     // expected "LINE:COL"
  std::string key;       // expected key right after the position
  std::string message;   // expected substring of the message after "KEY: "
};

std::ostream& operator<<(std::ostream& os, const BadCase& c) { return os << c.label; }

class BadConfig : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadConfig, IsRejectedNamingFileLineAndKey) {
  const BadCase& c = GetParam();
  ConfigDir d;
  const fs::path file = d.Write("bad.toml", c.text);
  const Status st = LoadAs(c.kind, file);
  ASSERT_FALSE(st.ok()) << c.label << " was accepted";
  RecordProperty("message", st.message());  // readable in --gtest_output=xml
  EXPECT_EQ(st.code(), Code::kInvalidArgument) << st.ToString();
  const std::string prefix = file.string() + ":" + c.where + ": " + c.key + ": ";
  ASSERT_EQ(st.message().substr(0, prefix.size()), prefix) << st.message();
  EXPECT_NE(st.message().find(c.message, prefix.size()), std::string::npos)
      << "message: " << st.message() << "\nexpected to contain: " << c.message;
}

const std::string kC = kCoordinatorMin;
const std::string kS = kSiteMin;  // 5 lines
const std::string kJ = kJobMin;   // 4 lines
const std::string kL = kClientMin;

const BadCase kBadCases[] = {
    // ---- coordinator
    {"CoordUnknownKey", Kind::kCoordinator, kC + "lissten = \"tcp://*:7700\"\n", "3:1", "lissten",
     "unknown key 'lissten' (did you mean 'listen'?)"},
    {"CoordMissingDataDir", Kind::kCoordinator, "key = \"keys/coordinator.key\"\n", "1:1", "data_dir",
     "missing required key"},
    {"CoordWrongType", Kind::kCoordinator, kC + "[transport]\nwindow = \"four\"\n", "4:10", "transport.window",
     "expected an integer in [1, 1024], got \"four\""},
    {"CoordHeartbeatTimeout", Kind::kCoordinator, kC + "[transport]\nheartbeat_ms = 1000\nheartbeat_timeout_ms = 1000\n",
     "5:24", "transport.heartbeat_timeout_ms", "must be greater than heartbeat_ms (1000)"},
    {"CoordBadPort", Kind::kCoordinator, kC + "listen = \"tcp://*:70000\"\n", "3:10", "listen",
     "expected \"tcp://HOST:PORT\" (port 1-65535) or \"ipc://PATH\", got \"tcp://*:70000\""},
    {"CoordMissingKeyFile", Kind::kCoordinator, "key = \"keys/nobody.key\"\ndata_dir = \"x\"\n", "1:7", "key",
     "file not found: "},
    {"CoordSecretKeyReadable", Kind::kCoordinator, "key = \"keys/open.key\"\ndata_dir = \"x\"\n", "1:7", "key",
     "is accessible by others (mode 0644); run chmod 600 "},
    {"CoordSiteKeyMissing", Kind::kCoordinator, kC + "[[site]]\nname = \"paris\"\npublic_key = \"keys/nobody.pub\"\n",
     "5:14", "site[0].public_key", "file not found: "},
    {"CoordSiteKeyUndecodable", Kind::kCoordinator, kC + "[[site]]\nname = \"paris\"\npublic_key = \"keys/bad.pub\"\n",
     "5:14", "site[0].public_key", "not a 40-character Z85 CURVE key"},
    {"CoordDuplicateSite", Kind::kCoordinator,
     kC + "[[site]]\nname = \"paris\"\npublic_key = \"keys/paris.pub\"\n[[site]]\nname = \"paris\"\npublic_key = \"keys/lyon.pub\"\n",
     "7:8", "site[1].name", "duplicate site name \"paris\""},
    {"CoordSiteNamedAll", Kind::kCoordinator, kC + "[[site]]\nname = \"all\"\npublic_key = \"keys/paris.pub\"\n", "4:8",
     "site[0].name", "\"all\" is reserved"},
    {"CoordSiteWithoutName", Kind::kCoordinator, kC + "\n[[lead]]\npublic_key = \"keys/alice.pub\"\n", "4:1", "lead[0].name",
     "missing required key"},
    {"CoordSiteKeyUsedByLead", Kind::kCoordinator,
     kC + "[[site]]\nname = \"paris\"\npublic_key = \"keys/paris.pub\"\n[[lead]]\nname = \"p\"\npublic_key = \"keys/paris.pub\"\n",
     "5:14", "site[0].public_key", "same public key as lead \"p\""},
    {"CoordBadCurrency", Kind::kCoordinator, kC + "[rates]\ncurrency = \"euro\"\n", "4:12", "rates.currency",
     "expected a 3-letter ISO 4217 code"},
    {"CoordNegativeRate", Kind::kCoordinator, kC + "[rates]\ngpu_hour = -1\n", "4:12", "rates.gpu_hour",
     "expected a number >= 0, got -1"},

    // ---- site
    {"SiteMaxEpochsString", Kind::kSite, kS + "[policy]\nmax_epochs = \"ten\"\n", "7:14", "policy.max_epochs",
     "expected an integer in [1, 100000], got \"ten\""},
    {"SiteUnknownPolicyKey", Kind::kSite, kS + "[policy]\nmax_epoch = 3\n", "7:1", "policy.max_epoch",
     "unknown key 'policy.max_epoch' (did you mean 'max_epochs'?)"},
    {"SiteBadTimezone", Kind::kSite, kS + "[policy]\ntimezone = \"Europe/Pariss\"\n", "7:12", "policy.timezone",
     "unknown time zone \"Europe/Pariss\""},
    {"SiteTimezoneNotString", Kind::kSite, kS + "[policy]\ntimezone = 1\n", "7:12", "policy.timezone",
     "expected an IANA time zone name"},
    {"SiteWindowOvernight", Kind::kSite, kS + "[[policy.window]]\ndays = [\"mon\"]\nhours = \"20:00-08:00\"\n", "8:9",
     "policy.window[0].hours", "start must be before end"},
    {"SiteWindowBadFormat", Kind::kSite, kS + "[[policy.window]]\ndays = [\"mon\"]\nhours = \"8-20\"\n", "8:9",
     "policy.window[0].hours", "expected \"HH:MM-HH:MM\" (00:00 to 24:00), got \"8-20\""},
    {"SiteWindowBadMinute", Kind::kSite, kS + "[[policy.window]]\ndays = [\"mon\"]\nhours = \"08:00-20:60\"\n", "8:9",
     "policy.window[0].hours", "expected \"HH:MM-HH:MM\""},
    {"SiteWindowBadDay", Kind::kSite, kS + "[[policy.window]]\ndays = [\"mon\", \"monday\"]\nhours = \"08:00-20:00\"\n",
     "7:16", "policy.window[0].days[1]", "expected a day name: mon, tue, wed, thu, fri, sat, sun, got \"monday\""},
    {"SiteWindowMissingHours", Kind::kSite, kS + "[[policy.window]]\ndays = [\"mon\"]\n", "6:1", "policy.window[0].hours",
     "missing required key"},
    {"SiteBadDatasetFormat", Kind::kSite, kS + "[datasets.fm]\nformat = \"parquet\"\n", "7:10", "datasets.fm.format",
     "expected one of \"idx\", \"csv\", got \"parquet\""},
    {"SiteMissingDatasetFile", Kind::kSite,
     kS + "[datasets.fm]\nformat = \"idx\"\ntrain_images = \"data/nope.gz\"\ntrain_labels = \"data/train-labels.gz\"\n",
     "8:16", "datasets.fm.train_images", "file not found: "},
    {"SiteIdxWithoutLabels", Kind::kSite, kS + "[datasets.fm]\nformat = \"idx\"\ntrain_images = \"data/train-images.gz\"\n",
     "6:1", "datasets.fm.train_labels", "missing required key"},
    {"SiteCsvWithIdxKey", Kind::kSite,
     kS + "[datasets.t]\nformat = \"csv\"\npath = \"data/table.csv\"\nlabel_column = \"y\"\ntrain_images = \"data/x\"\n",
     "10:16", "datasets.t.train_images", "only valid with format = \"idx\""},
    {"SiteShareOutOfRange", Kind::kSite,
     kS + "[datasets.fm]\nformat = \"idx\"\ntrain_images = \"data/train-images.gz\"\ntrain_labels = \"data/train-labels.gz\"\n"
          "[datasets.fm.partition]\nkind = \"dirichlet\"\nnum_shares = 3\nshare = 3\n",
     "13:9", "datasets.fm.partition.share", "expected an integer in [0, 2] (num_shares = 3), got 3"},
    {"SiteBadPartitionKind", Kind::kSite,
     kS + "[datasets.fm]\nformat = \"idx\"\ntrain_images = \"data/train-images.gz\"\ntrain_labels = \"data/train-labels.gz\"\n"
          "[datasets.fm.partition]\nkind = \"random\"\n",
     "11:8", "datasets.fm.partition.kind", "expected one of \"labels\", \"dirichlet\", got \"random\""},
    {"SiteZeroAlpha", Kind::kSite,
     kS + "[datasets.fm]\nformat = \"idx\"\ntrain_images = \"data/train-images.gz\"\ntrain_labels = \"data/train-labels.gz\"\n"
          "[datasets.fm.partition]\nkind = \"dirichlet\"\nalpha = 0.0\nnum_shares = 2\nshare = 0\n",
     "12:9", "datasets.fm.partition.alpha", "expected a number > 0, got 0"},
    {"SiteTestFractionOne", Kind::kSite,
     kS + "[datasets.t]\nformat = \"csv\"\npath = \"data/table.csv\"\nlabel_column = \"y\"\ntest_fraction = 1.0\n", "10:17",
     "datasets.t.test_fraction", "expected a number in [0, 1), got 1"},
    {"SiteCoordinatorKeyUndecodable", Kind::kSite,
     "name = \"paris\"\ncoordinator = \"tcp://127.0.0.1:7700\"\ncoordinator_public_key = \"keys/bad.pub\"\n"
     "key = \"keys/paris.key\"\ndata_dir = \"d\"\n",
     "3:26", "coordinator_public_key", "not a 40-character Z85 CURVE key"},
    {"SitePolicyUnknownDataset", Kind::kSite, kS + "[policy]\ndatasets = [\"cifar\"]\n", "7:13", "policy.datasets[0]",
     "not a dataset of this site (declared: none), got \"cifar\""},
    {"SiteZeroThreads", Kind::kSite, kS + "threads = 0\n", "6:11", "threads", "expected an integer in [1, 1024], got 0"},
    {"SiteBadDevice", Kind::kSite, kS + "devices = [\"tpu\"]\n", "6:12", "devices[0]",
     "expected \"cpu\", \"cuda\" or \"cuda:N\", got \"tpu\""},
    {"SiteBadArchitecture", Kind::kSite, kS + "[policy]\narchitectures = [\"rnn\"]\n", "7:18", "policy.architectures[0]",
     "expected \"mlp\", \"cnn\" or \"torchscript\""},
    {"SiteBadModelHash", Kind::kSite, kS + "[policy.models]\ninit = \"abc\"\n", "7:8", "policy.models.init",
     "expected \"\" (any version) or a 64-character lowercase SHA-256 hex hash"},
    {"SiteBadName", Kind::kSite,
     "name = \"paris site\"\ncoordinator = \"tcp://127.0.0.1:7700\"\ncoordinator_public_key = \"keys/coordinator.pub\"\n"
     "key = \"keys/paris.key\"\ndata_dir = \"d\"\n",
     "1:8", "name", "expected a name of 1-64 characters"},
    {"SiteSyntaxError", Kind::kSite, kS + "[policy\nmax_epochs = 3\n", "6:8", "syntax error", ""},
    {"SiteDuplicateKey", Kind::kSite, kS + "name = \"lyon\"\n", "6:8", "syntax error", "cannot redefine existing string 'name'"},

    // ---- job
    {"JobClipAboveMax", Kind::kJob, kJ + "max_update_norm = 5\nclip_norm = 10\n", "6:13", "clip_norm",
     "must be <= max_update_norm (5), got 10"},
    {"JobUnknownRule", Kind::kJob, kJ + "[strategy]\nrule = \"fedmedian\"\n", "6:8", "strategy.rule",
     "expected one of \"fedavg\", \"fedprox\", \"fedadam\", \"fedyogi\", \"fedadagrad\", \"median\", \"trimmed_mean\", "
     "\"krum\", \"multi_krum\", got \"fedmedian\""},
    {"JobMinSitesAboveListed", Kind::kJob, kJ + "min_sites = 3\nsites = [\"paris\", \"lyon\"]\n", "5:13", "min_sites",
     "expected at most the number of listed sites (2), got 3"},
    {"JobAllNotAlone", Kind::kJob, kJ + "sites = [\"all\", \"paris\"]\n", "5:9", "sites", "\"all\" must be the only entry"},
    {"JobMomentumOne", Kind::kJob, kJ + "[training]\nmomentum = 1.0\n", "6:12", "training.momentum",
     "expected a number in [0, 1), got 1"},
    {"JobMissingInitialModel", Kind::kJob,
     "name = \"j\"\ninitial_model = \"models/none.safetensors\"\narchitecture = \"cnn\"\ndataset = \"d\"\n", "2:17",
     "initial_model", "file not found: "},
    {"JobUnknownArchitecture", Kind::kJob,
     "name = \"j\"\ninitial_model = \"models/init.safetensors\"\narchitecture = \"transformer\"\ndataset = \"d\"\n", "3:16",
     "architecture", "expected one of \"mlp\", \"cnn\", \"torchscript\", got \"transformer\""},
    {"JobBadOptimizer", Kind::kJob, kJ + "[training]\noptimizer = \"adamw\"\n", "6:13", "training.optimizer",
     "expected one of \"sgd\", \"adam\", got \"adamw\""},
    {"JobBadUpdateDtype", Kind::kJob, kJ + "[training]\nupdate_dtype = \"f16\"\n", "6:16", "training.update_dtype",
     "expected one of \"f32\", \"bf16\", got \"f16\""},
    {"JobFedProxWithoutMu", Kind::kJob, kJ + "[strategy]\nrule = \"fedprox\"\n", "6:8", "strategy.rule",
     "rule \"fedprox\" needs training.prox_mu > 0"},
    {"JobHiddenWithCnn", Kind::kJob, kJ + "hidden = [64]\n", "5:10", "hidden", "only valid with architecture = \"mlp\""},
    {"JobTorchscriptWithoutModule", Kind::kJob,
     "name = \"j\"\ninitial_model = \"models/init.safetensors\"\narchitecture = \"torchscript\"\ndataset = \"d\"\n", "1:1",
     "torchscript_module", "missing required key"},
    {"JobZeroRounds", Kind::kJob, kJ + "rounds = 0\n", "5:10", "rounds", "expected an integer in [1, 1000000], got 0"},
    {"JobNegativeSeed", Kind::kJob, kJ + "seed = -1\n", "5:8", "seed", "expected an integer >= 0, got -1"},
    {"JobFloatEpochs", Kind::kJob, kJ + "[training]\nepochs = 1.5\n", "6:10", "training.epochs",
     "expected an integer in [1, 100000], got 1.5"},
    {"JobTrimBetaHalf", Kind::kJob, kJ + "[strategy]\nrule = \"trimmed_mean\"\ntrim_beta = 0.5\n", "7:13",
     "strategy.trim_beta", "expected a number in [0, 0.5), got 0.5"},
    {"JobKrumTooFewSites", Kind::kJob, kJ + "min_sites = 3\n[strategy]\nrule = \"krum\"\nkrum_f = 1\n", "8:10",
     "strategy.krum_f", "needs min_sites >= 2f+3 = 5, got min_sites = 3"},
    {"JobStrategyNotTable", Kind::kJob, kJ + "strategy = \"fedavg\"\n", "5:12", "strategy",
     "expected a table, got \"fedavg\""},
    {"JobUnknownTrainingKey", Kind::kJob, kJ + "[training]\nlearning_rate = 0.1\n", "6:1", "training.learning_rate",
     "unknown key 'training.learning_rate'"},

    // ---- client
    {"ClientMissingKey", Kind::kClient,
     "coordinator = \"tcp://127.0.0.1:7700\"\ncoordinator_public_key = \"keys/coordinator.pub\"\n", "1:1", "key",
     "missing required key"},
    {"ClientBadEndpoint", Kind::kClient,
     "coordinator = \"localhost:7700\"\ncoordinator_public_key = \"keys/coordinator.pub\"\nkey = \"keys/alice.key\"\n",
     "1:15", "coordinator", "expected \"tcp://HOST:PORT\""},
    {"ClientSecretKeyReadable", Kind::kClient,
     "coordinator = \"tcp://127.0.0.1:7700\"\ncoordinator_public_key = \"keys/coordinator.pub\"\nkey = \"keys/open.key\"\n",
     "3:7", "key", "is accessible by others (mode 0644)"},
    {"ClientPublicKeyGivenForSecret", Kind::kClient,
     "coordinator = \"tcp://127.0.0.1:7700\"\ncoordinator_public_key = \"keys/coordinator.key\"\nkey = \"keys/alice.key\"\n",
     "2:26", "coordinator_public_key", "holds a secret key; give the public key file (.pub) instead"},
    {"ClientUnknownKey", Kind::kClient, kL + "secret_key = \"keys/alice.key\"\n", "4:1", "secret_key",
     "unknown key 'secret_key'"},
};

INSTANTIATE_TEST_SUITE_P(Config, BadConfig, ::testing::ValuesIn(kBadCases),
                         [](const ::testing::TestParamInfo<BadCase>& i) { return std::string(i.param.label); });

}  // namespace
}  // namespace hanse
