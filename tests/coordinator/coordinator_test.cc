// Integration tests: a real hanse-coordinator process on 127.0.0.1, driven by
// test sites that speak the real protocol over CURVE and return deterministic
// synthetic updates.
#include <gtest/gtest.h>

#include <algorithm>

#include "coordinator/store.h"
#include "harness.h"

namespace hanse::testing {
namespace {

using namespace std::chrono_literals;

template <class T>
T Expect(const Result<proto::Message>& r) {
  if (!r.ok()) throw std::runtime_error("call failed: " + r.status().ToString());
  if (const auto* rj = std::get_if<proto::Reject>(&*r))
    throw std::runtime_error(std::string("rejected: ") + proto::ReasonName(rj->code) + ": " + rj->text);
  const T* v = std::get_if<T>(&*r);
  if (!v) throw std::runtime_error(std::string("unexpected reply ") + proto::KindName(*r));
  return *v;
}

std::optional<proto::Reject> RejectOf(const Result<proto::Message>& r) {
  if (!r.ok()) return std::nullopt;
  if (const auto* rj = std::get_if<proto::Reject>(&*r)) return *rj;
  return std::nullopt;
}

std::string SubmitOk(AdminClient& c, Harness& h, const std::string& toml) {
  auto model = h.dir() / "model.safetensors";
  if (!std::filesystem::exists(model)) h.WriteModel(1000);
  return Expect<proto::JobSubmitted>(c.Submit(toml, model)).job_id;
}

proto::JobStatus Status(AdminClient& c, const std::string& job) {
  return Expect<proto::JobStatus>(c.Call(proto::GetJobStatus{job}));
}

bool WaitJobState(AdminClient& c, const std::string& job, proto::JobState state, std::chrono::milliseconds t) {
  return WaitFor([&] { return Status(c, job).summary.state == state; }, t);
}

int CountReason(const TestSite::Stats& s, proto::Reason r) {
  return static_cast<int>(std::count_if(s.rejects.begin(), s.rejects.end(),
                                        [&](const proto::Reject& x) { return x.code == r; }));
}

TEST(Coordinator, RunsTwoRoundsWhenQuorumIsMet) {
  Harness h({.sites = 2});
  h.Start();
  auto s0 = h.MakeSite(0);
  auto s1 = h.MakeSite(1);
  auto alice = h.Alice();
  std::string job = SubmitOk(*alice, h, Harness::JobToml("quorum", 2, 2, 60));
  EXPECT_EQ(job, "job-000001");
  ASSERT_TRUE(Expect<proto::Ack>(alice->Call(proto::WatchJob{job})).ref == job);
  ASSERT_TRUE(alice->WaitEvents(
      [](const auto& ev) { return !ev.empty() && ev.back().kind == "job_ended"; }, 60s))
      << h.Log();
  auto st = Status(*alice, job);
  EXPECT_EQ(st.summary.state, proto::JobState::kSucceeded) << st.summary.reason;
  EXPECT_EQ(st.summary.rounds_done, 2u);
  ASSERT_EQ(st.rounds.size(), 2u);
  for (const auto& r : st.rounds) {
    EXPECT_EQ(r.state, "committed");
    EXPECT_EQ(r.expected, 2u);
    EXPECT_EQ(r.answered, 2u);
    ASSERT_EQ(r.sites.size(), 2u);
    EXPECT_EQ(r.sites[0].examples, 100u);
    EXPECT_EQ(r.sites[1].examples, 110u);
    EXPECT_DOUBLE_EQ(r.eval_accuracy, 0.8);
    EXPECT_EQ(r.eval_examples, 100u);
    EXPECT_FALSE(r.model_hash.empty());
  }
  EXPECT_NE(st.rounds[0].model_hash, st.rounds[1].model_hash);
  // Progress and commits were streamed to the watcher.
  alice->WaitEvents([](const auto& ev) {
    return std::count_if(ev.begin(), ev.end(), [](const auto& e) { return e.kind == "committed"; }) == 2;
  }, 1s);
  auto fetched = alice->Fetch(job, std::nullopt);
  ASSERT_TRUE(fetched.ok()) << fetched.status().ToString();
  EXPECT_EQ(*fetched, st.rounds[1].model_hash);
  auto initial = alice->Fetch(job, 0u);
  ASSERT_TRUE(initial.ok()) << initial.status().ToString();
  EXPECT_NE(*initial, *fetched);
  EXPECT_EQ(h.Stop(), 0) << h.Log();
}

// A TorchScript job: the lead sends the module with the model, the coordinator
// checks it is an archive, stores it with the job and names it in every task;
// only the sites given such a task may read it.
TEST(Coordinator, CarriesTheTorchScriptModuleOfAJobToItsSites) {
  Harness h({.sites = 2});
  h.Start();
  h.WriteModel(100);
  auto alice = h.Alice();
  std::string toml = Harness::JobToml("ts", 2, 1, 3);
  toml.replace(toml.find("architecture = \"mlp\""), 20, "architecture = \"torchscript\"\n"
                                                        "torchscript_module = \"m.pt\"");
  // Not an archive: refused naming the key, before any job exists.
  WriteFile(h.dir() / "junk.pt", "def forward(self, x): return x");
  auto r = RejectOf(alice->Submit(toml, h.dir() / "model.safetensors", "ts.toml", h.dir() / "junk.pt"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->code, proto::Reason::kInvalidJob);
  EXPECT_NE(r->text.find("torchscript_module"), std::string::npos) << r->text;
  // No module at all for a torchscript job.
  r = RejectOf(alice->Submit(toml, h.dir() / "model.safetensors", "ts.toml"));
  ASSERT_TRUE(r);
  EXPECT_NE(r->text.find("torchscript_module"), std::string::npos) << r->text;
  // A module with a built-in architecture.
  WriteFile(h.dir() / "m.pt", std::string("PK\x03\x04", 4) + std::string(3000, 'z'));
  r = RejectOf(alice->Submit(Harness::JobToml("mlp", 1, 1, 60), h.dir() / "model.safetensors", "mlp.toml",
                             h.dir() / "m.pt"));
  ASSERT_TRUE(r);
  EXPECT_NE(r->text.find("architecture"), std::string::npos) << r->text;
  EXPECT_EQ(Expect<proto::JobList>(alice->Call(proto::ListJobs{})).jobs.size(), 0u);

  auto s0 = h.MakeSite(0);
  std::string job =
      Expect<proto::JobSubmitted>(alice->Submit(toml, h.dir() / "model.safetensors", "ts.toml", h.dir() / "m.pt"))
          .job_id;
  auto module_hash = alice->store().PutFile(h.dir() / "m.pt");
  ASSERT_TRUE(module_hash.ok());
  ASSERT_TRUE(s0->WaitFor([](const auto& st) { return !st.modules.empty(); }, 30s)) << h.Log();
  auto [hash, size] = s0->stats().modules.begin()->second;
  EXPECT_EQ(hash, *module_hash);
  EXPECT_EQ(size, 3004u);
  // The site given the task reads the module; bob does not.
  auto site0 = h.SiteClient(0);
  auto chunk = site0->Call(proto::BlobRequest{hash, 0, 1, 0});
  ASSERT_TRUE(chunk.ok()) << chunk.status().ToString();
  ASSERT_TRUE(std::holds_alternative<proto::BlobChunk>(*chunk)) << proto::KindName(*chunk);
  EXPECT_EQ(std::get<proto::BlobChunk>(*chunk).total_size, 3004u);
  auto bob = h.Bob();
  r = RejectOf(bob->Call(proto::BlobRequest{hash, 0, 1, 0}));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->code, proto::Reason::kUnauthorized);
  // The module is stored with the job: after a restart the tasks still name it.
  h.Kill();
  s0.reset();
  h.Start();
  auto s0b = h.MakeSite(0);
  ASSERT_TRUE(s0b->WaitFor([](const auto& st) { return !st.modules.empty(); }, 30s)) << h.Log();
  EXPECT_EQ(s0b->stats().modules.begin()->second.first, *module_hash);
  auto alice2 = h.Alice();
  EXPECT_TRUE(WaitJobState(*alice2, job, proto::JobState::kSucceeded, 60s)) << h.Log();
}

TEST(Coordinator, ClosesAtDeadlineWithMinSitesAndRejectsTheLateUpdate) {
  Harness h({.sites = 3});
  h.Start();
  auto s0 = h.MakeSite(0);
  auto s1 = h.MakeSite(1);
  auto slow = h.MakeSite(2, [](TestSiteOptions& o) {
    o.train_delay = 4000ms;
    o.ignore_cancel = true;
  });
  auto alice = h.Alice();
  std::string job = SubmitOk(*alice, h, Harness::JobToml("deadline", 1, 2, 2));
  ASSERT_TRUE(WaitJobState(*alice, job, proto::JobState::kSucceeded, 30s)) << h.Log();
  auto st = Status(*alice, job);
  ASSERT_EQ(st.rounds.size(), 1u);
  EXPECT_EQ(st.rounds[0].answered, 2u);
  EXPECT_EQ(st.rounds[0].sites[2].state, "dropped");
  // The slow site was told to stop, then its late update is refused and never counted.
  ASSERT_TRUE(slow->WaitFor([](const auto& s) { return !s.cancels.empty(); }, 10s));
  ASSERT_TRUE(slow->WaitFor([](const auto& s) { return CountReason(s, proto::Reason::kUpdateLate) == 1; }, 15s));
  EXPECT_EQ(Status(*alice, job).rounds[0].answered, 2u);
}

TEST(Coordinator, RetriesWithoutMinSitesThenFailsTheJobWithAReason) {
  Harness h({.sites = 2});
  h.Start();
  auto s0 = h.MakeSite(0);
  auto slow = h.MakeSite(1, [](TestSiteOptions& o) { o.train_delay = 60000ms; });
  auto alice = h.Alice();
  std::string job = SubmitOk(*alice, h, Harness::JobToml("retry", 1, 2, 1, "", 1));
  ASSERT_TRUE(WaitJobState(*alice, job, proto::JobState::kFailed, 30s)) << h.Log();
  auto st = Status(*alice, job);
  EXPECT_NE(st.summary.reason.find("round 1 failed after 2 attempts"), std::string::npos) << st.summary.reason;
  EXPECT_NE(st.summary.reason.find("min_sites is 2"), std::string::npos) << st.summary.reason;
  // The retry reused site0's stored update: it was asked to train once.
  auto tasks = s0->stats().tasks;
  EXPECT_EQ(std::count_if(tasks.begin(), tasks.end(), [](const std::string& t) { return t.find("/train") != std::string::npos; }), 1);
  EXPECT_NE(h.Log().find("retrying (attempt 1 of 1)"), std::string::npos);
}

TEST(Coordinator, GoesOnWithoutASiteThatDropsMidRound) {
  Harness h({.sites = 3});
  h.Start();
  auto s0 = h.MakeSite(0);
  auto s1 = h.MakeSite(1);
  auto gone = h.MakeSite(2, [](TestSiteOptions& o) { o.disconnect_at_task = 1; });
  auto alice = h.Alice();
  std::string job = SubmitOk(*alice, h, Harness::JobToml("drop", 2, 2, 2));
  ASSERT_TRUE(WaitJobState(*alice, job, proto::JobState::kSucceeded, 40s)) << h.Log();
  auto st = Status(*alice, job);
  ASSERT_EQ(st.rounds.size(), 2u);
  EXPECT_EQ(st.rounds[0].sites[2].state, "dropped");
  EXPECT_EQ(st.rounds[0].answered, 2u);
  EXPECT_EQ(st.rounds[1].sites.size(), 2u) << "round 2 selects only the sites still alive";
}

TEST(Coordinator, RejectsBadUpdatesWithTheirReasonAndNeverCountsThem) {
  Harness h({.sites = 3});
  h.Start();
  auto good = h.MakeSite(0, [](TestSiteOptions& o) { o.train_delay = 1500ms; });
  auto nan = h.MakeSite(1, [](TestSiteOptions& o) { o.mode = UpdateMode::kNaN; });
  auto outsider = h.MakeSite(2);
  auto alice = h.Alice();
  std::string job = SubmitOk(*alice, h,
                             Harness::JobToml("reject", 1, 1, 30) + "sites = [\"site0\", \"site1\"]\n");
  // While the round runs: an update from a site that was not selected, and one whose task is another job's.
  ASSERT_TRUE(good->WaitFor([](const auto& s) { return !s.tasks.empty(); }, 20s)) << h.Log();
  auto blob = MakeSyntheticUpdate(outsider->store(), h.dir() / "model.safetensors", 1, UpdateMode::kGood);
  ASSERT_TRUE(blob.ok());
  proto::Update forged;
  forged.job_id = job;
  forged.round = 1;
  forged.task_id = job + "/r1/a0/site2/train";
  forged.update_hash = blob->first;
  forged.update_size = blob->second;
  forged.examples = 10;
  outsider->Send(forged);
  proto::Update wrong = forged;
  wrong.task_id = "job-000099/r1/a0/site2/train";
  outsider->Send(wrong);
  ASSERT_TRUE(outsider->WaitFor([](const auto& s) { return s.rejects.size() >= 2; }, 10s));
  EXPECT_EQ(CountReason(outsider->stats(), proto::Reason::kSiteNotSelected), 1);
  EXPECT_EQ(CountReason(outsider->stats(), proto::Reason::kUpdateWrongJob), 1);

  ASSERT_TRUE(WaitJobState(*alice, job, proto::JobState::kSucceeded, 30s)) << h.Log();
  EXPECT_EQ(CountReason(nan->stats(), proto::Reason::kUpdateInvalid), 1);
  auto st = Status(*alice, job);
  EXPECT_EQ(st.rounds[0].sites.size(), 2u);
  EXPECT_EQ(st.rounds[0].sites[1].state, "rejected");
  EXPECT_NE(st.rounds[0].sites[1].reason.find("non_finite"), std::string::npos) << st.rounds[0].sites[1].reason;

  // A different update under the key already stored for site0's task.
  std::string task = good->stats().tasks.front();
  auto other = MakeSyntheticUpdate(good->store(), h.dir() / "model.safetensors", 99, UpdateMode::kGood);
  ASSERT_TRUE(other.ok());
  proto::Update dup;
  dup.job_id = job;
  dup.round = 1;
  dup.task_id = task;
  dup.update_hash = other->first;
  dup.update_size = other->second;
  dup.examples = 100;
  good->Send(dup);
  ASSERT_TRUE(good->WaitFor(
      [](const auto& s) { return CountReason(s, proto::Reason::kUpdateDuplicateMismatch) == 1; }, 10s));
  EXPECT_EQ(Status(*alice, job).rounds[0].answered, 2u);

  auto admin = h.Admin();
  auto usage = Expect<proto::UsageReport>(admin->Call(proto::GetUsage{0, 0, proto::UsageGroup::kSite}));
  ASSERT_EQ(usage.rows.size(), 1u) << "only the accepted site's work is in the ledger";
  EXPECT_EQ(usage.rows[0].key, "site0");
}

TEST(Coordinator, CountsAResendAfterReconnectOnce) {
  Harness h({.sites = 2});
  h.Start();
  auto s0 = h.MakeSite(0, [](TestSiteOptions& o) { o.reconnect_and_resend = true; });
  auto s1 = h.MakeSite(1, [](TestSiteOptions& o) { o.train_delay = 1000ms; });
  auto alice = h.Alice();
  std::string job = SubmitOk(*alice, h, Harness::JobToml("resend", 1, 2, 30));
  ASSERT_TRUE(WaitJobState(*alice, job, proto::JobState::kSucceeded, 30s)) << h.Log();
  std::string task = job + "/r1/a0/site0/train";
  ASSERT_TRUE(s0->WaitFor([&](const auto& s) { return s.acks.count(task) && s.acks.at(task) == 2; }, 10s));
  auto st = Status(*alice, job);
  EXPECT_EQ(st.rounds[0].answered, 2u);
  auto admin = h.Admin();
  auto usage = Expect<proto::UsageReport>(admin->Call(proto::GetUsage{0, 0, proto::UsageGroup::kSite}));
  ASSERT_EQ(usage.rows.size(), 2u);
  EXPECT_EQ(usage.rows[0].tasks, 2u) << "one train and one evaluation task, the resend not billed";
}

TEST(Coordinator, CancelReachesTheSitesStillWorking) {
  Harness h({.sites = 2});
  h.Start();
  auto s0 = h.MakeSite(0, [](TestSiteOptions& o) { o.train_delay = 60000ms; });
  auto s1 = h.MakeSite(1, [](TestSiteOptions& o) { o.train_delay = 60000ms; });
  auto alice = h.Alice();
  std::string job = SubmitOk(*alice, h, Harness::JobToml("cancel", 3, 2, 120));
  ASSERT_TRUE(s0->WaitFor([](const auto& s) { return !s.tasks.empty(); }, 20s));
  ASSERT_TRUE(s1->WaitFor([](const auto& s) { return !s.tasks.empty(); }, 20s));
  auto bob = h.Bob();
  auto denied = RejectOf(bob->Call(proto::CancelJob{job}));
  ASSERT_TRUE(denied);
  EXPECT_EQ(denied->code, proto::Reason::kUnauthorized);
  Expect<proto::Ack>(alice->Call(proto::CancelJob{job}));
  ASSERT_TRUE(s0->WaitFor([](const auto& s) { return s.cancels.size() == 1; }, 10s));
  ASSERT_TRUE(s1->WaitFor([](const auto& s) { return s.cancels.size() == 1; }, 10s));
  EXPECT_EQ(s0->stats().cancels[0], s0->stats().tasks[0]);
  auto st = Status(*alice, job);
  EXPECT_EQ(st.summary.state, proto::JobState::kCancelled);
  EXPECT_NE(st.summary.reason.find("alice"), std::string::npos);
}

TEST(Coordinator, AuthorizesByRole) {
  Harness h({.sites = 2});
  h.Start();
  auto s0 = h.MakeSite(0);
  auto s1 = h.MakeSite(1);
  auto alice = h.Alice();
  std::string job = SubmitOk(*alice, h, Harness::JobToml("mine", 1, 2, 30));
  ASSERT_TRUE(WaitJobState(*alice, job, proto::JobState::kSucceeded, 30s)) << h.Log();

  auto bob = h.Bob();
  EXPECT_TRUE(Expect<proto::JobList>(bob->Call(proto::ListJobs{})).jobs.empty());
  auto r = RejectOf(bob->Call(proto::GetJobStatus{job}));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->code, proto::Reason::kUnauthorized);
  r = RejectOf(bob->Call(proto::WatchJob{job}));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->code, proto::Reason::kUnauthorized);
  EXPECT_FALSE(bob->Fetch(job, std::nullopt).ok());
  // Nor can bob pull the checkpoint blob by hash.
  std::string hash = Status(*alice, job).rounds[0].model_hash;
  r = RejectOf(bob->Call(proto::BlobRequest{hash, 0, 1}));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->code, proto::Reason::kUnauthorized);
  r = RejectOf(bob->Call(proto::ListSites{}));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->code, proto::Reason::kUnauthorized);

  // A site reads the jobs that ran on it, and nothing else; it cannot submit.
  auto site = h.SiteClient(0);
  EXPECT_EQ(Expect<proto::JobList>(site->Call(proto::ListJobs{})).jobs.size(), 1u);
  EXPECT_EQ(Status(*site, job).summary.job_id, job);
  r = RejectOf(site->Call(proto::SubmitJob{Harness::JobToml("x", 1, 1, 10), "x.toml", std::string(64, 'a'), 10, "", 0}));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->code, proto::Reason::kUnauthorized);
  r = RejectOf(site->Call(proto::CancelJob{job}));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->code, proto::Reason::kUnauthorized);

  // The admin sees every job and every site.
  auto admin = h.Admin();
  EXPECT_EQ(Expect<proto::JobList>(admin->Call(proto::ListJobs{})).jobs.size(), 1u);
  auto sites = Expect<proto::SiteList>(admin->Call(proto::ListSites{}));
  ASSERT_EQ(sites.sites.size(), 2u);
  EXPECT_TRUE(sites.sites[0].connected);
  ASSERT_EQ(sites.sites[0].datasets.size(), 1u);
  EXPECT_EQ(sites.sites[0].datasets[0].name, "synthetic");
  EXPECT_GT(sites.sites[0].last_seen_unix, 0);
}

