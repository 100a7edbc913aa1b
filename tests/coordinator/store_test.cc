#include "coordinator/store.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <bit>
#include <cmath>

#include "coordinator/ledger.h"
#include "test_util.h"

namespace hanse::coord {
namespace {

using hanse::testing::TempDir;
using hanse::testing::ToString;

std::unique_ptr<Store> OpenStore(const TempDir& dir) {
  auto s = Store::Open(dir / "state.db");
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return std::move(s).value();
}

JobRecord SampleJob(const std::string& id) {
  JobRecord j;
  j.job_id = id;
  j.name = "fmnist";
  j.lead = "alice";
  j.state = JobState::kRunning;
  j.job_toml = "name = \"fmnist\"\n";
  j.file_name = "job.toml";
  j.initial_model = std::string(64, 'a');
  j.initial_size = 123;
  j.rounds_total = 3;
  j.model_hash = j.initial_model;
  j.model_size = 123;
  j.created_unix = 1000;
  return j;
}

TEST(Store, UsesWalAndFullSync) {
  TempDir dir;
  auto store = OpenStore(dir);
  // The -wal file appears with the first write in WAL mode.
  Store::Transaction tx(*store);
  ASSERT_OK(tx.begin_status());
  ASSERT_OK(store->PutJob(SampleJob("job-000001")));
  ASSERT_OK(tx.Commit());
  EXPECT_TRUE(std::filesystem::exists(dir / "state.db-wal"));
  auto ic = store->IntegrityCheck();
  ASSERT_TRUE(ic.ok());
  EXPECT_EQ(*ic, "ok");
}

TEST(Store, JobsRoundTripAndSurviveReopen) {
  TempDir dir;
  {
    auto store = OpenStore(dir);
    Store::Transaction tx(*store);
    auto id = store->NextJobId();
    ASSERT_TRUE(id.ok());
    EXPECT_EQ(*id, "job-000001");
    ASSERT_OK(store->PutJob(SampleJob(*id)));
    ASSERT_OK(tx.Commit());
    Store::Transaction tx2(*store);
    auto id2 = store->NextJobId();
    ASSERT_TRUE(id2.ok());
    EXPECT_EQ(*id2, "job-000002");
  }
  auto store = OpenStore(dir);
  auto j = store->GetJob("job-000001");
  ASSERT_TRUE(j.ok());
  ASSERT_TRUE(j->has_value());
  EXPECT_EQ((*j)->lead, "alice");
  EXPECT_EQ((*j)->state, JobState::kRunning);
  EXPECT_EQ((*j)->rounds_total, 3u);
  auto missing = store->GetJob("job-000009");
  ASSERT_TRUE(missing.ok());
  EXPECT_FALSE(missing->has_value());
}

TEST(Store, UncommittedTransactionIsRolledBack) {
  TempDir dir;
  auto store = OpenStore(dir);
  {
    Store::Transaction tx(*store);
    ASSERT_OK(store->PutJob(SampleJob("job-000001")));
  }
  auto jobs = store->ListJobs();
  ASSERT_TRUE(jobs.ok());
  EXPECT_TRUE(jobs->empty());
}

TEST(Store, RoundsAndRoundSitesRoundTrip) {
  TempDir dir;
  auto store = OpenStore(dir);
  RoundRecord r;
  r.job_id = "job-000001";
  r.round = 2;
  r.attempt = 1;
  r.state = RoundState::kCollecting;
  r.deadline_left_ms = 4321;
  r.model_in = std::string(64, 'b');
  ASSERT_OK(store->PutRound(r));
  r.state = RoundState::kAggregating;
  ASSERT_OK(store->PutRound(r));
  for (const char* site : {"paris", "berlin"}) {
    RoundSiteRecord s;
    s.job_id = r.job_id;
    s.round = 2;
    s.site = site;
    s.task_id = std::string("t-") + site;
    s.accepted = true;
    s.examples = 10;
    ASSERT_OK(store->PutRoundSite(s));
  }
  auto got = store->GetRound("job-000001", 2);
  ASSERT_TRUE(got.ok());
  ASSERT_TRUE(got->has_value());
  EXPECT_EQ((*got)->state, RoundState::kAggregating);
  EXPECT_EQ((*got)->deadline_left_ms, 4321);
  auto sites = store->ListRoundSites("job-000001", 2);
  ASSERT_TRUE(sites.ok());
  ASSERT_EQ(sites->size(), 2u);
  EXPECT_EQ((*sites)[0].site, "berlin") << "canonical order by site name";
  auto jobs = store->JobsOfSite("paris");
  ASSERT_TRUE(jobs.ok());
  ASSERT_EQ(jobs->size(), 1u);
  EXPECT_TRUE(store->JobsOfSite("lyon")->empty());
}

TEST(Store, UpdateKeyIsUnique) {
  TempDir dir;
  auto store = OpenStore(dir);
  UpdateRecord u{"job-000001", 1, "paris", "task-1", std::string(64, 'c'), 10, 5, 1.0, false, std::nullopt};
  ASSERT_OK(store->PutUpdate(u));
  u.update_hash = std::string(64, 'd');
  Status again = store->PutUpdate(u);
  EXPECT_EQ(again.code(), Code::kAlreadyExists);
  auto got = store->GetUpdate("job-000001", 1, "paris", "task-1");
  ASSERT_TRUE(got.ok());
  ASSERT_TRUE(got->has_value());
  EXPECT_EQ((*got)->update_hash, std::string(64, 'c')) << "the first update stays";
  u.task_id = "task-2";
  EXPECT_OK(store->PutUpdate(u));
  EXPECT_EQ(store->ListUpdates("job-000001")->size(), 2u);
}

// The validated L2 norm is stored with the update and read back bit for bit
// (aggregation trusts it instead of recomputing); none stays none.
TEST(Store, UpdateNormRoundTripsBitwise) {
  TempDir dir;
  // Not a "round" double: every bit of the mantissa matters.
  const double norm = std::nextafter(std::sqrt(2.0) * 1e-3, 1.0);
  {
    auto store = OpenStore(dir);
    UpdateRecord u{"job-000001", 1, "paris", "task-1", std::string(64, 'c'), 10, 5, 1.0, false, norm};
    ASSERT_OK(store->PutUpdate(u));
    u.site = "berlin";
    u.task_id = "task-2";
    u.l2_norm = std::nullopt;
    ASSERT_OK(store->PutUpdate(u));
    auto got = store->GetUpdate("job-000001", 1, "paris", "task-1");
    ASSERT_TRUE(got.ok() && got->has_value());
    ASSERT_TRUE((*got)->l2_norm.has_value());
    EXPECT_EQ(std::bit_cast<uint64_t>(*(*got)->l2_norm), std::bit_cast<uint64_t>(norm));
  }
  // And after a restart.
  auto store = OpenStore(dir);
  auto all = store->ListUpdates("job-000001");
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 2u);
  for (const auto& u : *all) {
    if (u.site == "paris") {
      ASSERT_TRUE(u.l2_norm.has_value());
      EXPECT_EQ(std::bit_cast<uint64_t>(*u.l2_norm), std::bit_cast<uint64_t>(norm));
    } else {
      EXPECT_FALSE(u.l2_norm.has_value()) << "no norm is stored as NULL, not 0";
    }
  }
}

// A database written before updates had an l2_norm column still opens: the
// column is added, old rows read no norm (aggregation then computes it), new
// rows keep theirs, and opening again changes nothing.
TEST(Store, OldDatabaseWithoutNormColumnOpens) {
  TempDir dir;
  const auto file = dir / "state.db";
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(file.c_str(), &db), SQLITE_OK);
    const char* old_schema = R"sql(
CREATE TABLE updates(
  job_id TEXT NOT NULL, round INTEGER NOT NULL, site TEXT NOT NULL, task_id TEXT NOT NULL,
  update_hash TEXT NOT NULL, update_size INTEGER NOT NULL, examples INTEGER NOT NULL,
  received_unix REAL NOT NULL, deleted INTEGER NOT NULL,
  PRIMARY KEY(job_id, round, site, task_id));
INSERT INTO updates VALUES('job-000001', 1, 'paris', 'task-1', 'cccc', 10, 5, 1.0, 0);
)sql";
    char* err = nullptr;
    EXPECT_EQ(sqlite3_exec(db, old_schema, nullptr, nullptr, &err), SQLITE_OK) << (err ? err : "");
    sqlite3_free(err);
    sqlite3_close(db);
  }
  for (int open = 0; open < 2; ++open) {
    auto store = OpenStore(dir);
    ASSERT_TRUE(store);
    auto old = store->GetUpdate("job-000001", 1, "paris", "task-1");
    ASSERT_TRUE(old.ok() && old->has_value()) << ToString(old);
    EXPECT_EQ((*old)->examples, 5u);
    EXPECT_FALSE((*old)->l2_norm.has_value());
    if (open == 0) {
      ASSERT_OK(store->PutUpdate({"job-000001", 1, "berlin", "task-2", "dddd", 10, 7, 2.0, false, 3.5}));
    }
    auto added = store->GetUpdate("job-000001", 1, "berlin", "task-2");
    ASSERT_TRUE(added.ok() && added->has_value()) << ToString(added);
    EXPECT_EQ((*added)->l2_norm, std::optional<double>(3.5));
    auto ic = store->IntegrityCheck();
    ASSERT_TRUE(ic.ok());
    EXPECT_EQ(*ic, "ok");
  }
}

