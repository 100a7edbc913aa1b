#include "coordinator/round_machine.h"

#include <map>
#include <utility>

#include <gtest/gtest.h>

namespace hanse::coord {
namespace {

using S = RoundState;
using E = RoundEvent;

// The whole table: every pair listed here is allowed, every other pair is refused.
const std::map<std::pair<S, E>, S>& Table() {
  static const std::map<std::pair<S, E>, S> t = [] {
    std::map<std::pair<S, E>, S> m = {
        {{S::kSelecting, E::kSitesSelected}, S::kDistributing},
        {{S::kSelecting, E::kCollectNoQuorum}, S::kRetrying},
        {{S::kDistributing, E::kTasksSent}, S::kTraining},
        {{S::kTraining, E::kUpdateAccepted}, S::kCollecting},
        {{S::kTraining, E::kCollectQuorum}, S::kAggregating},
        {{S::kTraining, E::kCollectNoQuorum}, S::kRetrying},
        {{S::kCollecting, E::kUpdateAccepted}, S::kCollecting},
        {{S::kCollecting, E::kCollectQuorum}, S::kAggregating},
        {{S::kCollecting, E::kCollectNoQuorum}, S::kRetrying},
        {{S::kRetrying, E::kRetry}, S::kSelecting},
        {{S::kRetrying, E::kRetriesExhausted}, S::kFailed},
        {{S::kAggregating, E::kAggregated}, S::kEvaluating},
        {{S::kAggregating, E::kAggregationFailed}, S::kFailed},
        {{S::kEvaluating, E::kEvaluationDone}, S::kCommitted},
    };
    for (S s : {S::kSelecting, S::kDistributing, S::kTraining, S::kCollecting, S::kRetrying, S::kAggregating,
                S::kEvaluating})
      m[{s, E::kCancel}] = S::kCancelled;
    return m;
  }();
  return t;
}

TEST(RoundMachine, FollowsTheTableForEveryStateAndEvent) {
  int allowed = 0;
  for (int si = 0; si < kNumRoundStates; ++si) {
    for (int ei = 0; ei < kNumRoundEvents; ++ei) {
      S s = static_cast<S>(si);
      E e = static_cast<E>(ei);
      auto r = Next(s, e);
      auto it = Table().find({s, e});
      if (it == Table().end()) {
        ASSERT_FALSE(r.ok()) << RoundStateName(s) << " + " << RoundEventName(e) << " -> "
                             << RoundStateName(r.value());
        EXPECT_EQ(r.status().code(), Code::kFailedPrecondition);
        EXPECT_NE(r.status().message().find(RoundStateName(s)), std::string::npos);
        EXPECT_NE(r.status().message().find(RoundEventName(e)), std::string::npos);
      } else {
        ASSERT_TRUE(r.ok()) << RoundStateName(s) << " + " << RoundEventName(e) << ": " << r.status().ToString();
        EXPECT_EQ(*r, it->second) << RoundStateName(s) << " + " << RoundEventName(e);
        ++allowed;
      }
    }
  }
  EXPECT_EQ(allowed, static_cast<int>(Table().size()));
}

TEST(RoundMachine, TerminalStatesHaveNoExit) {
  for (S s : {S::kCommitted, S::kFailed, S::kCancelled}) {
    EXPECT_TRUE(IsTerminal(s));
    for (int ei = 0; ei < kNumRoundEvents; ++ei) EXPECT_FALSE(Next(s, static_cast<E>(ei)).ok());
  }
}

TEST(RoundMachine, HappyPathReachesCommitted) {
  S s = S::kSelecting;
  for (E e : {E::kSitesSelected, E::kTasksSent, E::kUpdateAccepted, E::kUpdateAccepted, E::kCollectQuorum,
              E::kAggregated, E::kEvaluationDone}) {
    auto r = Next(s, e);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    s = *r;
  }
  EXPECT_EQ(s, S::kCommitted);
}

TEST(RoundMachine, StateNamesRoundTrip) {
  for (int si = 0; si < kNumRoundStates; ++si) {
    S s = static_cast<S>(si);
    auto r = ParseRoundState(RoundStateName(s));
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(*r, s);
  }
  EXPECT_FALSE(ParseRoundState("flying").ok());
}

}  // namespace
}  // namespace hanse::coord
