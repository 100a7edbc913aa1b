// Drives the rounds of one job through the round state machine: selects sites,
// queues tasks, judges incoming updates and evaluation results, closes rounds
// on quorum or deadline, retries, aggregates and commits checkpoints. Every
// transition goes through Next() and is persisted in one transaction together
// with what changed.
//
// Owned by the coordinator loop; not thread-safe. The runner never touches a
// socket: it asks its RunnerHost to queue or cancel tasks and to publish events.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "aggregation/aggregate.h"
#include "core/blob_store.h"
#include "core/config.h"
#include "core/status.h"
#include "coordinator/round_machine.h"
#include "coordinator/scheduler.h"
#include "coordinator/store.h"
#include "protocol/messages.h"

namespace hanse::coord {

using SteadyClock = std::chrono::steady_clock;

// What the runner needs from the coordinator loop.
class RunnerHost {
 public:
  virtual ~RunnerHost() = default;
  virtual bool SiteAlive(const std::string& site) const = 0;
  virtual void QueueTask(const std::string& site, const QueuedTask& task) = 0;
  // Removes the job's queued tasks of that round and kind (all rounds/kinds when
  // round is nullopt); sites working on one get a CancelTask with `reason`.
  virtual void CancelTasks(const std::string& job_id, std::optional<uint32_t> round, std::optional<TaskType> type,
                           const std::string& reason) = 0;
  virtual void Publish(const proto::RoundEvent& event) = 0;
  virtual BlobStore& blobs() = 0;
  virtual Store& store() = 0;
};

struct RunnerOptions {
  uint32_t keep_updates_rounds = 0;   // retention: updates kept this many rounds after commit
  uint32_t keep_checkpoints = 0;      // 0 = all
  // How long selection waits for every eligible site before going on with
  // min_sites of them (capped by half the round deadline).
  std::chrono::milliseconds select_grace{5000};
  std::chrono::milliseconds persist_every{1000};   // deadline/duration checkpoints
};

// Verdict on an incoming update before its blob is pulled.
struct UpdateVerdict {
  enum class Kind { kPull, kAlreadyStored, kReject } kind = Kind::kReject;
  proto::Reason reason = proto::Reason::kUnspecified;
  std::string text;
};

class JobRunner {
 public:
  // A new job: writes round 1 (selecting) in the caller's transaction context.
  static Result<std::unique_ptr<JobRunner>> Create(JobRecord job, JobConfig config, RunnerHost& host,
                                                   const std::vector<std::string>& known_sites,
                                                   const RunnerOptions& options, SteadyClock::time_point now);
  // After a restart: loads the current round, re-queues what is still owed.
  static Result<std::unique_ptr<JobRunner>> Resume(JobRecord job, RunnerHost& host,
                                                   const std::vector<std::string>& known_sites,
                                                   const RunnerOptions& options, SteadyClock::time_point now);

  const JobRecord& job() const { return job_; }
  const JobConfig& config() const { return config_; }
  const RoundRecord& round() const { return round_; }
  bool finished() const { return job_.state != JobState::kRunning && job_.state != JobState::kQueued; }
  const agg::ModelSchema& schema() const { return schema_; }

  // Drives deadlines and the steps that need no input (select, aggregate, commit).
  void Tick(SteadyClock::time_point now);

  // The task message for a queued task of this job.
  proto::Task BuildTask(const QueuedTask& task) const;

  // Judges an update from `site` (already known to belong to this job by job_id).
  UpdateVerdict CheckUpdate(const std::string& site, const proto::Update& update);
  // The update's blob is in the store and validated: accept it (one transaction).
  // Returns a Reject reason when the round moved on during the pull.
  Result<std::optional<proto::Reject>> AcceptUpdate(const std::string& site, const proto::Update& update,
                                                    const agg::ValidatedUpdate& validated, SteadyClock::time_point now);
  // The update failed validation: the site answered, without an update.
  void RejectUpdate(const std::string& site, const proto::Update& update, const std::string& why);
  // An evaluation result; nullopt when accepted, else the rejection.
  std::optional<proto::Reject> OnEvaluation(const std::string& site, const proto::EvaluationResult& result,
                                            SteadyClock::time_point now);
  // The site refused a task (policy, training failure): it answered without a result.
  void OnTaskRefused(const std::string& site, const std::string& task_id, proto::Reason reason,
                     const std::string& text);
  // Cancels the job (lead or admin asked).
  void Cancel(const std::string& reason, SteadyClock::time_point now);

  // Whether `task_id` is a live task of this job for `site`.
  bool OwnsTask(const std::string& site, const std::string& task_id) const;

  // Derived per-task seed: same (job seed, round, site) -> same seed, whatever the attempt.
  static uint64_t TaskSeed(uint64_t job_seed, uint32_t round, const std::string& site);

 private:
  JobRunner(JobRecord job, JobConfig config, RunnerHost& host, std::vector<std::string> known_sites,
            RunnerOptions options);
  Status Init();
  Status Transition(RoundEvent event, SteadyClock::time_point now, const std::vector<std::string>& changed_sites,
                    const std::function<Status()>& extra = {});
  void Fatal(const Status& s) const;
  void UpdateClock(SteadyClock::time_point now);
  std::vector<std::string> EligibleSites() const;
  void StartRound(uint32_t round, SteadyClock::time_point now);  // in memory only
  void StepSelecting(SteadyClock::time_point now);
  void StepCollecting(SteadyClock::time_point now);
  void StepRetrying(SteadyClock::time_point now);
  void StepAggregating(SteadyClock::time_point now);
  void StepEvaluating(SteadyClock::time_point now);
  void QueueTrainTasks();
  void QueueEvalTasks();
  void EndJob(JobState state, const std::string& reason, SteadyClock::time_point now);
  void ApplyRetention();
  void PublishProgress(const std::string& kind, SteadyClock::time_point now);
  uint32_t Answered() const;
  uint32_t Accepted() const;
  std::string TrainTaskId(const std::string& site) const;
  std::string EvalTaskId(const std::string& site) const;

  JobRecord job_;
  JobConfig config_;
  RunnerHost& host_;
  std::vector<std::string> known_sites_;
  RunnerOptions options_;
  agg::RuleOptions rule_;
  agg::ModelSchema schema_;

  RoundRecord round_;
  std::map<std::string, RoundSiteRecord> sites_;   // by site name: canonical order
  // By site: ValidatedUpdate::l2_norm of its accepted update (also in its UpdateRecord);
  // handed to Aggregate. Absent when the store has none (rows from an older database).
  std::map<std::string, double> update_norms_;
  SteadyClock::time_point deadline_{};
  SteadyClock::time_point entered_{};              // when the current state was entered
  SteadyClock::time_point last_clock_{};           // duration accounting
  SteadyClock::time_point last_persist_{};
};

}  // namespace hanse::coord
