#include "coordinator/job_runner.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>

#include "core/safetensors.h"

namespace hanse::coord {

namespace {

double UnixNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

bool SiteAnswered(const RoundSiteRecord& s) {
  return s.accepted || s.state == "rejected" || s.state == "refused";
}

bool EvalAnswered(const RoundSiteRecord& s) { return s.evaluated || s.state == "eval_refused"; }

uint64_t SplitMix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::chrono::milliseconds RoundDeadline(const JobConfig& c) {
  return std::chrono::milliseconds(static_cast<int64_t>(c.round_deadline_s) * 1000);
}

double MetricOf(const std::vector<proto::Metric>& metrics, std::initializer_list<const char*> names) {
  for (const char* n : names)
    for (const auto& m : metrics)
      if (m.name == n) return m.value;
  return 0;
}

double DeviceSeconds(const proto::Usage& u) { return u.gpu_seconds > 0 ? u.gpu_seconds : u.cpu_seconds; }

proto::JobState ToProto(JobState s) { return static_cast<proto::JobState>(s); }

}  // namespace

uint64_t JobRunner::TaskSeed(uint64_t job_seed, uint32_t round, const std::string& site) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a of the site name
  for (unsigned char c : site) h = (h ^ c) * 1099511628211ull;
  return SplitMix(SplitMix(job_seed ^ (static_cast<uint64_t>(round) << 32)) ^ h);
}

JobRunner::JobRunner(JobRecord job, JobConfig config, RunnerHost& host, std::vector<std::string> known_sites,
                     RunnerOptions options)
    : job_(std::move(job)),
      config_(std::move(config)),
      host_(host),
      known_sites_(std::move(known_sites)),
      options_(options) {}

Status JobRunner::Init() {
  const auto& s = config_.strategy;
  HANSE_ASSIGN_OR_RETURN(rule_.rule, agg::ParseRule(s.rule));
  rule_.server_lr = s.server_lr;
  rule_.beta1 = s.beta1;
  rule_.beta2 = s.beta2;
  rule_.tau = s.tau;
  rule_.trim_beta = s.trim_beta;
  rule_.krum_f = s.krum_f;
  rule_.krum_m = s.krum_m;
  rule_.max_update_norm = config_.max_update_norm;
  rule_.clip_norm = config_.clip_norm;
  HANSE_RETURN_IF_ERROR(agg::ValidateRuleOptions(rule_));
  HANSE_ASSIGN_OR_RETURN(auto model, SafetensorsFile::Open(host_.blobs().PathOf(job_.initial_model)));
  HANSE_ASSIGN_OR_RETURN(schema_, agg::SchemaFromModel(*model, config_.training.trainable));
  return Status::Ok();
}

void JobRunner::Fatal(const Status& s) const {
  // The in-memory state is ahead of the database: stop, and let a restart
  // resume from the last committed transaction.
  spdlog::critical("job {}: cannot persist state: {}; stopping", job_.job_id, s.ToString());
  spdlog::default_logger()->flush();
  std::_Exit(70);
}

std::vector<std::string> JobRunner::EligibleSites() const {
  if (config_.sites.size() == 1 && config_.sites[0] == "all") return known_sites_;
  std::vector<std::string> out;
  for (const auto& s : config_.sites)
    if (std::find(known_sites_.begin(), known_sites_.end(), s) != known_sites_.end()) out.push_back(s);
  return out;
}

std::string JobRunner::TrainTaskId(const std::string& site) const {
  return job_.job_id + "/r" + std::to_string(round_.round) + "/a" + std::to_string(round_.attempt) + "/" + site +
         "/train";
}
std::string JobRunner::EvalTaskId(const std::string& site) const {
  return job_.job_id + "/r" + std::to_string(round_.round) + "/" + site + "/eval";
}

void JobRunner::StartRound(uint32_t round, SteadyClock::time_point now) {
  round_ = RoundRecord{};
  round_.job_id = job_.job_id;
  round_.round = round;
  round_.state = RoundState::kSelecting;
  round_.started_unix = UnixNow();
  round_.deadline_left_ms = RoundDeadline(config_).count();
  round_.model_in = job_.model_hash;
  round_.model_in_size = job_.model_size;
  sites_.clear();
  update_norms_.clear();
  deadline_ = now + RoundDeadline(config_);
  entered_ = now;
  last_clock_ = now;
  last_persist_ = now;
}

