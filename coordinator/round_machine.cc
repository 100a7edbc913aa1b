#include "coordinator/round_machine.h"

#include <string>

namespace hanse::coord {

const char* RoundStateName(RoundState s) {
  switch (s) {
    case RoundState::kSelecting: return "selecting";
    case RoundState::kDistributing: return "distributing";
    case RoundState::kTraining: return "training";
    case RoundState::kCollecting: return "collecting";
    case RoundState::kAggregating: return "aggregating";
    case RoundState::kEvaluating: return "evaluating";
    case RoundState::kCommitted: return "committed";
    case RoundState::kRetrying: return "retrying";
    case RoundState::kFailed: return "failed";
    case RoundState::kCancelled: return "cancelled";
  }
  return "unknown";
}

const char* RoundEventName(RoundEvent e) {
  switch (e) {
    case RoundEvent::kSitesSelected: return "sites_selected";
    case RoundEvent::kTasksSent: return "tasks_sent";
    case RoundEvent::kUpdateAccepted: return "update_accepted";
    case RoundEvent::kCollectQuorum: return "collect_quorum";
    case RoundEvent::kCollectNoQuorum: return "collect_no_quorum";
    case RoundEvent::kRetry: return "retry";
    case RoundEvent::kRetriesExhausted: return "retries_exhausted";
    case RoundEvent::kAggregated: return "aggregated";
    case RoundEvent::kAggregationFailed: return "aggregation_failed";
    case RoundEvent::kEvaluationDone: return "evaluation_done";
    case RoundEvent::kCancel: return "cancel";
  }
  return "unknown";
}

Result<RoundState> ParseRoundState(std::string_view name) {
  for (int i = 0; i < kNumRoundStates; ++i) {
    auto s = static_cast<RoundState>(i);
    if (name == RoundStateName(s)) return s;
  }
  return Status::InvalidArgument("unknown round state '" + std::string(name) + "'");
}

bool IsTerminal(RoundState s) {
  return s == RoundState::kCommitted || s == RoundState::kFailed || s == RoundState::kCancelled;
}

bool IsCollecting(RoundState s) { return s == RoundState::kTraining || s == RoundState::kCollecting; }

Result<RoundState> Next(RoundState state, RoundEvent event) {
  using S = RoundState;
  using E = RoundEvent;
  if (event == E::kCancel && !IsTerminal(state)) return S::kCancelled;
  switch (state) {
    case S::kSelecting:
      if (event == E::kSitesSelected) return S::kDistributing;
      if (event == E::kCollectNoQuorum) return S::kRetrying;
      break;
    case S::kDistributing:
      if (event == E::kTasksSent) return S::kTraining;
      break;
    case S::kTraining:
    case S::kCollecting:
      if (event == E::kUpdateAccepted) return S::kCollecting;
      if (event == E::kCollectQuorum) return S::kAggregating;
      if (event == E::kCollectNoQuorum) return S::kRetrying;
      break;
    case S::kRetrying:
      if (event == E::kRetry) return S::kSelecting;
      if (event == E::kRetriesExhausted) return S::kFailed;
      break;
    case S::kAggregating:
      if (event == E::kAggregated) return S::kEvaluating;
      if (event == E::kAggregationFailed) return S::kFailed;
      break;
    case S::kEvaluating:
      if (event == E::kEvaluationDone) return S::kCommitted;
      break;
    case S::kCommitted:
    case S::kFailed:
    case S::kCancelled:
      break;
  }
  return Status::FailedPrecondition(std::string("round state machine: no transition from ") + RoundStateName(state) +
                                    " on " + RoundEventName(event));
}

}  // namespace hanse::coord
