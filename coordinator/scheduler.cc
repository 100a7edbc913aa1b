#include "coordinator/scheduler.h"

#include <algorithm>

namespace hanse::coord {

void Scheduler::Enqueue(const std::string& site, QueuedTask task) {
  auto& q = queues_[site];
  for (const auto& t : q.tasks)
    if (t.task_id == task.task_id) return;
  q.tasks.push_back(std::move(task));
}

std::optional<QueuedTask> Scheduler::TakeNext(const std::string& site, Clock::time_point now) {
  auto it = queues_.find(site);
  if (it == queues_.end()) return std::nullopt;
  auto& q = it->second;
  if (q.tasks.empty() || q.head_in_flight || now < q.not_before) return std::nullopt;
  q.head_in_flight = true;
  return q.tasks.front();
}

void Scheduler::OnBusy(const std::string& site, const std::string& task_id, Clock::time_point now) {
  auto it = queues_.find(site);
  if (it == queues_.end()) return;
  auto& q = it->second;
  if (q.tasks.empty() || q.tasks.front().task_id != task_id) return;
  q.head_in_flight = false;
  q.not_before = now + busy_backoff_;
}

bool Scheduler::Finish(const std::string& site, const std::string& task_id) {
  auto it = queues_.find(site);
  if (it == queues_.end()) return false;
  auto& q = it->second;
  for (size_t i = 0; i < q.tasks.size(); ++i) {
    if (q.tasks[i].task_id != task_id) continue;
    if (i == 0) {
      q.head_in_flight = false;
      q.not_before = {};
    }
    q.tasks.erase(q.tasks.begin() + static_cast<std::ptrdiff_t>(i));
    return true;
  }
  return false;
}

void Scheduler::OnReconnect(const std::string& site) {
  auto it = queues_.find(site);
  if (it == queues_.end()) return;
  it->second.head_in_flight = false;
  it->second.not_before = {};
}

std::vector<Scheduler::Removed> Scheduler::RemoveIf(const std::function<bool(const QueuedTask&)>& pred) {
  std::vector<Removed> out;
  for (auto& [site, q] : queues_) {
    std::deque<QueuedTask> keep;
    for (size_t i = 0; i < q.tasks.size(); ++i) {
      const auto& t = q.tasks[i];
      if (pred(t)) {
        bool in_flight = i == 0 && q.head_in_flight;
        out.push_back({site, t.task_id, in_flight});
        if (i == 0) {
          q.head_in_flight = false;
          q.not_before = {};
        }
      } else {
        keep.push_back(t);
      }
    }
    // When the head survived, its in-flight flag is still right; when it was removed we cleared it.
    q.tasks = std::move(keep);
  }
  return out;
}

std::vector<Scheduler::Removed> Scheduler::RemoveJob(const std::string& job_id) {
  return RemoveIf([&](const QueuedTask& t) { return t.job_id == job_id; });
}

std::vector<Scheduler::Removed> Scheduler::RemoveRound(const std::string& job_id, uint32_t round, TaskType type) {
  return RemoveIf([&](const QueuedTask& t) { return t.job_id == job_id && t.round == round && t.type == type; });
}

bool Scheduler::IsInFlight(const std::string& site, const std::string& task_id) const {
  auto it = queues_.find(site);
  if (it == queues_.end() || it->second.tasks.empty()) return false;
  return it->second.head_in_flight && it->second.tasks.front().task_id == task_id;
}

bool Scheduler::IsQueued(const std::string& site, const std::string& task_id) const {
  auto it = queues_.find(site);
  if (it == queues_.end()) return false;
  return std::any_of(it->second.tasks.begin(), it->second.tasks.end(),
                     [&](const QueuedTask& t) { return t.task_id == task_id; });
}

std::vector<QueuedTask> Scheduler::Queued(const std::string& site) const {
  auto it = queues_.find(site);
  if (it == queues_.end()) return {};
  return {it->second.tasks.begin(), it->second.tasks.end()};
}

size_t Scheduler::QueueLength(const std::string& site) const {
  auto it = queues_.find(site);
  return it == queues_.end() ? 0 : it->second.tasks.size();
}

std::vector<std::string> Scheduler::Sites() const {
  std::vector<std::string> out;
  for (const auto& [s, q] : queues_) out.push_back(s);
  return out;
}

}  // namespace hanse::coord