Result<std::unique_ptr<JobRunner>> JobRunner::Create(JobRecord job, JobConfig config, RunnerHost& host,
                                                     const std::vector<std::string>& known_sites,
                                                     const RunnerOptions& options, SteadyClock::time_point now) {
  std::unique_ptr<JobRunner> r(new JobRunner(std::move(job), std::move(config), host, known_sites, options));
  HANSE_RETURN_IF_ERROR(r->Init());
  r->job_.state = JobState::kRunning;
  r->job_.model_hash = r->job_.initial_model;
  r->job_.model_size = r->job_.initial_size;
  r->job_.rounds_total = r->config_.rounds;
  r->StartRound(1, now);
  Store& st = host.store();
  Store::Transaction tx(st);
  HANSE_RETURN_IF_ERROR(tx.begin_status());
  HANSE_RETURN_IF_ERROR(st.PutJob(r->job_));
  HANSE_RETURN_IF_ERROR(st.PutCheckpoint({r->job_.job_id, 0, r->job_.initial_model, r->job_.initial_size, false}));
  HANSE_RETURN_IF_ERROR(st.PutRound(r->round_));
  HANSE_RETURN_IF_ERROR(st.AddTransition({r->job_.job_id, 1, 0, "", "submitted", "selecting", UnixNow()}));
  HANSE_RETURN_IF_ERROR(tx.Commit());
  spdlog::info("job {} ({}) by {}: accepted: {} rounds, rule {}, min_sites {}, deadline {} s", r->job_.job_id,
               r->job_.name, r->job_.lead, r->config_.rounds, r->config_.strategy.rule, r->config_.min_sites,
               r->config_.round_deadline_s);
  return r;
}

Result<std::unique_ptr<JobRunner>> JobRunner::Resume(JobRecord job, RunnerHost& host,
                                                     const std::vector<std::string>& known_sites,
                                                     const RunnerOptions& options, SteadyClock::time_point now) {
  HANSE_ASSIGN_OR_RETURN(JobConfig config, ParseJobConfig(job.job_toml, job.file_name, {}));
  std::unique_ptr<JobRunner> r(new JobRunner(std::move(job), std::move(config), host, known_sites, options));
  HANSE_RETURN_IF_ERROR(r->Init());
  Store& st = host.store();
  const uint32_t current = r->job_.rounds_done + 1;
  HANSE_ASSIGN_OR_RETURN(auto round, st.GetRound(r->job_.job_id, current));
  if (!round) {
    r->StartRound(current, now);
    HANSE_RETURN_IF_ERROR(st.PutRound(r->round_));
  } else {
    r->round_ = *round;
    r->deadline_ = now + std::chrono::milliseconds(r->round_.deadline_left_ms);
    r->entered_ = now;
    r->last_clock_ = now;
    r->last_persist_ = now;
    HANSE_ASSIGN_OR_RETURN(auto sites, st.ListRoundSites(r->job_.job_id, current));
    for (auto& s : sites) r->sites_[s.site] = std::move(s);
    // The norms validated on arrival, so that aggregation after a restart skips its norm pass too.
    for (const auto& [name, s] : r->sites_) {
      if (!s.accepted) continue;
      HANSE_ASSIGN_OR_RETURN(auto u, st.GetUpdate(r->job_.job_id, current, name, s.task_id));
      if (u && u->l2_norm) r->update_norms_[name] = *u->l2_norm;
    }
  }
  spdlog::info("job {}: resumed at round {} attempt {} in state {} with {} ms of deadline left", r->job_.job_id,
               r->round_.round, r->round_.attempt, RoundStateName(r->round_.state), r->round_.deadline_left_ms);
  // Re-queue what is still owed; stored updates are reused, never asked again.
  if (IsCollecting(r->round_.state)) r->QueueTrainTasks();
  if (r->round_.state == RoundState::kEvaluating) r->QueueEvalTasks();
  return r;
}

void JobRunner::UpdateClock(SteadyClock::time_point now) {
  if (now > last_clock_) round_.duration_s += std::chrono::duration<double>(now - last_clock_).count();
  last_clock_ = now;
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - now).count();
  round_.deadline_left_ms = std::max<int64_t>(0, left);
}

