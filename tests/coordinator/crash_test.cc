// Crash campaign: a 20-round job with 3 sites while the coordinator is killed
// with SIGKILL at random moments and restarted. The final model must be bitwise
// the one of an uninterrupted run, each round committed once, no update counted
// twice, and SQLite's integrity check clean.
//
// HANSE_CRASH_KILLS (default 20) sets the number of kills; HANSE_CRASH_SEED the
// random seed (default: from the clock, printed); HANSE_CRASH_TRAIN_MS the sites'
// simulated training time (default 50 ms).
#include <gtest/gtest.h>

#include <map>
#include <random>

#include "coordinator/store.h"
#include "harness.h"

namespace hanse::testing {
namespace {

using namespace std::chrono_literals;

constexpr uint32_t kRounds = 20;

proto::JobStatus StatusOf(AdminClient& c, const std::string& job) {
  auto r = c.Call(proto::GetJobStatus{job});
  if (!r.ok()) throw std::runtime_error(r.status().ToString());
  const auto* st = std::get_if<proto::JobStatus>(&*r);
  if (!st) throw std::runtime_error("no status");
  return *st;
}

struct Sites {
  std::vector<std::unique_ptr<TestSite>> all;
  explicit Sites(Harness& h) {
    // HANSE_CRASH_TRAIN_MS stretches the job so that more kills land inside it.
    int train_ms = 50;
    if (const char* t = std::getenv("HANSE_CRASH_TRAIN_MS")) train_ms = std::atoi(t);
    for (int i = 0; i < 3; ++i)
      all.push_back(h.MakeSite(i, [&](TestSiteOptions& o) { o.train_delay = std::chrono::milliseconds(train_ms); }));
  }
};

std::string Submit(Harness& h) {
  auto alice = h.Alice();
  auto r = alice->Submit(Harness::JobToml("crash", kRounds, 3, 600), h.WriteModel(20000));
  if (!r.ok() || !std::holds_alternative<proto::JobSubmitted>(*r)) throw std::runtime_error("submit failed");
  return std::get<proto::JobSubmitted>(*r).job_id;
}

std::string WaitFinalModel(Harness& h, const std::string& job, std::chrono::seconds timeout) {
  std::string hash;
  bool done = WaitFor(
      [&] {
        try {
          auto alice = h.Alice();
          auto st = StatusOf(*alice, job);
          if (st.summary.state != proto::JobState::kSucceeded) return false;
          hash = st.rounds.back().model_hash;
          return true;
        } catch (const std::exception&) {
          return false;
        }
      },
      timeout);
  return done ? hash : std::string();
}

TEST(CoordinatorCrash, KilledAtRandomMomentsGivesTheUninterruptedModel) {
  int kills = 20;
  if (const char* k = std::getenv("HANSE_CRASH_KILLS")) kills = std::atoi(k);
  uint64_t seed = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  if (const char* s = std::getenv("HANSE_CRASH_SEED")) seed = std::strtoull(s, nullptr, 10);
  std::printf("crash campaign: %d kills, seed %llu\n", kills, static_cast<unsigned long long>(seed));

  std::string reference;
  {
    Harness h({.sites = 3});
    h.Start();
    Sites sites(h);
    std::string job = Submit(h);
    reference = WaitFinalModel(h, job, 300s);
    ASSERT_FALSE(reference.empty()) << h.Log();
    EXPECT_EQ(h.Stop(), 0);
  }

  Harness h({.sites = 3});
  h.Start();
  Sites sites(h);
  std::string job = Submit(h);
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> pause_ms(10, 800);
  auto t0 = std::chrono::steady_clock::now();
  for (int k = 0; k < kills; ++k) {
    std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms(rng)));
    h.Kill();
    h.Start();
  }
  double chaos_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  uint32_t done_at_last_kill = 0;
  try {
    auto alice = h.Alice();
    done_at_last_kill = StatusOf(*alice, job).summary.rounds_done;
  } catch (const std::exception&) {
  }
  std::printf("crash campaign: %u of %u rounds committed at the last kill\n", done_at_last_kill, kRounds);
  std::string final_model = WaitFinalModel(h, job, 300s);
  ASSERT_FALSE(final_model.empty()) << h.Log().substr(h.Log().size() > 20000 ? h.Log().size() - 20000 : 0);
  // Every restart that found the job still running logs "resumed at round".
  const std::string log = h.Log();
  int inside = 0;
  for (size_t p = log.find("resumed at round"); p != std::string::npos; p = log.find("resumed at round", p + 1)) ++inside;
  std::printf("crash campaign: %d kills in %.1f s (%d of them while the job ran); final model %s\n", kills, chaos_s,
              inside, final_model.c_str());
  EXPECT_EQ(final_model, reference) << "seed " << seed;
  EXPECT_EQ(h.Stop(), 0);

  auto store = coord::Store::Open(h.data_dir() / "coordinator.db");
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  auto ic = (*store)->IntegrityCheck();
  ASSERT_TRUE(ic.ok());
  EXPECT_EQ(*ic, "ok");
  auto transitions = (*store)->ListTransitions(job);
  ASSERT_TRUE(transitions.ok());
  std::map<uint32_t, int> commits;
  for (const auto& t : *transitions)
    if (t.to == "committed") commits[t.round]++;
  ASSERT_EQ(commits.size(), kRounds);
  for (const auto& [round, n] : commits) EXPECT_EQ(n, 1) << "round " << round << " committed " << n << " times";
  auto updates = (*store)->ListUpdates(job);
  ASSERT_TRUE(updates.ok());
  std::map<uint32_t, std::set<std::string>> sites_per_round;
  for (const auto& u : *updates) {
    EXPECT_TRUE(sites_per_round[u.round].insert(u.site).second) << "two updates of " << u.site << " in round " << u.round;
  }
  EXPECT_EQ(updates->size(), 3u * kRounds);
  for (uint32_t r = 1; r <= kRounds; ++r) {
    auto rs = (*store)->ListRoundSites(job, r);
    ASSERT_TRUE(rs.ok());
    int accepted = 0;
    for (const auto& s : *rs) accepted += s.accepted;
    EXPECT_EQ(accepted, 3) << "round " << r;
  }
  auto usage = (*store)->ListUsage();
  ASSERT_TRUE(usage.ok());
  int train = 0;
  for (const auto& u : *usage) train += u.kind == "train";
  EXPECT_EQ(train, static_cast<int>(3 * kRounds)) << "each update billed once";
}

}  // namespace
}  // namespace hanse::testing