// A site's admin using the site's key (hanse jobs, hanse usage) while its worker
// is connected does not take the worker's place: tasks still reach the worker.
TEST(Coordinator, ASecondConnectionWithTheSiteKeyDoesNotStealItsTasks) {
  Harness h({.sites = 1});
  h.Start();
  auto s0 = h.MakeSite(0);
  ASSERT_TRUE(s0->WaitFor([](const auto& st) { return st.connected; }, 30s));
  auto admin_of_site = h.SiteClient(0);
  EXPECT_EQ(Expect<proto::JobList>(admin_of_site->Call(proto::ListJobs{})).jobs.size(), 0u);
  auto alice = h.Alice();
  std::string job = SubmitOk(*alice, h, Harness::JobToml("steal", 1, 1, 60));
  // The site client says something that is not an admin request, too.
  (void)admin_of_site->Call(proto::Heartbeat{}, 500ms);
  EXPECT_TRUE(WaitJobState(*alice, job, proto::JobState::kSucceeded, 30s)) << h.Log();
  EXPECT_GE(s0->stats().updates_sent, 1);
  // The worker's connection was taken once, never handed to the other one.
  const std::string log = h.Log();
  const std::string line = "site " + h.site_names()[0] + " connected";
  EXPECT_EQ(CountOf(log, line), 1u) << log;
}