Status JobRunner::Transition(RoundEvent event, SteadyClock::time_point now,
                             const std::vector<std::string>& changed_sites, const std::function<Status()>& extra) {
  auto next = Next(round_.state, event);
  if (!next.ok()) {
    spdlog::error("job {} round {}: {}", job_.job_id, round_.round, next.status().ToString());
    return next.status();
  }
  const RoundState from = round_.state;
  round_.state = *next;
  UpdateClock(now);
  Store& st = host_.store();
  Status s = [&]() -> Status {
    Store::Transaction tx(st);
    HANSE_RETURN_IF_ERROR(tx.begin_status());
    HANSE_RETURN_IF_ERROR(st.PutJob(job_));
    HANSE_RETURN_IF_ERROR(st.PutRound(round_));
    for (const auto& name : changed_sites) HANSE_RETURN_IF_ERROR(st.PutRoundSite(sites_.at(name)));
    if (extra) HANSE_RETURN_IF_ERROR(extra());
    HANSE_RETURN_IF_ERROR(st.AddTransition(
        {job_.job_id, round_.round, round_.attempt, RoundStateName(from), RoundEventName(event),
         RoundStateName(round_.state), UnixNow()}));
    return tx.Commit();
  }();
  if (!s.ok()) Fatal(s);
  entered_ = now;
  last_persist_ = now;
  spdlog::info("job {} round {} attempt {}: {} --{}--> {}", job_.job_id, round_.round, round_.attempt,
               RoundStateName(from), RoundEventName(event), RoundStateName(round_.state));
  return Status::Ok();
}

uint32_t JobRunner::Answered() const {
  uint32_t n = 0;
  for (const auto& [name, s] : sites_)
    if ((s.accepted || s.attempt == round_.attempt) && SiteAnswered(s)) ++n;
  return n;
}

uint32_t JobRunner::Accepted() const {
  uint32_t n = 0;
  for (const auto& [name, s] : sites_) n += s.accepted ? 1 : 0;
  return n;
}

void JobRunner::Tick(SteadyClock::time_point now) {
  if (finished()) return;
  switch (round_.state) {
    case RoundState::kSelecting: StepSelecting(now); break;
    case RoundState::kDistributing:
      QueueTrainTasks();
      (void)Transition(RoundEvent::kTasksSent, now, {});
      break;
    case RoundState::kTraining:
    case RoundState::kCollecting: StepCollecting(now); break;
    case RoundState::kRetrying: StepRetrying(now); break;
    case RoundState::kAggregating: StepAggregating(now); break;
    case RoundState::kEvaluating: StepEvaluating(now); break;
    default: break;
  }
  if (!finished() && now - last_persist_ >= options_.persist_every) {
    // Deadlines are kept as time remaining, so that they pause while the coordinator is down.
    UpdateClock(now);
    Store& st = host_.store();
    Store::Transaction tx(st);
    Status s = tx.begin_status();
    if (s.ok()) s = st.PutRound(round_);
    if (s.ok()) s = tx.Commit();
    if (!s.ok()) Fatal(s);
    last_persist_ = now;
  }
}

void JobRunner::StepSelecting(SteadyClock::time_point now) {
  const auto eligible = EligibleSites();
  std::vector<std::string> alive;
  for (const auto& s : eligible)
    if (host_.SiteAlive(s)) alive.push_back(s);
  uint32_t kept = 0;  // accepted in an earlier attempt of this round and not alive now: still counts
  for (const auto& [name, s] : sites_)
    if (s.accepted && std::find(alive.begin(), alive.end(), name) == alive.end()) ++kept;
  // Wait for every eligible site a while (longer for long rounds), never more than half the deadline.
  auto grace = std::min<std::chrono::milliseconds>(
      std::max<std::chrono::milliseconds>(options_.select_grace, RoundDeadline(config_) / 10),
      RoundDeadline(config_) / 2);
  const bool everyone = !eligible.empty() && alive.size() == eligible.size();
  const bool enough = alive.size() + kept >= config_.min_sites && !alive.empty() && now - entered_ >= grace;
  if (everyone || enough) {
    std::vector<std::string> changed;
    for (const auto& name : alive) {
      auto it = sites_.find(name);
      if (it != sites_.end() && it->second.accepted) continue;  // reused, not retrained
      RoundSiteRecord rs;
      rs.job_id = job_.job_id;
      rs.round = round_.round;
      rs.site = name;
      rs.attempt = round_.attempt;
      rs.task_id = TrainTaskId(name);
      rs.state = "selected";
      sites_[name] = rs;
      changed.push_back(name);
    }
    spdlog::info("job {} round {} attempt {}: selected {} of {} eligible sites", job_.job_id, round_.round,
                 round_.attempt, alive.size(), eligible.size());
    if (!Transition(RoundEvent::kSitesSelected, now, changed).ok()) return;
    QueueTrainTasks();
    (void)Transition(RoundEvent::kTasksSent, now, {});
    PublishProgress("progress", now);
    return;
  }
  if (now >= deadline_) {
    round_.reason = "only " + std::to_string(alive.size() + kept) + " of min_sites " +
                    std::to_string(config_.min_sites) + " sites connected before the deadline";
    (void)Transition(RoundEvent::kCollectNoQuorum, now, {});
  }
}