TEST(Store, HashInUseFollowsCheckpointsAndUpdates) {
  TempDir dir;
  auto store = OpenStore(dir);
  std::string h(64, 'e');
  EXPECT_FALSE(*store->HashInUse(h));
  ASSERT_OK(store->PutCheckpoint({"job-000001", 1, h, 10, false}));
  EXPECT_TRUE(*store->HashInUse(h));
  ASSERT_OK(store->MarkCheckpointDeleted("job-000001", 1));
  EXPECT_FALSE(*store->HashInUse(h));
  ASSERT_OK(store->PutUpdate({"job-000001", 1, "paris", "t", h, 10, 5, 1.0, false, std::nullopt}));
  EXPECT_TRUE(*store->HashInUse(h));
  ASSERT_OK(store->MarkUpdateDeleted("job-000001", 1, "paris", "t"));
  EXPECT_FALSE(*store->HashInUse(h));
}

TEST(Store, TransitionsAreLoggedInOrder) {
  TempDir dir;
  auto store = OpenStore(dir);
  ASSERT_OK(store->AddTransition({"j", 1, 0, "selecting", "sites_selected", "distributing", 1.0}));
  ASSERT_OK(store->AddTransition({"j", 1, 0, "distributing", "tasks_sent", "training", 2.0}));
  auto t = store->ListTransitions("j");
  ASSERT_TRUE(t.ok());
  ASSERT_EQ(t->size(), 2u);
  EXPECT_EQ((*t)[1].to, "training");
}