TEST(Coordinator, RefusesAnInvalidJobNamingTheKey) {
  Harness h({.sites = 1});
  h.Start();
  auto alice = h.Alice();
  h.WriteModel(100);
  auto r = RejectOf(alice->Submit(Harness::JobToml("bad", 1, 1, 10) + "colour = \"blue\"\n",
                                  h.dir() / "model.safetensors", "bad.toml"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->code, proto::Reason::kInvalidJob);
  EXPECT_NE(r->text.find("bad.toml"), std::string::npos) << r->text;
  EXPECT_NE(r->text.find("colour"), std::string::npos) << r->text;
  r = RejectOf(alice->Submit(Harness::JobToml("bad", 1, 1, 10) + "sites = [\"atlantis\"]\n",
                             h.dir() / "model.safetensors", "bad.toml"));
  ASSERT_TRUE(r);
  EXPECT_NE(r->text.find("atlantis"), std::string::npos) << r->text;
  // A model file that is not safetensors.
  WriteFile(h.dir() / "junk.bin", "not a model at all");
  r = RejectOf(alice->Submit(Harness::JobToml("bad", 1, 1, 10), h.dir() / "junk.bin", "bad.toml"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->code, proto::Reason::kInvalidJob);
  EXPECT_NE(r->text.find("initial model"), std::string::npos) << r->text;
}

TEST(Coordinator, RunsTwoJobsAtOnceAndABusySiteKeepsItsPlace) {
  Harness h({.sites = 2});
  h.Start();
  auto s0 = h.MakeSite(0, [](TestSiteOptions& o) {
    o.busy_first = 1;
    o.train_delay = 200ms;
  });
  auto s1 = h.MakeSite(1, [](TestSiteOptions& o) { o.train_delay = 200ms; });
  auto alice = h.Alice();
  auto bob = h.Bob();
  std::string a = SubmitOk(*alice, h, Harness::JobToml("a", 2, 2, 60));
  std::string b = SubmitOk(*bob, h, Harness::JobToml("b", 2, 2, 60));
  ASSERT_TRUE(WaitJobState(*alice, a, proto::JobState::kSucceeded, 60s)) << h.Log();
  ASSERT_TRUE(WaitJobState(*bob, b, proto::JobState::kSucceeded, 60s)) << h.Log();
  EXPECT_GE(s0->stats().busy_sent, 1);
  EXPECT_EQ(Status(*alice, a).rounds.size(), 2u);
  EXPECT_EQ(Status(*bob, b).rounds.size(), 2u);
  EXPECT_EQ(Expect<proto::JobList>(alice->Call(proto::ListJobs{})).jobs.size(), 1u);
}

TEST(Coordinator, SumsUsageBySiteLeadAndJobAtTheConfiguredRates) {
  Harness h({.sites = 2, .gpu_hour = 3.0, .cpu_hour = 0.5});
  h.Start();
  auto s0 = h.MakeSite(0, [](TestSiteOptions& o) { o.cpu_seconds = 36; });
  auto s1 = h.MakeSite(1, [](TestSiteOptions& o) {
    o.cpu_seconds = 0;
    o.gpu_seconds = 720;
    o.device_kind = "cuda";
  });
  auto alice = h.Alice();
  std::string job = SubmitOk(*alice, h, Harness::JobToml("usage", 2, 2, 60));
  ASSERT_TRUE(WaitJobState(*alice, job, proto::JobState::kSucceeded, 60s)) << h.Log();
  auto admin = h.Admin();
  auto by_site = Expect<proto::UsageReport>(admin->Call(proto::GetUsage{0, 0, proto::UsageGroup::kSite}));
  EXPECT_EQ(by_site.currency, "EUR");
  ASSERT_EQ(by_site.rows.size(), 2u);
  // site0: 2 train tasks x 36 s + 2 evaluations x 3.6 s of CPU.
  EXPECT_EQ(by_site.rows[0].tasks, 4u);
  EXPECT_NEAR(by_site.rows[0].cpu_hours, (2 * 36 + 2 * 3.6) / 3600, 1e-9);
  EXPECT_NEAR(by_site.rows[0].cost, by_site.rows[0].cpu_hours * 0.5, 1e-9);
  // site1: 2 x 720 + 2 x 72 GPU seconds.
  EXPECT_NEAR(by_site.rows[1].gpu_hours, (2 * 720 + 2 * 72) / 3600.0, 1e-9);
  EXPECT_NEAR(by_site.rows[1].cost, by_site.rows[1].gpu_hours * 3.0, 1e-9);
  auto by_lead = Expect<proto::UsageReport>(alice->Call(proto::GetUsage{0, 0, proto::UsageGroup::kLead}));
  ASSERT_EQ(by_lead.rows.size(), 1u);
  EXPECT_EQ(by_lead.rows[0].key, "alice");
  EXPECT_EQ(by_lead.rows[0].tasks, 8u);
  auto by_job = Expect<proto::UsageReport>(alice->Call(proto::GetUsage{0, 0, proto::UsageGroup::kJob}));
  ASSERT_EQ(by_job.rows.size(), 1u);
  EXPECT_EQ(by_job.rows[0].key, job);
  auto site = h.SiteClient(1);
  auto mine = Expect<proto::UsageReport>(site->Call(proto::GetUsage{0, 0, proto::UsageGroup::kSite}));
  ASSERT_EQ(mine.rows.size(), 1u);
  EXPECT_EQ(mine.rows[0].key, "site1");
  auto bob = h.Bob();
  EXPECT_TRUE(Expect<proto::UsageReport>(bob->Call(proto::GetUsage{0, 0, proto::UsageGroup::kSite})).rows.empty());
  // A period that ends before the job: nothing.
  auto past = Expect<proto::UsageReport>(admin->Call(proto::GetUsage{1, 2, proto::UsageGroup::kSite}));
  EXPECT_TRUE(past.rows.empty());
}

TEST(Coordinator, ResumesAfterKillWithoutRetrainingStoredUpdates) {
  Harness h({.sites = 2});
  h.Start();
  auto s0 = h.MakeSite(0);
  auto s1 = h.MakeSite(1, [](TestSiteOptions& o) { o.train_delay = 3000ms; });
  auto alice = h.Alice();
  std::string job = SubmitOk(*alice, h, Harness::JobToml("resume", 1, 2, 60));
  std::string task0 = job + "/r1/a0/site0/train";
  ASSERT_TRUE(s0->WaitFor([&](const auto& s) { return s.acks.count(task0) > 0; }, 20s)) << h.Log();
  h.Kill();
  alice.reset();
  h.Start();
  alice = h.Alice();
  ASSERT_TRUE(WaitJobState(*alice, job, proto::JobState::kSucceeded, 40s)) << h.Log();
  EXPECT_EQ(s0->stats().updates_sent, 1) << "site0's stored update was reused";
  EXPECT_NE(h.Log().find("resumed at round 1"), std::string::npos);
  EXPECT_EQ(Status(*alice, job).rounds[0].answered, 2u);
  // A finished job is not re-entered after another restart.
  EXPECT_EQ(h.Stop(), 0);
  h.Start();
  alice = h.Alice();
  EXPECT_EQ(Status(*alice, job).summary.state, proto::JobState::kSucceeded);
  EXPECT_EQ(Status(*alice, job).rounds.size(), 1u);
}

TEST(Coordinator, KeepsCheckpointsAndUpdatesPerRetention) {
  Harness h({.sites = 2, .keep_updates_rounds = 1, .keep_checkpoints = 1});
  h.Start();
  auto s0 = h.MakeSite(0);
  auto s1 = h.MakeSite(1);
  auto alice = h.Alice();
  std::string job = SubmitOk(*alice, h, Harness::JobToml("retention", 3, 2, 60));
  ASSERT_TRUE(WaitJobState(*alice, job, proto::JobState::kSucceeded, 60s)) << h.Log();
  EXPECT_FALSE(alice->Fetch(job, 1u).ok()) << "round 1's checkpoint is past keep_checkpoints";
  EXPECT_FALSE(alice->Fetch(job, 2u).ok());
  EXPECT_TRUE(alice->Fetch(job, 3u).ok());
  EXPECT_TRUE(alice->Fetch(job, 0u).ok()) << "the initial model stays";
  EXPECT_EQ(h.Stop(), 0);
  auto store = coord::Store::Open(h.data_dir() / "coordinator.db");
  ASSERT_TRUE(store.ok());
  auto updates = (*store)->ListUpdates(job);
  ASSERT_TRUE(updates.ok());
  ASSERT_EQ(updates->size(), 6u);
  auto blobs = BlobStore::Open(h.data_dir());
  ASSERT_TRUE(blobs.ok());
  for (const auto& u : *updates) {
    EXPECT_EQ(u.deleted, u.round <= 2) << "round " << u.round;
    EXPECT_EQ((*blobs)->Contains(u.update_hash), u.round == 3) << "round " << u.round;
  }
}

TEST(Coordinator, CheckConfigValidatesAFile) {
  Harness h({.sites = 1});
  auto ok = hanse::testing::Run({(BinDir() / "hanse-coordinator").string(), "--check-config", (h.dir() / "coordinator.toml").string()},
                h.dir() / "check.log");
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  WriteFile(h.dir() / "bad.toml", "listen = 5\n");
  auto bad = hanse::testing::Run({(BinDir() / "hanse-coordinator").string(), "--check-config", (h.dir() / "bad.toml").string()},
                 h.dir() / "check2.log");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.output.find("bad.toml"), std::string::npos) << bad.output;
}

}  // namespace
}  // namespace hanse::testing