void JobRunner::QueueTrainTasks() {
  for (auto& [name, s] : sites_) {
    if (s.accepted || SiteAnswered(s) || s.attempt != round_.attempt || s.state == "dropped") continue;
    host_.QueueTask(name, QueuedTask{s.task_id, job_.job_id, round_.round, TaskType::kTrain});
  }
}

void JobRunner::QueueEvalTasks() {
  for (auto& [name, s] : sites_) {
    if (!s.accepted || EvalAnswered(s) || s.eval_task_id.empty()) continue;
    host_.QueueTask(name, QueuedTask{s.eval_task_id, job_.job_id, round_.round, TaskType::kEvaluate});
  }
}

void JobRunner::StepCollecting(SteadyClock::time_point now) {
  bool all = true;
  for (const auto& [name, s] : sites_) {
    if (!s.accepted && s.attempt != round_.attempt) continue;
    if (s.state == "dropped") continue;
    if (!SiteAnswered(s)) all = false;
  }
  if (!all && now < deadline_) return;
  const uint32_t accepted = Accepted();
  std::vector<std::string> changed;
  for (auto& [name, s] : sites_) {
    if (s.accepted || s.attempt != round_.attempt || SiteAnswered(s) || s.state == "dropped") continue;
    s.state = "dropped";
    s.reason = "no update before the round deadline";
    changed.push_back(name);
  }
  const bool quorum = accepted >= config_.min_sites;
  if (!quorum) {
    round_.reason = "attempt " + std::to_string(round_.attempt) + ": " + std::to_string(accepted) +
                    " accepted updates, min_sites is " + std::to_string(config_.min_sites);
  }
  spdlog::info("job {} round {}: collection closed ({}): {} accepted, {} dropped", job_.job_id, round_.round,
               all ? "all selected sites answered" : "deadline passed", accepted, changed.size());
  if (!Transition(quorum ? RoundEvent::kCollectQuorum : RoundEvent::kCollectNoQuorum, now, changed).ok()) return;
  host_.CancelTasks(job_.job_id, round_.round, TaskType::kTrain, "round closed");
}

void JobRunner::StepRetrying(SteadyClock::time_point now) {
  if (round_.attempt >= config_.max_retries) {
    std::string reason = "round " + std::to_string(round_.round) + " failed after " +
                         std::to_string(round_.attempt + 1) + " attempts: " + round_.reason;
    job_.state = JobState::kFailed;
    job_.reason = reason;
    job_.ended_unix = static_cast<int64_t>(UnixNow());
    if (!Transition(RoundEvent::kRetriesExhausted, now, {}).ok()) return;
    spdlog::warn("job {}: failed: {}", job_.job_id, reason);
    host_.CancelTasks(job_.job_id, std::nullopt, std::nullopt, "job failed");
    PublishProgress("job_ended", now);
    return;
  }
  round_.attempt += 1;
  deadline_ = now + RoundDeadline(config_);
  spdlog::info("job {} round {}: retrying (attempt {} of {}) with the sites still alive", job_.job_id, round_.round,
               round_.attempt, config_.max_retries);
  (void)Transition(RoundEvent::kRetry, now, {});
}

