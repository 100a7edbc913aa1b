// Site policy: whether this site accepts a task. Pure (no I/O, no clock of its
// own): the caller passes "now", the lead's usage this month and what the site
// has, so tests can place a task anywhere in time.
//
// Checks, in this order, the first failing one giving the reason:
//   lead (kPolicyLead), architecture and TorchScript module hash
//   (kPolicyArchitecture), initial model name and pinned hash (kPolicyModel),
//   model size (kPolicyModelSize), dataset (kPolicyDataset), epochs
//   (kPolicyEpochs), batch size (kPolicyBatchSize), devices (kPolicyDevice),
//   availability window (kPolicyWindow), monthly quota (kPolicyQuota).
// Epochs, batch size and quota apply to train tasks only.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/status.h"
#include "protocol/messages.h"

namespace hanse::site {

struct PolicyContext {
  std::chrono::system_clock::time_point now;
  double lead_device_hours_this_month = 0;   // from the site ledger
  std::vector<std::string> site_devices;     // device kinds the site offers: "cpu", "cuda"
  std::vector<std::string> site_datasets;    // logical datasets the site holds
};

struct PolicyDecision {
  proto::Reason reason = proto::Reason::kUnspecified;  // kUnspecified = accepted
  std::string text;                                     // why, for the lead and the audit log
  bool accepted() const { return reason == proto::Reason::kUnspecified; }
};

PolicyDecision CheckTask(const PolicyConfig& policy, const proto::Task& task, const PolicyContext& context);

// Checks what CheckTask cannot check per task: the time zone exists and the
// windows are sane. kInvalidArgument naming the problem.
Status ValidatePolicy(const PolicyConfig& policy);

// Whether `now` falls inside an availability window in the policy's time zone
// (true when there are no windows). A window whose end is not after its start
// runs past midnight into the next day. kInvalidArgument for an unknown zone.
Result<bool> InAvailabilityWindow(const PolicyConfig& policy, std::chrono::system_clock::time_point now);

// "YYYY-MM" of `now` in the policy's time zone: the month the quota counts in.
Result<std::string> PolicyMonth(const PolicyConfig& policy, std::chrono::system_clock::time_point now);

// "cuda:1" -> "cuda", "cpu" -> "cpu".
std::string DeviceKind(const std::string& device);

// Device kinds a task may use: the kinds of the policy's devices that the site
// offers ("cpu", "cuda"; "cuda:N" entries count as "cuda").
std::vector<std::string> AllowedDevices(const PolicyConfig& policy, const std::vector<std::string>& site_devices);

}  // namespace hanse::site
