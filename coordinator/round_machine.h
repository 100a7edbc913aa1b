// The round lifecycle as an explicit state machine: one enum of states, one of
// events, and one pure transition function. The coordinator persists every
// transition (the new state plus what changed) in one SQLite transaction.
//
//   Selecting --sites_selected--> Distributing --tasks_sent--> Training
//   Training/Collecting --update_accepted--> Collecting
//   Training/Collecting --collect_quorum--> Aggregating   (all answered, or deadline with >= min_sites)
//   Selecting/Training/Collecting --collect_no_quorum--> Retrying
//   Retrying --retry--> Selecting | --retries_exhausted--> Failed
//   Aggregating --aggregated--> Evaluating | --aggregation_failed--> Failed
//   Evaluating --evaluation_done--> Committed  (the checkpoint is committed)
//   any non-terminal state --cancel--> Cancelled
#pragma once

#include <cstdint>
#include <string_view>

#include "core/status.h"

namespace hanse::coord {

// Numbers are stored in SQLite: never renumber.
enum class RoundState : uint8_t {
  kSelecting = 0,
  kDistributing = 1,
  kTraining = 2,
  kCollecting = 3,
  kAggregating = 4,
  kEvaluating = 5,
  kCommitted = 6,
  kRetrying = 7,
  kFailed = 8,
  kCancelled = 9,
};

enum class RoundEvent : uint8_t {
  kSitesSelected = 0,
  kTasksSent = 1,
  kUpdateAccepted = 2,
  kCollectQuorum = 3,
  kCollectNoQuorum = 4,
  kRetry = 5,
  kRetriesExhausted = 6,
  kAggregated = 7,
  kAggregationFailed = 8,
  kEvaluationDone = 9,
  kCancel = 10,
};

inline constexpr int kNumRoundStates = 10;
inline constexpr int kNumRoundEvents = 11;

const char* RoundStateName(RoundState s);   // "selecting", ...
const char* RoundEventName(RoundEvent e);   // "sites_selected", ...
Result<RoundState> ParseRoundState(std::string_view name);
// Committed, Failed and Cancelled: no event leaves them.
bool IsTerminal(RoundState s);
// States in which the round waits for updates from its selected sites.
bool IsCollecting(RoundState s);

// The transition table. kFailedPrecondition naming state and event for any pair
// not in the table (never a silent fall-through). Pure; thread-safe.
Result<RoundState> Next(RoundState state, RoundEvent event);

}  // namespace hanse::coord