void JobRunner::StepAggregating(SteadyClock::time_point now) {
  agg::AggregateRequest req;
  req.global_model = host_.blobs().PathOf(round_.model_in);
  req.schema = schema_;
  req.options = rule_;
  if (!job_.opt_state_hash.empty()) req.optimizer_state = host_.blobs().PathOf(job_.opt_state_hash);
  for (const auto& [name, s] : sites_) {
    if (!s.accepted) continue;
    // The norm validated on arrival (same schema, same definition): Aggregate skips
    // its own pass over the update. Unknown (older database): Aggregate computes it.
    std::optional<double> norm;
    if (auto it = update_norms_.find(name); it != update_norms_.end()) norm = it->second;
    req.updates.push_back(agg::UpdateRef{name, s.examples, host_.blobs().PathOf(s.update_hash), norm});
  }
  auto t0 = SteadyClock::now();
  auto res = agg::Aggregate(req, host_.blobs());
  if (!res.ok()) {
    round_.reason = "aggregation failed: " + res.status().ToString();
    job_.state = JobState::kFailed;
    job_.reason = "round " + std::to_string(round_.round) + ": " + round_.reason;
    job_.ended_unix = static_cast<int64_t>(UnixNow());
    spdlog::error("job {}: {}", job_.job_id, job_.reason);
    if (!Transition(RoundEvent::kAggregationFailed, now, {}).ok()) return;
    host_.CancelTasks(job_.job_id, std::nullopt, std::nullopt, "job failed");
    PublishProgress("job_ended", now);
    return;
  }
  spdlog::info("job {} round {}: aggregated {} updates with {} in {:.3f} s -> model {}", job_.job_id, round_.round,
               res->used_sites.size(), agg::RuleName(rule_.rule),
               std::chrono::duration<double>(SteadyClock::now() - t0).count(), res->model_hash);
  round_.model_out = res->model_hash;
  auto size = host_.blobs().Size(res->model_hash);
  round_.model_out_size = size.ok() ? *size : res->model_bytes;
  round_.opt_state_out = res->state_hash.value_or("");
  std::vector<std::string> changed;
  for (const auto& rej : res->rejected) {
    auto& s = sites_.at(rej.site);
    s.accepted = false;
    s.state = "rejected";
    s.reason = std::string(agg::RejectReasonName(rej.reason)) + ": " + rej.message;
    changed.push_back(rej.site);
  }
  for (auto& [name, s] : sites_) {
    if (!s.accepted || !config_.evaluate) continue;
    s.eval_task_id = EvalTaskId(name);
    s.state = "evaluating";
    changed.push_back(name);
  }
  deadline_ = now + RoundDeadline(config_);
  if (!Transition(RoundEvent::kAggregated, now, changed).ok()) return;
  QueueEvalTasks();
}

void JobRunner::StepEvaluating(SteadyClock::time_point now) {
  bool all = true;
  for (const auto& [name, s] : sites_)
    if (s.accepted && !s.eval_task_id.empty() && !EvalAnswered(s)) all = false;
  if (!all && now < deadline_) return;
  double loss = 0, acc = 0;
  uint64_t n = 0;
  for (const auto& [name, s] : sites_) {
    if (!s.evaluated) continue;
    loss += s.eval_loss * static_cast<double>(s.eval_examples);
    acc += s.eval_accuracy * static_cast<double>(s.eval_examples);
    n += s.eval_examples;
  }
  round_.eval_examples = n;
  round_.eval_loss = n ? loss / static_cast<double>(n) : 0;
  round_.eval_accuracy = n ? acc / static_cast<double>(n) : 0;
  job_.rounds_done = round_.round;
  job_.model_hash = round_.model_out;
  job_.model_size = round_.model_out_size;
  if (agg::IsFedOpt(rule_.rule)) job_.opt_state_hash = round_.opt_state_out;
  const bool last = job_.rounds_done >= job_.rounds_total;
  if (last) {
    job_.state = JobState::kSucceeded;
    job_.ended_unix = static_cast<int64_t>(UnixNow());
  }
  // The next round is written in the same transaction as the commit.
  JobRunner* self = this;
  RoundRecord next;
  if (!last) {
    next.job_id = job_.job_id;
    next.round = round_.round + 1;
    next.state = RoundState::kSelecting;
    next.started_unix = UnixNow();
    next.deadline_left_ms = RoundDeadline(config_).count();
    next.model_in = job_.model_hash;
    next.model_in_size = job_.model_size;
  }
  auto extra = [&]() -> Status {
    HANSE_RETURN_IF_ERROR(self->host_.store().PutCheckpoint(
        {job_.job_id, round_.round, round_.model_out, round_.model_out_size, false}));
    if (!last) HANSE_RETURN_IF_ERROR(self->host_.store().PutRound(next));
    return Status::Ok();
  };
  if (!Transition(RoundEvent::kEvaluationDone, now, {}, extra).ok()) return;
  spdlog::info("job {} round {}: committed checkpoint {} (eval loss {:.4f}, accuracy {:.4f} over {} examples)",
               job_.job_id, round_.round, round_.model_out, round_.eval_loss, round_.eval_accuracy, n);
  host_.CancelTasks(job_.job_id, round_.round, TaskType::kEvaluate, "round committed");
  PublishProgress("committed", now);
  ApplyRetention();
  if (last) {
    spdlog::info("job {}: succeeded after {} rounds; final model {}", job_.job_id, job_.rounds_done,
                 job_.model_hash);
    PublishProgress("job_ended", now);
    return;
  }
  StartRound(round_.round + 1, now);
  round_ = next;
}

