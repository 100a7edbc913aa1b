#include "coordinator/scheduler.h"

#include <gtest/gtest.h>

namespace hanse::coord {
namespace {

using namespace std::chrono_literals;
using Clock = Scheduler::Clock;

QueuedTask T(const std::string& id, const std::string& job, uint32_t round = 1, TaskType type = TaskType::kTrain) {
  return QueuedTask{id, job, round, type};
}

TEST(Scheduler, SendsOneTaskAtATimePerSiteInQueueOrder) {
  Scheduler s;
  auto now = Clock::now();
  s.Enqueue("paris", T("a", "j1"));
  s.Enqueue("paris", T("b", "j2"));
  s.Enqueue("lyon", T("c", "j1"));
  auto t = s.TakeNext("paris", now);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->task_id, "a");
  EXPECT_FALSE(s.TakeNext("paris", now)) << "a is in flight";
  auto l = s.TakeNext("lyon", now);
  ASSERT_TRUE(l);
  EXPECT_EQ(l->task_id, "c");
  EXPECT_TRUE(s.Finish("paris", "a"));
  t = s.TakeNext("paris", now);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->task_id, "b");
}

TEST(Scheduler, BusyKeepsPlaceAndBacksOff) {
  Scheduler s(500ms);
  auto now = Clock::now();
  s.Enqueue("paris", T("a", "j1"));
  s.Enqueue("paris", T("b", "j2"));
  ASSERT_TRUE(s.TakeNext("paris", now));
  s.OnBusy("paris", "a", now);
  EXPECT_FALSE(s.TakeNext("paris", now + 100ms)) << "backing off";
  auto t = s.TakeNext("paris", now + 600ms);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->task_id, "a") << "a busy site keeps its place";
}

TEST(Scheduler, ReconnectResendsInFlightTask) {
  Scheduler s;
  auto now = Clock::now();
  s.Enqueue("paris", T("a", "j1"));
  ASSERT_TRUE(s.TakeNext("paris", now));
  EXPECT_TRUE(s.IsInFlight("paris", "a"));
  s.OnReconnect("paris");
  EXPECT_FALSE(s.IsInFlight("paris", "a"));
  auto t = s.TakeNext("paris", now);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->task_id, "a");
}

TEST(Scheduler, RemoveJobReportsInFlightTasks) {
  Scheduler s;
  auto now = Clock::now();
  s.Enqueue("paris", T("a", "j1"));
  s.Enqueue("paris", T("b", "j2"));
  s.Enqueue("lyon", T("c", "j1"));
  ASSERT_TRUE(s.TakeNext("paris", now));
  auto removed = s.RemoveJob("j1");
  ASSERT_EQ(removed.size(), 2u);
  int in_flight = 0;
  for (const auto& r : removed) in_flight += r.in_flight;
  EXPECT_EQ(in_flight, 1);
  auto t = s.TakeNext("paris", now);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->task_id, "b");
  EXPECT_EQ(s.QueueLength("lyon"), 0u);
}

TEST(Scheduler, RemoveRoundLeavesOtherRoundsAndKinds) {
  Scheduler s;
  s.Enqueue("paris", T("t1", "j1", 1, TaskType::kTrain));
  s.Enqueue("paris", T("e1", "j1", 1, TaskType::kEvaluate));
  s.Enqueue("paris", T("t2", "j1", 2, TaskType::kTrain));
  auto removed = s.RemoveRound("j1", 1, TaskType::kTrain);
  ASSERT_EQ(removed.size(), 1u);
  EXPECT_EQ(removed[0].task_id, "t1");
  EXPECT_TRUE(s.IsQueued("paris", "e1"));
  EXPECT_TRUE(s.IsQueued("paris", "t2"));
}

TEST(Scheduler, DuplicateEnqueueIsIgnored) {
  Scheduler s;
  s.Enqueue("paris", T("a", "j1"));
  s.Enqueue("paris", T("a", "j1"));
  EXPECT_EQ(s.QueueLength("paris"), 1u);
  EXPECT_FALSE(s.Finish("paris", "zzz"));
}

}  // namespace
}  // namespace hanse::coord
