// Per-site task queues: each site gets one task at a time, in the order tasks
// were queued (so concurrent jobs interleave). A site that answers Busy keeps
// the task at the head of its queue and is asked again after a back-off; a site
// that reconnects gets its in-flight task again (workers treat a repeated task
// id as the same task).
//
// Pure bookkeeping, no I/O: the coordinator asks which task to send and tells
// the scheduler what happened. Not thread-safe; loop thread only.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace hanse::coord {

enum class TaskType : uint8_t { kTrain = 0, kEvaluate = 1 };

struct QueuedTask {
  std::string task_id;
  std::string job_id;
  uint32_t round = 0;
  TaskType type = TaskType::kTrain;
};

class Scheduler {
 public:
  using Clock = std::chrono::steady_clock;

  explicit Scheduler(std::chrono::milliseconds busy_backoff = std::chrono::milliseconds(1000))
      : busy_backoff_(busy_backoff) {}

  // Appends a task to the site's queue; a task id already queued for the site is ignored.
  void Enqueue(const std::string& site, QueuedTask task);
  // The head task if the site has nothing in flight and is not backing off; marks it in flight.
  std::optional<QueuedTask> TakeNext(const std::string& site, Clock::time_point now);
  // The site answered Busy: the task stays at the head, is no longer in flight, and
  // is offered again after the back-off.
  void OnBusy(const std::string& site, const std::string& task_id, Clock::time_point now);
  // The task finished (result acknowledged, refused, or cancelled): removes it.
  // Returns true when it was queued for that site.
  bool Finish(const std::string& site, const std::string& task_id);
  // The site reconnected (or the coordinator restarted): its in-flight task will be sent again.
  void OnReconnect(const std::string& site);
  // Removes every queued task of a job; returns (site, task id, was in flight) for each.
  struct Removed {
    std::string site;
    std::string task_id;
    bool in_flight = false;
  };
  std::vector<Removed> RemoveJob(const std::string& job_id);
  // Removes the tasks of one round of a job (a closed round or attempt).
  std::vector<Removed> RemoveRound(const std::string& job_id, uint32_t round, TaskType type);

  bool IsInFlight(const std::string& site, const std::string& task_id) const;
  bool IsQueued(const std::string& site, const std::string& task_id) const;
  size_t QueueLength(const std::string& site) const;
  std::vector<QueuedTask> Queued(const std::string& site) const;  // head first
  std::vector<std::string> Sites() const;

 private:
  struct SiteQueue {
    std::deque<QueuedTask> tasks;
    bool head_in_flight = false;
    Clock::time_point not_before{};
  };
  std::vector<Removed> RemoveIf(const std::function<bool(const QueuedTask&)>& pred);

  std::chrono::milliseconds busy_backoff_;
  std::map<std::string, SiteQueue> queues_;
};

}  // namespace hanse::coord