void JobRunner::ApplyRetention() {
  Store& st = host_.store();
  BlobStore& blobs = host_.blobs();
  std::vector<std::string> to_remove;
  {
    Store::Transaction tx(st);
    if (!tx.begin_status().ok()) return;
    if (round_.round > options_.keep_updates_rounds) {
      const uint32_t cutoff = round_.round - options_.keep_updates_rounds;
      auto ups = st.ListUpdates(job_.job_id);
      if (ups.ok()) {
        for (const auto& u : *ups) {
          if (u.deleted || u.round > cutoff) continue;
          if (st.MarkUpdateDeleted(u.job_id, u.round, u.site, u.task_id).ok()) to_remove.push_back(u.update_hash);
        }
      }
    }
    if (options_.keep_checkpoints > 0) {
      auto cps = st.ListCheckpoints(job_.job_id);
      if (cps.ok()) {
        for (const auto& c : *cps) {
          if (c.deleted || c.round == 0 || c.round + options_.keep_checkpoints > round_.round) continue;
          if (st.MarkCheckpointDeleted(c.job_id, c.round).ok()) to_remove.push_back(c.hash);
        }
      }
    }
    if (!tx.Commit().ok()) return;
  }
  for (const auto& h : to_remove) {
    auto used = st.HashInUse(h);
    if (used.ok() && !*used && blobs.Contains(h)) {
      Status s = blobs.Remove(h);
      if (!s.ok()) spdlog::warn("retention: {}", s.ToString());
    }
  }
  if (!to_remove.empty())
    spdlog::info("job {}: retention removed {} blobs after round {}", job_.job_id, to_remove.size(), round_.round);
}

void JobRunner::PublishProgress(const std::string& kind, SteadyClock::time_point now) {
  proto::RoundEvent e;
  e.job_id = job_.job_id;
  e.round = round_.round;
  e.kind = kind;
  uint32_t expected = 0;
  for (const auto& [name, s] : sites_)
    if (s.accepted || s.attempt == round_.attempt) ++expected;
  e.expected = expected;
  e.answered = Answered();
  e.elapsed_seconds = round_.duration_s;
  e.eval_loss = round_.eval_loss;
  e.eval_accuracy = round_.eval_accuracy;
  e.job_state = ToProto(job_.state);
  e.reason = job_.reason;
  host_.Publish(e);
}

proto::Task JobRunner::BuildTask(const QueuedTask& q) const {
  proto::Task t;
  t.task_id = q.task_id;
  t.job_id = job_.job_id;
  t.round = q.round;
  t.kind = q.type == TaskType::kTrain ? proto::TaskKind::kTrain : proto::TaskKind::kEvaluate;
  t.lead = job_.lead;
  if (q.type == TaskType::kTrain) {
    t.model_hash = round_.model_in;
    t.model_size = round_.model_in_size;
  } else {
    t.model_hash = round_.model_out;
    t.model_size = round_.model_out_size;
  }
  t.architecture = config_.architecture;
  t.module_hash = job_.module_hash;
  t.module_size = job_.module_size;
  t.dataset = config_.dataset;
  const auto& tr = config_.training;
  t.training.epochs = tr.epochs;
  t.training.batch_size = tr.batch_size;
  t.training.optimizer = tr.optimizer;
  t.training.lr = tr.lr;
  t.training.momentum = tr.momentum;
  t.training.weight_decay = tr.weight_decay;
  t.training.prox_mu = tr.prox_mu;
  t.training.trainable = tr.trainable;
  t.training.update_dtype = tr.update_dtype;
  t.training.max_examples = tr.max_examples;
  t.training.hidden = config_.hidden;
  // The site is named in the task id: <job>/r<round>/.../<site>/<kind>.
  std::string site;
  {
    auto end = q.task_id.rfind('/');
    auto begin = q.task_id.rfind('/', end - 1);
    if (end != std::string::npos && begin != std::string::npos) site = q.task_id.substr(begin + 1, end - begin - 1);
  }
  t.seed = TaskSeed(config_.seed, q.round, site);
  t.model_name = config_.model_name;
  t.initial_model_hash = job_.initial_model;
  return t;
}

bool JobRunner::OwnsTask(const std::string& site, const std::string& task_id) const {
  auto it = sites_.find(site);
  if (it == sites_.end()) return false;
  return it->second.task_id == task_id || it->second.eval_task_id == task_id;
}

