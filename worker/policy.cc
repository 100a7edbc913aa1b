#include "worker/policy.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>

#include <date/date.h>
#include <date/tz.h>

namespace hanse::site {
namespace {

bool Contains(const std::vector<std::string>& list, const std::string& s) {
  return std::find(list.begin(), list.end(), s) != list.end();
}

std::string Join(const std::vector<std::string>& list) {
  if (list.empty()) return "(none)";
  std::string out;
  for (const auto& s : list) {
    if (!out.empty()) out += ", ";
    out += s;
  }
  return out;
}

PolicyDecision Refuse(proto::Reason reason, std::string text) { return {reason, std::move(text)}; }

// The zone lookup throws on an unknown name (the library's only error channel):
// turned into a Status here, once.
Result<const date::time_zone*> LocateZone(const std::string& name) {
  try {
    return date::locate_zone(name);
  } catch (const std::exception& e) {
    return Status::InvalidArgument("policy.timezone: unknown time zone \"" + name + "\": " + e.what());
  }
}

struct LocalTime {
  int weekday = 0;   // 0 = Monday .. 6 = Sunday
  int minute = 0;    // since local midnight
  int year = 0;
  unsigned month = 0;
};

Result<LocalTime> ToLocal(const std::string& zone_name, std::chrono::system_clock::time_point now) {
  HANSE_ASSIGN_OR_RETURN(const date::time_zone* zone, LocateZone(zone_name));
  auto local = zone->to_local(std::chrono::time_point_cast<std::chrono::seconds>(now));
  auto day = date::floor<date::days>(local);
  date::weekday wd{day};
  date::year_month_day ymd{day};
  LocalTime out;
  out.weekday = static_cast<int>((wd.c_encoding() + 6) % 7);  // c_encoding: 0 = Sunday
  out.minute = static_cast<int>(std::chrono::duration_cast<std::chrono::minutes>(local - day).count());
  out.year = static_cast<int>(ymd.year());
  out.month = static_cast<unsigned>(ymd.month());
  return out;
}

bool InWindow(const AvailabilityWindow& w, const LocalTime& t) {
  auto has_day = [&](int d) { return w.days.empty() || std::find(w.days.begin(), w.days.end(), d) != w.days.end(); };
  if (w.start_minute < w.end_minute) {
    return has_day(t.weekday) && t.minute >= w.start_minute && t.minute < w.end_minute;
  }
  // Runs past midnight: the evening part on a listed day, the morning part on the day after.
  int previous_day = (t.weekday + 6) % 7;
  return (has_day(t.weekday) && t.minute >= w.start_minute) || (has_day(previous_day) && t.minute < w.end_minute);
}

const char* kDayNames[] = {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"};

std::string DescribeWindows(const PolicyConfig& policy) {
  std::string out;
  for (const auto& w : policy.windows) {
    if (!out.empty()) out += "; ";
    std::string days;
    for (int d : w.days) {
      if (!days.empty()) days += ",";
      days += (d >= 0 && d < 7) ? kDayNames[d] : "?";
    }
    char buf[64];
    std::snprintf(buf, sizeof buf, " %02d:%02d-%02d:%02d", w.start_minute / 60, w.start_minute % 60,
                  w.end_minute / 60, w.end_minute % 60);
    out += (days.empty() ? std::string("every day") : days) + buf;
  }
  return out + " (" + policy.timezone + ")";
}

}  // namespace

std::string DeviceKind(const std::string& device) { return device.substr(0, device.find(':')); }

std::vector<std::string> AllowedDevices(const PolicyConfig& policy, const std::vector<std::string>& site_devices) {
  std::vector<std::string> site_kinds;
  for (const auto& d : site_devices) site_kinds.push_back(DeviceKind(d));
  std::vector<std::string> out;
  for (const auto& d : policy.devices) {
    std::string kind = DeviceKind(d);
    if (Contains(site_kinds, kind) && !Contains(out, kind)) out.push_back(kind);
  }
  return out;
}

Result<bool> InAvailabilityWindow(const PolicyConfig& policy, std::chrono::system_clock::time_point now) {
  if (policy.windows.empty()) return true;
  HANSE_ASSIGN_OR_RETURN(LocalTime t, ToLocal(policy.timezone, now));
  for (const auto& w : policy.windows) {
    if (InWindow(w, t)) return true;
  }
  return false;
}

Result<std::string> PolicyMonth(const PolicyConfig& policy, std::chrono::system_clock::time_point now) {
  HANSE_ASSIGN_OR_RETURN(LocalTime t, ToLocal(policy.timezone, now));
  char buf[16];
  std::snprintf(buf, sizeof buf, "%04d-%02u", t.year, t.month);
  return std::string(buf);
}

Status ValidatePolicy(const PolicyConfig& policy) {
  auto zone = LocateZone(policy.timezone);
  if (!zone.ok()) return zone.status();
  for (size_t i = 0; i < policy.windows.size(); ++i) {
    const auto& w = policy.windows[i];
    std::string where = "policy.windows[" + std::to_string(i) + "]";
    for (int d : w.days) {
      if (d < 0 || d > 6) return Status::InvalidArgument(where + ".days: day " + std::to_string(d) + " not in 0..6");
    }
    if (w.start_minute < 0 || w.start_minute > 24 * 60 || w.end_minute < 0 || w.end_minute > 24 * 60) {
      return Status::InvalidArgument(where + ": times must be within 00:00..24:00");
    }
    if (w.start_minute == w.end_minute) return Status::InvalidArgument(where + ": empty window (start = end)");
  }
  if (policy.quota_device_hours_per_lead_month < 0) {
    return Status::InvalidArgument("policy.quota_device_hours_per_lead_month: must be >= 0");
  }
  return Status::Ok();
}

PolicyDecision CheckTask(const PolicyConfig& policy, const proto::Task& task, const PolicyContext& context) {
  using proto::Reason;
  const bool train = task.kind == proto::TaskKind::kTrain;

  // Lead: empty list = nobody; "*" = everybody.
  if (!Contains(policy.leads, "*") && !Contains(policy.leads, task.lead)) {
    return Refuse(Reason::kPolicyLead, "lead \"" + task.lead + "\" may not use this site (policy.leads: " +
                                           Join(policy.leads) + ")");
  }

  // Architecture: empty list = the built-in ones; TorchScript must be listed
  // explicitly and its module hash must be allowed, since it is code.
  bool arch_ok = policy.architectures.empty()
                     ? (task.architecture == "mlp" || task.architecture == "cnn")
                     : Contains(policy.architectures, task.architecture);
  if (!arch_ok) {
    return Refuse(Reason::kPolicyArchitecture,
                  "architecture \"" + task.architecture + "\" is not allowed (policy.architectures: " +
                      Join(policy.architectures.empty() ? std::vector<std::string>{"mlp", "cnn"}
                                                        : policy.architectures) +
                      ")");
  }
  if (task.architecture == "torchscript" && !Contains(policy.torchscript_hashes, task.module_hash)) {
    return Refuse(Reason::kPolicyArchitecture, "TorchScript module " + task.module_hash +
                                                   " is not in policy.torchscript_hashes");
  }

  // Initial model: an empty map = any model; a listed name may pin the hash of
  // the initial (round 0) model.
  if (!policy.models.empty()) {
    auto it = policy.models.find(task.model_name);
    if (it == policy.models.end()) {
      std::vector<std::string> names;
      for (const auto& [name, hash] : policy.models) names.push_back(name);
      return Refuse(Reason::kPolicyModel, "initial model \"" + task.model_name +
                                              "\" is not allowed (policy.models: " + Join(names) + ")");
    }
    const std::string& initial = task.initial_model_hash.empty() ? task.model_hash : task.initial_model_hash;
    if (!it->second.empty() && it->second != initial) {
      return Refuse(Reason::kPolicyModel, "initial model \"" + task.model_name + "\" has hash " + initial +
                                              ", policy.models pins " + it->second);
    }
  }

  if (task.model_size > policy.max_model_bytes) {
    return Refuse(Reason::kPolicyModelSize, "model of " + std::to_string(task.model_size) +
                                                " bytes exceeds policy.max_model_bytes = " +
                                                std::to_string(policy.max_model_bytes));
  }

  if (!Contains(context.site_datasets, task.dataset)) {
    return Refuse(Reason::kPolicyDataset, "this site holds no dataset \"" + task.dataset + "\" (it holds: " +
                                              Join(context.site_datasets) + ")");
  }
  if (!policy.datasets.empty() && !Contains(policy.datasets, task.dataset)) {
    return Refuse(Reason::kPolicyDataset, "dataset \"" + task.dataset + "\" is not offered (policy.datasets: " +
                                              Join(policy.datasets) + ")");
  }

  if (train && task.training.epochs > policy.max_epochs) {
    return Refuse(Reason::kPolicyEpochs, std::to_string(task.training.epochs) + " epochs exceed policy.max_epochs = " +
                                             std::to_string(policy.max_epochs));
  }
  if (train && task.training.batch_size > policy.max_batch_size) {
    return Refuse(Reason::kPolicyBatchSize, "batch size " + std::to_string(task.training.batch_size) +
                                                " exceeds policy.max_batch_size = " +
                                                std::to_string(policy.max_batch_size));
  }

  if (AllowedDevices(policy, context.site_devices).empty()) {
    return Refuse(Reason::kPolicyDevice, "no device allowed by policy.devices (" + Join(policy.devices) +
                                             ") is available here (" + Join(context.site_devices) + ")");
  }

  auto in_window = InAvailabilityWindow(policy, context.now);
  if (!in_window.ok()) return Refuse(Reason::kPolicyWindow, in_window.status().message());
  if (!*in_window) {
    return Refuse(Reason::kPolicyWindow, "outside the availability windows: " + DescribeWindows(policy));
  }

  if (train && policy.quota_device_hours_per_lead_month > 0 &&
      context.lead_device_hours_this_month >= policy.quota_device_hours_per_lead_month) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "lead has used %.3f of %.3f device-hours this month",
                  context.lead_device_hours_this_month, policy.quota_device_hours_per_lead_month);
    return Refuse(Reason::kPolicyQuota, "\"" + task.lead + "\": " + buf);
  }
  return {};
}

}  // namespace hanse::site