UsageRecord U(int64_t t, const std::string& job, const std::string& lead, const std::string& site,
              const std::string& task, const std::string& kind, double cpu, double gpu) {
  UsageRecord u;
  u.unix_time = t;
  u.job_id = job;
  u.lead = lead;
  u.site = site;
  u.round = 1;
  u.kind = kind;
  u.task_id = task;
  u.cpu_seconds = cpu;
  u.gpu_seconds = gpu;
  u.device = gpu > 0 ? "cuda" : "cpu";
  return u;
}

TEST(Ledger, SumsByGroupPeriodAndPrincipal) {
  TempDir dir;
  auto store = OpenStore(dir);
  ASSERT_TRUE(*store->AddUsage(U(100, "j1", "alice", "paris", "t1", "train", 3600, 0)));
  ASSERT_TRUE(*store->AddUsage(U(200, "j1", "alice", "lyon", "t2", "train", 0, 7200)));
  ASSERT_TRUE(*store->AddUsage(U(300, "j2", "bob", "paris", "t3", "train", 1800, 1800)));
  ASSERT_TRUE(*store->AddUsage(U(300, "j2", "bob", "paris", "t3", "evaluate", 36, 0)));
  // A resent result of the same task is not billed twice.
  EXPECT_FALSE(*store->AddUsage(U(400, "j2", "bob", "paris", "t3", "train", 1800, 1800)));

  CostRates rates;
  rates.gpu_hour = 2.0;
  rates.cpu_hour = 0.1;
  UsageQuery q;
  q.by = UsageGroupBy::kSite;
  auto rows = QueryLedger(*store, q, rates);
  ASSERT_TRUE(rows.ok());
  ASSERT_EQ(rows->size(), 2u);
  EXPECT_EQ((*rows)[0].key, "lyon");
  EXPECT_DOUBLE_EQ((*rows)[0].gpu_hours, 2.0);
  EXPECT_DOUBLE_EQ((*rows)[0].cost, 4.0);
  EXPECT_EQ((*rows)[1].key, "paris");
  EXPECT_EQ((*rows)[1].tasks, 3u);
  EXPECT_DOUBLE_EQ((*rows)[1].cpu_hours, 1.51);
  EXPECT_DOUBLE_EQ((*rows)[1].gpu_hours, 0.5);
  EXPECT_NEAR((*rows)[1].cost, 1.51 * 0.1 + 0.5 * 2.0, 1e-12);

  q.by = UsageGroupBy::kLead;
  q.from_unix = 150;
  q.to_unix = 300;  // exclusive
  rows = QueryLedger(*store, q, rates);
  ASSERT_TRUE(rows.ok());
  ASSERT_EQ(rows->size(), 1u);
  EXPECT_EQ((*rows)[0].key, "alice");
  EXPECT_EQ((*rows)[0].tasks, 1u);

  UsageQuery mine;
  mine.by = UsageGroupBy::kJob;
  mine.only_site = "lyon";
  rows = QueryLedger(*store, mine, rates);
  ASSERT_TRUE(rows.ok());
  ASSERT_EQ(rows->size(), 1u);
  EXPECT_EQ((*rows)[0].key, "j1");

  UsageQuery bob;
  bob.by = UsageGroupBy::kJob;
  bob.only_lead = "bob";
  rows = QueryLedger(*store, bob, rates);
  ASSERT_TRUE(rows.ok());
  ASSERT_EQ(rows->size(), 1u);
  EXPECT_EQ((*rows)[0].key, "j2");
}

TEST(Store, RefusesAFileThatIsNotADatabase) {
  TempDir dir;
  hanse::testing::WriteFile(dir / "state.db", std::string(4096, 'x'));
  auto s = Store::Open(dir / "state.db");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("state.db"), std::string::npos) << s.status().ToString();
}

}  // namespace
}  // namespace hanse::coord