UpdateVerdict JobRunner::CheckUpdate(const std::string& site, const proto::Update& u) {
  using K = UpdateVerdict::Kind;
  auto reject = [](proto::Reason r, std::string text) { return UpdateVerdict{K::kReject, r, std::move(text)}; };
  auto stored = host_.store().GetUpdate(job_.job_id, u.round, site, u.task_id);
  if (!stored.ok()) return reject(proto::Reason::kInternal, stored.status().ToString());
  if (stored->has_value()) {
    if ((*stored)->update_hash == u.update_hash) return UpdateVerdict{K::kAlreadyStored, {}, "already stored"};
    return reject(proto::Reason::kUpdateDuplicateMismatch,
                  "a different update is already stored for task " + u.task_id + " (" + (*stored)->update_hash + ")");
  }
  if (u.task_id.rfind(job_.job_id + "/", 0) != 0)
    return reject(proto::Reason::kUpdateWrongJob, "task " + u.task_id + " is not a task of job " + job_.job_id);
  if (finished()) return reject(proto::Reason::kUpdateLate, "job " + job_.job_id + " has ended");
  if (u.round < round_.round)
    return reject(proto::Reason::kUpdateLate, "round " + std::to_string(u.round) + " is closed");
  if (u.round > round_.round)
    return reject(proto::Reason::kUnknownTask, "round " + std::to_string(u.round) + " has not started");
  auto it = sites_.find(site);
  if (it == sites_.end())
    return reject(proto::Reason::kSiteNotSelected, "site " + site + " was not selected for round " +
                                                       std::to_string(round_.round));
  const auto& rs = it->second;
  if (u.task_id != rs.task_id) {
    if (rs.attempt != round_.attempt && !rs.accepted)
      return reject(proto::Reason::kSiteNotSelected, "site " + site + " is not selected in attempt " +
                                                         std::to_string(round_.attempt));
    return reject(proto::Reason::kUpdateLate, "task " + u.task_id + " is not the open task of " + site +
                                                  " (" + rs.task_id + ")");
  }
  if (!IsCollecting(round_.state))
    return reject(proto::Reason::kUpdateLate, "round " + std::to_string(round_.round) + " is no longer collecting (" +
                                                  RoundStateName(round_.state) + ")");
  if (rs.state == "dropped" || rs.state == "rejected" || rs.state == "refused")
    return reject(proto::Reason::kUpdateLate, "site " + site + " already " + rs.state + " in this round");
  if (u.examples == 0) return reject(proto::Reason::kUpdateInvalid, "update reports 0 examples");
  if (u.update_size > 2 * round_.model_in_size + (1u << 20))
    return reject(proto::Reason::kUpdateInvalid, "update of " + std::to_string(u.update_size) +
                                                     " bytes is larger than twice the model");
  return UpdateVerdict{K::kPull, {}, {}};
}

Result<std::optional<proto::Reject>> JobRunner::AcceptUpdate(const std::string& site, const proto::Update& u,
                                                             const agg::ValidatedUpdate& validated,
                                                             SteadyClock::time_point now) {
  auto v = CheckUpdate(site, u);
  if (v.kind == UpdateVerdict::Kind::kAlreadyStored) return std::optional<proto::Reject>();
  if (v.kind == UpdateVerdict::Kind::kReject) return std::optional<proto::Reject>(proto::Reject{v.reason, v.text, u.task_id});
  auto& rs = sites_.at(site);
  rs.accepted = true;
  rs.state = "updated";
  rs.update_hash = u.update_hash;
  rs.update_size = u.update_size;
  rs.examples = u.examples;
  rs.train_loss = MetricOf(u.metrics, {"train_loss", "loss"});
  rs.train_accuracy = MetricOf(u.metrics, {"train_accuracy", "accuracy"});
  rs.seconds += DeviceSeconds(u.usage);
  update_norms_[site] = validated.l2_norm;
  UpdateRecord rec{job_.job_id, u.round, site, u.task_id, u.update_hash, u.update_size, u.examples, UnixNow(),
                   false, validated.l2_norm};
  UsageRecord usage;
  usage.unix_time = static_cast<int64_t>(UnixNow());
  usage.job_id = job_.job_id;
  usage.lead = job_.lead;
  usage.site = site;
  usage.round = u.round;
  usage.kind = "train";
  usage.task_id = u.task_id;
  usage.cpu_seconds = u.usage.cpu_seconds;
  usage.gpu_seconds = u.usage.gpu_seconds;
  usage.wall_seconds = u.usage.wall_seconds;
  usage.device = u.usage.device_kind;
  Store& st = host_.store();
  HANSE_RETURN_IF_ERROR(Transition(RoundEvent::kUpdateAccepted, now, {site}, [&]() -> Status {
    HANSE_RETURN_IF_ERROR(st.PutUpdate(rec));
    auto added = st.AddUsage(usage);
    return added.status();
  }));
  spdlog::info("job {} round {}: accepted update {} from {} ({} examples, norm {:.4g}); {}/{} answered", job_.job_id,
               round_.round, u.update_hash.substr(0, 12), site, u.examples, validated.l2_norm, Answered(),
               sites_.size());
  PublishProgress("progress", now);
  return std::optional<proto::Reject>();
}

