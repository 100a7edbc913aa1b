// The admin API's read side and its authorization rules, by role:
//   lead:  its own jobs (list, status, watch, cancel, fetch) and its own usage;
//   admin: every job, every site, the whole ledger;
//   site:  the jobs that ran on it (list, status) and its own usage; nothing else.
// Pure functions over the Store: the coordinator loop calls them and turns a
// non-ok Status into a Reject (kPermissionDenied -> kUnauthorized, kNotFound -> kUnknownJob).
#pragma once

#include <string>

#include "core/config.h"
#include "core/status.h"
#include "coordinator/store.h"
#include "protocol/messages.h"
#include "protocol/transport.h"

namespace hanse::coord {

enum class JobAction : uint8_t { kRead, kWatch, kControl };  // control: cancel, fetch

// Ok when `who` may do `action` on `job`; kPermissionDenied naming who and what otherwise.
Status Authorize(const proto::Principal& who, const JobRecord& job, JobAction action, Store& store);

// kNotFound for an unknown job id; then Authorize.
Result<JobRecord> LoadAuthorizedJob(const proto::Principal& who, const std::string& job_id, JobAction action,
                                    Store& store);

proto::JobSummary Summarize(const JobRecord& job);

// Jobs `who` may read, in creation order.
Result<proto::JobList> ListJobsFor(const proto::Principal& who, Store& store);

// Per round: duration, sites that took part, per-site train metrics and example
// counts, evaluation metrics, the committed model hash.
Result<proto::JobStatus> JobStatusFor(const proto::Principal& who, const std::string& job_id, Store& store);

// Leads see their own usage, sites theirs, admins everything.
Result<proto::UsageReport> UsageFor(const proto::Principal& who, const proto::GetUsage& request, Store& store,
                                    const CostRates& rates);

// The checkpoint of a round (nullopt: the latest committed one; 0: the initial model).
Result<proto::ModelRef> ModelFor(const proto::Principal& who, const proto::FetchModel& request, Store& store);

// Maps a Status from the functions above to a wire reason.
proto::Reason ReasonFor(const Status& s);

}  // namespace hanse::coord
