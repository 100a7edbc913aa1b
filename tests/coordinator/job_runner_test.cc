// JobRunner as a unit, with a fake host: the L2 norm validated when an update
// arrives is stored with it and handed to the aggregation (no second norm pass),
// also after a restart, and gives bitwise the model the recomputing path gives.
#include "coordinator/job_runner.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <bit>
#include <random>

#include "aggregation/agg_test_util.h"
#include "test_util.h"

namespace hanse::coord {
namespace {

using agg::testing::T;
using hanse::testing::TempDir;
using hanse::testing::ToString;

class FakeHost : public RunnerHost {
 public:
  bool SiteAlive(const std::string&) const override { return true; }
  void QueueTask(const std::string& site, const QueuedTask& task) override { tasks[site] = task; }
  void CancelTasks(const std::string&, std::optional<uint32_t>, std::optional<TaskType>,
                   const std::string&) override {}
  void Publish(const proto::RoundEvent&) override {}
  BlobStore& blobs() override { return *blob_store; }
  Store& store() override { return *db; }

  std::unique_ptr<BlobStore> blob_store;
  std::unique_ptr<Store> db;
  std::map<std::string, QueuedTask> tasks;  // last train task queued, by site
};

// Global model: a tensor over two aggregation blocks (65536 elements each) and
// many validator stages, a small one, and a non-float one that is copied.
std::vector<T> Global() {
  std::vector<float> w(300 * 300), b(64);
  for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(i % 97) * 0.01f - 0.4f;
  for (size_t i = 0; i < b.size(); ++i) b[i] = 0.1f * static_cast<float>(i);
  return {{"fc.weight", {300, 300}, w}, {"fc.bias", {64}, b}, {"steps", {1}, {3}, DType::kI64}};
}

// A delta of roughly norm sigma * 300.
std::vector<T> Delta(uint32_t seed, float sigma, DType dtype) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> w(300 * 300), b(64);
  for (auto& x : w) x = d(rng);
  for (auto& x : b) x = d(rng);
  return {{"fc.weight", {300, 300}, w, dtype}, {"fc.bias", {64}, b, dtype}};
}

struct Site {
  std::string name;
  float sigma;
  DType dtype;
  uint64_t examples;
};
// Norms about 3, 0.6 and 1.5 against clip_norm 1: two are clipped. One BF16 update.
const std::vector<Site> kSites = {{"a", 0.01f, DType::kF32, 100},
                                  {"b", 0.002f, DType::kBF16, 300},
                                  {"c", 0.005f, DType::kF32, 50}};

enum class Restart { kNone, kResume, kResumeWithoutNorms };

struct Case {
  std::string rule;
  Restart restart;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.rule << "/" << static_cast<int>(c.restart); }

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  const char* r = info.param.restart == Restart::kNone     ? "no_restart"
                  : info.param.restart == Restart::kResume ? "resume"
                                                           : "resume_old_rows";
  return info.param.rule + "_" + r;
}

class RunnerNormTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    auto b = BlobStore::Open(dir_ / "blobs");
    ASSERT_TRUE(b.ok()) << ToString(b);
    host_.blob_store = std::move(b).value();
    OpenDb();
    auto h = host_.blob_store->Put(agg::testing::Bytes(Global()));
    ASSERT_TRUE(h.ok()) << ToString(h);
    job_.job_id = "job-000001";
    job_.name = "norms";
    job_.lead = "alice";
    job_.file_name = "job.toml";
    job_.job_toml = "name = \"norms\"\ninitial_model = \"model.safetensors\"\narchitecture = \"mlp\"\n"
                    "dataset = \"synthetic\"\nrounds = 1\nmin_sites = 3\nround_deadline_s = 600\n"
                    "evaluate = false\nmax_update_norm = 10\nclip_norm = 1\nseed = 7\n"
                    "[strategy]\nrule = \"" + GetParam().rule + "\"\n";
    job_.initial_model = *h;
    job_.initial_size = *host_.blob_store->Size(*h);
  }
  void OpenDb() {
    auto s = Store::Open(dir_ / "state.db");
    ASSERT_TRUE(s.ok()) << ToString(s);
    host_.db = std::move(s).value();
  }

  // The same request the runner builds, over the update files as they are now.
  Result<agg::AggregateResult> Reference(const agg::ModelSchema& schema, const JobConfig& config,
                                         const std::map<std::string, std::optional<double>>& norms) {
    agg::AggregateRequest req;
    req.global_model = host_.blob_store->PathOf(job_.initial_model);
    req.schema = schema;
    HANSE_ASSIGN_OR_RETURN(req.options.rule, agg::ParseRule(config.strategy.rule));
    req.options.server_lr = config.strategy.server_lr;
    req.options.beta1 = config.strategy.beta1;
    req.options.beta2 = config.strategy.beta2;
    req.options.tau = config.strategy.tau;
    req.options.trim_beta = config.strategy.trim_beta;
    req.options.krum_f = config.strategy.krum_f;
    req.options.krum_m = config.strategy.krum_m;
    req.options.max_update_norm = config.max_update_norm;
    req.options.clip_norm = config.clip_norm;
    for (const auto& s : kSites) {
      req.updates.push_back(
          agg::UpdateRef{s.name, s.examples, host_.blob_store->PathOf(hashes_.at(s.name)), norms.at(s.name)});
    }
    return agg::Aggregate(req, *host_.blob_store);
  }

  TempDir dir_;
  FakeHost host_;
  JobRecord job_;
  std::map<std::string, std::string> hashes_;  // update blob by site
};