void JobRunner::RejectUpdate(const std::string& site, const proto::Update& u, const std::string& why) {
  auto it = sites_.find(site);
  if (it == sites_.end() || it->second.task_id != u.task_id || it->second.accepted) return;
  it->second.state = "rejected";
  it->second.reason = why;
  Store& st = host_.store();
  Store::Transaction tx(st);
  Status s = tx.begin_status();
  if (s.ok()) s = st.PutRoundSite(it->second);
  if (s.ok()) s = tx.Commit();
  if (!s.ok()) Fatal(s);
  spdlog::warn("job {} round {}: rejected update from {}: {}", job_.job_id, round_.round, site, why);
}

std::optional<proto::Reject> JobRunner::OnEvaluation(const std::string& site, const proto::EvaluationResult& r,
                                                     SteadyClock::time_point now) {
  auto it = sites_.find(site);
  if (r.round != round_.round || it == sites_.end() || it->second.eval_task_id != r.task_id) {
    return proto::Reject{proto::Reason::kUpdateLate,
                         "evaluation task " + r.task_id + " is not open (job " + job_.job_id + " round " +
                             std::to_string(round_.round) + ")",
                         r.task_id};
  }
  auto& s = it->second;
  if (s.evaluated) return std::nullopt;  // a resend: acknowledged, not counted again
  if (round_.state != RoundState::kEvaluating)
    return proto::Reject{proto::Reason::kUpdateLate, "round is not evaluating", r.task_id};
  s.evaluated = true;
  s.state = "evaluated";
  s.eval_loss = r.loss;
  s.eval_accuracy = r.accuracy;
  s.eval_examples = r.examples;
  s.seconds += DeviceSeconds(r.usage);
  UsageRecord usage;
  usage.unix_time = static_cast<int64_t>(UnixNow());
  usage.job_id = job_.job_id;
  usage.lead = job_.lead;
  usage.site = site;
  usage.round = r.round;
  usage.kind = "evaluate";
  usage.task_id = r.task_id;
  usage.cpu_seconds = r.usage.cpu_seconds;
  usage.gpu_seconds = r.usage.gpu_seconds;
  usage.wall_seconds = r.usage.wall_seconds;
  usage.device = r.usage.device_kind;
  Store& st = host_.store();
  Store::Transaction tx(st);
  Status ss = tx.begin_status();
  if (ss.ok()) ss = st.PutRoundSite(s);
  if (ss.ok()) ss = st.AddUsage(usage).status();
  if (ss.ok()) ss = tx.Commit();
  if (!ss.ok()) Fatal(ss);
  spdlog::info("job {} round {}: evaluation from {}: loss {:.4f} accuracy {:.4f} on {} examples", job_.job_id,
               round_.round, site, r.loss, r.accuracy, r.examples);
  (void)now;
  return std::nullopt;
}

void JobRunner::OnTaskRefused(const std::string& site, const std::string& task_id, proto::Reason reason,
                              const std::string& text) {
  auto it = sites_.find(site);
  if (it == sites_.end()) return;
  auto& s = it->second;
  std::string why = std::string(proto::ReasonName(reason)) + ": " + text;
  if (s.task_id == task_id && IsCollecting(round_.state) && !s.accepted && !SiteAnswered(s)) {
    s.state = "refused";
  } else if (s.eval_task_id == task_id && round_.state == RoundState::kEvaluating && !EvalAnswered(s)) {
    s.state = "eval_refused";
  } else {
    return;
  }
  s.reason = why;
  Store& st = host_.store();
  Store::Transaction tx(st);
  Status ss = tx.begin_status();
  if (ss.ok()) ss = st.PutRoundSite(s);
  if (ss.ok()) ss = tx.Commit();
  if (!ss.ok()) Fatal(ss);
  spdlog::warn("job {} round {}: site {} refused task {}: {}", job_.job_id, round_.round, site, task_id, why);
}

void JobRunner::Cancel(const std::string& reason, SteadyClock::time_point now) {
  if (finished()) return;
  job_.state = JobState::kCancelled;
  job_.reason = reason;
  job_.ended_unix = static_cast<int64_t>(UnixNow());
  round_.reason = reason;
  if (!Transition(RoundEvent::kCancel, now, {}).ok()) return;
  spdlog::info("job {}: cancelled: {}", job_.job_id, reason);
  host_.CancelTasks(job_.job_id, std::nullopt, std::nullopt, reason);
  PublishProgress("job_ended", now);
}

}  // namespace hanse::coord
