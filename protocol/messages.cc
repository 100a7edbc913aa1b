#include "protocol/messages.h"

#include <type_traits>

namespace hanse::proto {

const char* ReasonName(Reason r) {
  switch (r) {
    case Reason::kUnspecified: return "unspecified";
    case Reason::kMalformed: return "malformed";
    case Reason::kIncompatibleVersion: return "incompatible_version";
    case Reason::kUnauthorized: return "unauthorized";
    case Reason::kUnknownJob: return "unknown_job";
    case Reason::kUnknownTask: return "unknown_task";
    case Reason::kInvalidJob: return "invalid_job";
    case Reason::kBlobNotFound: return "blob_not_found";
    case Reason::kBlobCorrupt: return "blob_corrupt";
    case Reason::kUpdateInvalid: return "update_invalid";
    case Reason::kUpdateDuplicateMismatch: return "update_duplicate_mismatch";
    case Reason::kUpdateLate: return "update_late";
    case Reason::kUpdateWrongJob: return "update_wrong_job";
    case Reason::kSiteNotSelected: return "site_not_selected";
    case Reason::kBusy: return "busy";
    case Reason::kPolicyLead: return "policy_lead";
    case Reason::kPolicyArchitecture: return "policy_architecture";
    case Reason::kPolicyModel: return "policy_model";
    case Reason::kPolicyDataset: return "policy_dataset";
    case Reason::kPolicyEpochs: return "policy_epochs";
    case Reason::kPolicyBatchSize: return "policy_batch_size";
    case Reason::kPolicyDevice: return "policy_device";
    case Reason::kPolicyWindow: return "policy_window";
    case Reason::kPolicyQuota: return "policy_quota";
    case Reason::kPolicyModelSize: return "policy_model_size";
    case Reason::kTrainingFailed: return "training_failed";
    case Reason::kCancelled: return "cancelled";
    case Reason::kInternal: return "internal";
  }
  return "unknown";
}

const char* JobStateName(JobState s) {
  switch (s) {
    case JobState::kQueued: return "queued";
    case JobState::kRunning: return "running";
    case JobState::kSucceeded: return "succeeded";
    case JobState::kFailed: return "failed";
    case JobState::kCancelled: return "cancelled";
  }
  return "unknown";
}

namespace {
template <class T>
constexpr const char* KindOf() {
  if constexpr (std::is_same_v<T, Hello>) return "hello";
  else if constexpr (std::is_same_v<T, Welcome>) return "welcome";
  else if constexpr (std::is_same_v<T, Heartbeat>) return "heartbeat";
  else if constexpr (std::is_same_v<T, Task>) return "task";
  else if constexpr (std::is_same_v<T, CancelTask>) return "cancel_task";
  else if constexpr (std::is_same_v<T, Busy>) return "busy";
  else if constexpr (std::is_same_v<T, BlobRequest>) return "blob_request";
  else if constexpr (std::is_same_v<T, BlobChunk>) return "blob_chunk";
  else if constexpr (std::is_same_v<T, Update>) return "update";
  else if constexpr (std::is_same_v<T, EvaluationResult>) return "evaluation_result";
  else if constexpr (std::is_same_v<T, Ack>) return "ack";
  else if constexpr (std::is_same_v<T, Reject>) return "reject";
  else if constexpr (std::is_same_v<T, SubmitJob>) return "submit_job";
  else if constexpr (std::is_same_v<T, JobSubmitted>) return "job_submitted";
  else if constexpr (std::is_same_v<T, ListJobs>) return "list_jobs";
  else if constexpr (std::is_same_v<T, JobList>) return "job_list";
  else if constexpr (std::is_same_v<T, GetJobStatus>) return "get_job_status";
  else if constexpr (std::is_same_v<T, JobStatus>) return "job_status";
  else if constexpr (std::is_same_v<T, WatchJob>) return "watch_job";
  else if constexpr (std::is_same_v<T, RoundEvent>) return "round_event";
  else if constexpr (std::is_same_v<T, CancelJob>) return "cancel_job";
  else if constexpr (std::is_same_v<T, FetchModel>) return "fetch_model";
  else if constexpr (std::is_same_v<T, ModelRef>) return "model_ref";
  else if constexpr (std::is_same_v<T, GetUsage>) return "get_usage";
  else if constexpr (std::is_same_v<T, UsageReport>) return "usage_report";
  else if constexpr (std::is_same_v<T, ListSites>) return "list_sites";
  else if constexpr (std::is_same_v<T, SiteList>) return "site_list";
  else static_assert(sizeof(T) == 0, "KindName: add the new message kind");
}
}  // namespace

const char* KindName(const Message& m) {
  return std::visit([](const auto& v) { return KindOf<std::decay_t<decltype(v)>>(); }, m);
}

}  // namespace hanse::proto