TEST_P(RunnerNormTest, ValidatedNormIsStoredAndUsedAndGivesTheSameModel) {
  const auto now = SteadyClock::now();
  auto config = ParseJobConfig(job_.job_toml, job_.file_name, {});
  ASSERT_TRUE(config.ok()) << ToString(config);
  const std::vector<std::string> known = {"a", "b", "c"};
  auto created = JobRunner::Create(job_, *config, host_, known, RunnerOptions{}, now);
  ASSERT_TRUE(created.ok()) << ToString(created);
  std::unique_ptr<JobRunner> runner = std::move(created).value();
  runner->Tick(now);  // every site is alive: selected and tasked
  ASSERT_TRUE(IsCollecting(runner->round().state)) << RoundStateName(runner->round().state);
  const agg::ModelSchema schema = runner->schema();

  std::map<std::string, std::optional<double>> validated, none;
  for (const auto& s : kSites) {
    ASSERT_TRUE(host_.tasks.count(s.name)) << s.name;
    auto hash = host_.blob_store->Put(agg::testing::Bytes(Delta(static_cast<uint32_t>(s.examples), s.sigma, s.dtype)));
    ASSERT_TRUE(hash.ok()) << ToString(hash);
    hashes_[s.name] = *hash;
    // What the coordinator does when the blob has arrived.
    auto v = agg::ValidateUpdateFile(host_.blob_store->PathOf(*hash), schema, config->max_update_norm);
    ASSERT_TRUE(v.ok()) << ToString(v);
    validated[s.name] = v->l2_norm;
    none[s.name] = std::nullopt;
    proto::Update u;
    u.task_id = host_.tasks[s.name].task_id;
    u.job_id = job_.job_id;
    u.round = 1;
    u.update_hash = *hash;
    u.update_size = *host_.blob_store->Size(*hash);
    u.examples = s.examples;
    auto accepted = runner->AcceptUpdate(s.name, u, *v, now);
    ASSERT_TRUE(accepted.ok()) << ToString(accepted);
    ASSERT_FALSE(accepted->has_value()) << (*accepted)->text;
  }

  // The stored norm is the validator's, bit for bit.
  auto stored = host_.db->ListUpdates(job_.job_id);
  ASSERT_TRUE(stored.ok()) << ToString(stored);
  ASSERT_EQ(stored->size(), kSites.size());
  for (const auto& u : *stored) {
    ASSERT_TRUE(u.l2_norm.has_value()) << u.site;
    EXPECT_EQ(std::bit_cast<uint64_t>(*u.l2_norm), std::bit_cast<uint64_t>(*validated.at(u.site))) << u.site;
  }

  // The library: the stored norms give bitwise the model the recomputing pass gives.
  auto with_norms = Reference(schema, *config, validated);
  ASSERT_TRUE(with_norms.ok()) << ToString(with_norms);
  auto recomputed = Reference(schema, *config, none);
  ASSERT_TRUE(recomputed.ok()) << ToString(recomputed);
  EXPECT_EQ(with_norms->model_hash, recomputed->model_hash);
  EXPECT_EQ(with_norms->state_hash, recomputed->state_hash);
  EXPECT_EQ(recomputed->clipped_sites, (std::vector<std::string>{"a", "c"})) << "the job must clip";
  EXPECT_EQ(with_norms->clipped_sites, recomputed->clipped_sites);

  const Restart restart = GetParam().restart;
  if (restart != Restart::kNone) {
    runner.reset();
    host_.db.reset();
    if (restart == Restart::kResumeWithoutNorms) {
      // Rows as a coordinator from before the l2_norm column left them.
      sqlite3* db = nullptr;
      ASSERT_EQ(sqlite3_open((dir_ / "state.db").c_str(), &db), SQLITE_OK);
      EXPECT_EQ(sqlite3_exec(db, "UPDATE updates SET l2_norm=NULL", nullptr, nullptr, nullptr), SQLITE_OK);
      sqlite3_close(db);
    }
    OpenDb();
    auto job = host_.db->GetJob(job_.job_id);
    ASSERT_TRUE(job.ok() && job->has_value()) << ToString(job);
    auto resumed = JobRunner::Resume(**job, host_, known, RunnerOptions{}, now);
    ASSERT_TRUE(resumed.ok()) << ToString(resumed);
    runner = std::move(resumed).value();
  }

  // Probe which norm the runner hands over: change update a's values behind
  // its back (same size, twice the norm). A runner that passes the validated
  // norm clips a with the stale norm; one that passes none recomputes it.
  {
    auto delta = Delta(100, 0.01f, DType::kF32);
    for (auto& t : delta)
      for (auto& x : t.values) x *= 2;
    const auto path = host_.blob_store->PathOf(hashes_.at("a"));
    std::filesystem::remove(path);
    hanse::testing::WriteFile(path, agg::testing::Bytes(delta));
  }
  const bool expect_norms = restart != Restart::kResumeWithoutNorms;
  auto expected = Reference(schema, *config, expect_norms ? validated : none);
  ASSERT_TRUE(expected.ok()) << ToString(expected);
  auto other = Reference(schema, *config, expect_norms ? none : validated);
  ASSERT_TRUE(other.ok()) << ToString(other);
  ASSERT_NE(expected->model_hash, other->model_hash) << "the probe must tell the two paths apart";

  for (int i = 0; i < 5 && runner->round().model_out.empty() && !runner->finished(); ++i) runner->Tick(now);
  ASSERT_FALSE(runner->round().model_out.empty()) << RoundStateName(runner->round().state) << " "
                                                  << runner->job().reason;
  EXPECT_EQ(runner->round().model_out, expected->model_hash);
  EXPECT_EQ(runner->round().opt_state_out, expected->state_hash.value_or(""));
}

INSTANTIATE_TEST_SUITE_P(Rules, RunnerNormTest,
                         ::testing::Values(Case{"fedavg", Restart::kNone}, Case{"fedavg", Restart::kResume},
                                           Case{"fedavg", Restart::kResumeWithoutNorms},
                                           Case{"fedadam", Restart::kNone}, Case{"fedadam", Restart::kResume},
                                           Case{"trimmed_mean", Restart::kResume}),
                         CaseName);

}  // namespace
}  // namespace hanse::coord
