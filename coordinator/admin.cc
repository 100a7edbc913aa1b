#include "coordinator/admin.h"

#include <algorithm>

#include "coordinator/ledger.h"

namespace hanse::coord {

Status Authorize(const proto::Principal& who, const JobRecord& job, JobAction action, Store& store) {
  switch (who.role) {
    case proto::Role::kAdmin: return Status::Ok();
    case proto::Role::kLead:
      if (job.lead == who.name) return Status::Ok();
      return Status::PermissionDenied("lead " + who.name + " may not access job " + job.job_id + " of lead " +
                                      job.lead);
    case proto::Role::kSite: {
      if (action != JobAction::kRead)
        return Status::PermissionDenied("site " + who.name + " may only read jobs that ran on it");
      auto jobs = store.JobsOfSite(who.name);
      if (!jobs.ok()) return jobs.status();
      if (std::find(jobs->begin(), jobs->end(), job.job_id) != jobs->end()) return Status::Ok();
      return Status::PermissionDenied("job " + job.job_id + " did not run on site " + who.name);
    }
  }
  return Status::PermissionDenied("unknown role");
}

Result<JobRecord> LoadAuthorizedJob(const proto::Principal& who, const std::string& job_id, JobAction action,
                                    Store& store) {
  HANSE_ASSIGN_OR_RETURN(auto job, store.GetJob(job_id));
  if (!job) return Status::NotFound("no job " + job_id);
  HANSE_RETURN_IF_ERROR(Authorize(who, *job, action, store));
  return *job;
}

proto::JobSummary Summarize(const JobRecord& j) {
  proto::JobSummary s;
  s.job_id = j.job_id;
  s.name = j.name;
  s.lead = j.lead;
  s.state = static_cast<proto::JobState>(j.state);
  s.rounds_done = j.rounds_done;
  s.rounds_total = j.rounds_total;
  s.reason = j.reason;
  s.created_unix = j.created_unix;
  return s;
}

Result<proto::JobList> ListJobsFor(const proto::Principal& who, Store& store) {
  HANSE_ASSIGN_OR_RETURN(auto jobs, store.ListJobs());
  std::vector<std::string> site_jobs;
  if (who.role == proto::Role::kSite) {
    HANSE_ASSIGN_OR_RETURN(site_jobs, store.JobsOfSite(who.name));
  }
  proto::JobList out;
  for (const auto& j : jobs) {
    bool visible = who.role == proto::Role::kAdmin || (who.role == proto::Role::kLead && j.lead == who.name) ||
                   (who.role == proto::Role::kSite &&
                    std::find(site_jobs.begin(), site_jobs.end(), j.job_id) != site_jobs.end());
    if (visible) out.jobs.push_back(Summarize(j));
  }
  return out;
}

Result<proto::JobStatus> JobStatusFor(const proto::Principal& who, const std::string& job_id, Store& store) {
  HANSE_ASSIGN_OR_RETURN(auto job, LoadAuthorizedJob(who, job_id, JobAction::kRead, store));
  proto::JobStatus st;
  st.summary = Summarize(job);
  auto cfg = ParseJobConfig(job.job_toml, job.file_name, {});
  if (cfg.ok()) {
    st.strategy = cfg->strategy.rule;
    st.architecture = cfg->architecture;
    st.dataset = cfg->dataset;
  }
  HANSE_ASSIGN_OR_RETURN(auto rounds, store.ListRounds(job_id));
  for (const auto& r : rounds) {
    proto::RoundInfo ri;
    ri.round = r.round;
    ri.state = RoundStateName(r.state);
    ri.duration_seconds = r.duration_s;
    ri.eval_loss = r.eval_loss;
    ri.eval_accuracy = r.eval_accuracy;
    ri.eval_examples = r.eval_examples;
    if (r.state == RoundState::kCommitted) ri.model_hash = r.model_out;
    HANSE_ASSIGN_OR_RETURN(auto sites, store.ListRoundSites(job_id, r.round));
    for (const auto& s : sites) {
      if (s.accepted || s.attempt == r.attempt) ++ri.expected;
      if (s.accepted || s.state == "rejected" || s.state == "refused") ++ri.answered;
      proto::SiteRoundInfo si;
      si.site = s.site;
      si.state = s.state;
      si.examples = s.examples;
      si.train_loss = s.train_loss;
      si.train_accuracy = s.train_accuracy;
      si.eval_loss = s.eval_loss;
      si.eval_accuracy = s.eval_accuracy;
      si.eval_examples = s.eval_examples;
      si.seconds = s.seconds;
      si.reason = s.reason;
      ri.sites.push_back(std::move(si));
    }
    st.rounds.push_back(std::move(ri));
  }
  return st;
}

Result<proto::UsageReport> UsageFor(const proto::Principal& who, const proto::GetUsage& request, Store& store,
                                    const CostRates& rates) {
  UsageQuery q;
  q.from_unix = request.from_unix;
  q.to_unix = request.to_unix;
  q.by = static_cast<UsageGroupBy>(request.by);
  if (who.role == proto::Role::kLead) q.only_lead = who.name;
  if (who.role == proto::Role::kSite) q.only_site = who.name;
  HANSE_ASSIGN_OR_RETURN(auto rows, QueryLedger(store, q, rates));
  proto::UsageReport rep;
  rep.currency = rates.currency;
  for (const auto& r : rows) rep.rows.push_back(proto::UsageRow{r.key, r.tasks, r.cpu_hours, r.gpu_hours, r.cost});
  return rep;
}

Result<proto::ModelRef> ModelFor(const proto::Principal& who, const proto::FetchModel& request, Store& store) {
  HANSE_ASSIGN_OR_RETURN(auto job, LoadAuthorizedJob(who, request.job_id, JobAction::kControl, store));
  HANSE_ASSIGN_OR_RETURN(auto cps, store.ListCheckpoints(job.job_id));
  const CheckpointRecord* found = nullptr;
  for (const auto& c : cps) {
    if (c.deleted) continue;
    if (request.round ? c.round == *request.round : (!found || c.round > found->round)) found = &c;
  }
  if (!found) {
    return Status::NotFound("job " + job.job_id + " has no checkpoint" +
                            (request.round ? " for round " + std::to_string(*request.round) : std::string()) +
                            " (never committed, or removed by keep_checkpoints)");
  }
  return proto::ModelRef{job.job_id, found->round, found->hash, found->size};
}

proto::Reason ReasonFor(const Status& s) {
  switch (s.code()) {
    case Code::kPermissionDenied: return proto::Reason::kUnauthorized;
    case Code::kNotFound: return proto::Reason::kUnknownJob;
    case Code::kInvalidArgument: return proto::Reason::kInvalidJob;
    default: return proto::Reason::kInternal;
  }
}

}  // namespace hanse::coord
