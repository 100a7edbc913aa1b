#include "worker/policy.h"

#include <chrono>
#include <string>

#include <date/date.h>
#include <gtest/gtest.h>

#include "test_util.h"

namespace hanse::site {
namespace {

using proto::Reason;
using namespace std::chrono_literals;

std::chrono::system_clock::time_point Utc(int y, unsigned m, unsigned d, int hh, int mm) {
  return date::sys_days{date::year{y} / m / d} + std::chrono::hours(hh) + std::chrono::minutes(mm);
}

const std::string kHashA(64, 'a');
const std::string kHashB(64, 'b');

PolicyConfig BasePolicy() {
  PolicyConfig p;
  p.leads = {"alice"};
  p.architectures = {"mlp", "cnn"};
  p.max_epochs = 5;
  p.max_batch_size = 256;
  p.devices = {"cpu"};
  p.timezone = "Europe/Paris";
  p.max_model_bytes = 10 << 20;
  return p;
}

proto::Task BaseTask() {
  proto::Task t;
  t.task_id = "t1";
  t.job_id = "j1";
  t.round = 1;
  t.kind = proto::TaskKind::kTrain;
  t.lead = "alice";
  t.model_hash = kHashA;
  t.initial_model_hash = kHashA;
  t.model_name = "cnn-init";
  t.model_size = 1 << 20;
  t.architecture = "cnn";
  t.dataset = "fashion-mnist";
  t.training.epochs = 1;
  t.training.batch_size = 64;
  return t;
}

PolicyContext BaseContext() {
  PolicyContext c;
  c.now = Utc(2026, 11, 25, 12, 0);  // a Wednesday, 13:00 in Paris
  c.site_devices = {"cpu"};
  c.site_datasets = {"fashion-mnist"};
  return c;
}

TEST(Policy, AcceptsTaskInsidePolicy) {
  auto d = CheckTask(BasePolicy(), BaseTask(), BaseContext());
  EXPECT_TRUE(d.accepted()) << d.text;
  EXPECT_EQ(d.reason, Reason::kUnspecified);
}

TEST(Policy, RefusesUnknownLeadAndAcceptsWildcard) {
  auto task = BaseTask();
  task.lead = "mallory";
  auto d = CheckTask(BasePolicy(), task, BaseContext());
  EXPECT_EQ(d.reason, Reason::kPolicyLead);
  EXPECT_NE(d.text.find("mallory"), std::string::npos) << d.text;

  auto p = BasePolicy();
  p.leads = {};
  EXPECT_EQ(CheckTask(p, BaseTask(), BaseContext()).reason, Reason::kPolicyLead) << "empty list admits nobody";
  p.leads = {"*"};
  EXPECT_TRUE(CheckTask(p, task, BaseContext()).accepted());
}

TEST(Policy, RefusesArchitectureNotListed) {
  auto p = BasePolicy();
  p.architectures = {"mlp"};
  auto d = CheckTask(p, BaseTask(), BaseContext());
  EXPECT_EQ(d.reason, Reason::kPolicyArchitecture);
  EXPECT_NE(d.text.find("cnn"), std::string::npos) << d.text;
}

TEST(Policy, EmptyArchitectureListAllowsBuiltinsButNotTorchScript) {
  auto p = BasePolicy();
  p.architectures = {};
  EXPECT_TRUE(CheckTask(p, BaseTask(), BaseContext()).accepted());
  auto task = BaseTask();
  task.architecture = "torchscript";
  task.module_hash = kHashB;
  p.torchscript_hashes = {kHashB};
  EXPECT_EQ(CheckTask(p, task, BaseContext()).reason, Reason::kPolicyArchitecture);
}

TEST(Policy, RefusesTorchScriptModuleWhoseHashIsNotAllowed) {
  auto p = BasePolicy();
  p.architectures = {"torchscript"};
  p.torchscript_hashes = {kHashA};
  auto task = BaseTask();
  task.architecture = "torchscript";
  task.module_hash = kHashB;
  auto d = CheckTask(p, task, BaseContext());
  EXPECT_EQ(d.reason, Reason::kPolicyArchitecture);
  EXPECT_NE(d.text.find(kHashB), std::string::npos) << d.text;
  task.module_hash = kHashA;
  EXPECT_TRUE(CheckTask(p, task, BaseContext()).accepted());
}

TEST(Policy, RefusesModelNameNotListed) {
  auto p = BasePolicy();
  p.models = {{"mlp-init", ""}};
  auto d = CheckTask(p, BaseTask(), BaseContext());
  EXPECT_EQ(d.reason, Reason::kPolicyModel);
  EXPECT_NE(d.text.find("cnn-init"), std::string::npos) << d.text;
  p.models = {{"cnn-init", ""}};
  EXPECT_TRUE(CheckTask(p, BaseTask(), BaseContext()).accepted());
}

TEST(Policy, PinnedModelHashChecksTheInitialModelNotTheRoundModel) {
  auto p = BasePolicy();
  p.models = {{"cnn-init", kHashA}};
  auto task = BaseTask();
  task.round = 3;
  task.model_hash = kHashB;  // global model of a later round: differs, that is fine
  EXPECT_TRUE(CheckTask(p, task, BaseContext()).accepted());
  task.initial_model_hash = kHashB;
  EXPECT_EQ(CheckTask(p, task, BaseContext()).reason, Reason::kPolicyModel);
}

TEST(Policy, RefusesModelLargerThanMax) {
  auto p = BasePolicy();
  auto task = BaseTask();
  task.model_size = p.max_model_bytes + 1;
  EXPECT_EQ(CheckTask(p, task, BaseContext()).reason, Reason::kPolicyModelSize);
  task.model_size = p.max_model_bytes;
  EXPECT_TRUE(CheckTask(p, task, BaseContext()).accepted());
}

TEST(Policy, RefusesDatasetTheSiteLacksOrDoesNotOffer) {
  auto task = BaseTask();
  task.dataset = "mnist";
  auto d = CheckTask(BasePolicy(), task, BaseContext());
  EXPECT_EQ(d.reason, Reason::kPolicyDataset);
  EXPECT_NE(d.text.find("mnist"), std::string::npos);

  auto p = BasePolicy();
  p.datasets = {"other"};
  auto ctx = BaseContext();
  ctx.site_datasets.push_back("other");
  EXPECT_EQ(CheckTask(p, BaseTask(), ctx).reason, Reason::kPolicyDataset);
}

TEST(Policy, RefusesTooManyEpochsAndTooLargeBatch) {
  auto task = BaseTask();
  task.training.epochs = 6;
  EXPECT_EQ(CheckTask(BasePolicy(), task, BaseContext()).reason, Reason::kPolicyEpochs);
  task = BaseTask();
  task.training.batch_size = 257;
  EXPECT_EQ(CheckTask(BasePolicy(), task, BaseContext()).reason, Reason::kPolicyBatchSize);
  task.training.batch_size = 256;
  EXPECT_TRUE(CheckTask(BasePolicy(), task, BaseContext()).accepted());
}

TEST(Policy, EvaluateTasksIgnoreTrainingLimitsAndQuota) {
  auto p = BasePolicy();
  p.quota_device_hours_per_lead_month = 1;
  auto task = BaseTask();
  task.kind = proto::TaskKind::kEvaluate;
  task.training.epochs = 100;
  auto ctx = BaseContext();
  ctx.lead_device_hours_this_month = 5;
  EXPECT_TRUE(CheckTask(p, task, ctx).accepted());
}

TEST(Policy, RefusesWhenNoAllowedDeviceIsAvailable) {
  auto p = BasePolicy();
  p.devices = {"cuda"};
  auto d = CheckTask(p, BaseTask(), BaseContext());
  EXPECT_EQ(d.reason, Reason::kPolicyDevice);
  EXPECT_NE(d.text.find("cuda"), std::string::npos);
  p.devices = {"cuda", "cpu"};
  EXPECT_EQ(AllowedDevices(p, {"cpu"}), std::vector<std::string>{"cpu"});
  EXPECT_TRUE(CheckTask(p, BaseTask(), BaseContext()).accepted());
  p.devices = {"cuda:1"};
  EXPECT_EQ(AllowedDevices(p, {"cpu", "cuda:0"}), std::vector<std::string>{"cuda"}) << "compared by kind";
}

TEST(Policy, WindowUsesTheSiteTimeZone) {
  auto p = BasePolicy();
  p.windows = {{{0, 1, 2, 3, 4}, 8 * 60, 18 * 60}};  // Mon-Fri 08:00-18:00 Paris
  auto ctx = BaseContext();
  ctx.now = Utc(2026, 11, 25, 16, 30);  // Wed 17:30 CET: inside
  EXPECT_TRUE(CheckTask(p, BaseTask(), ctx).accepted());
  ctx.now = Utc(2026, 11, 25, 17, 30);  // Wed 18:30 CET: outside
  auto d = CheckTask(p, BaseTask(), ctx);
  EXPECT_EQ(d.reason, Reason::kPolicyWindow);
  EXPECT_NE(d.text.find("Europe/Paris"), std::string::npos) << d.text;
  ctx.now = Utc(2026, 7, 1, 16, 30);  // Wed 18:30 CEST (summer time): outside
  EXPECT_EQ(CheckTask(p, BaseTask(), ctx).reason, Reason::kPolicyWindow);
  ctx.now = Utc(2026, 7, 1, 6, 30);  // Wed 08:30 CEST: inside
  EXPECT_TRUE(CheckTask(p, BaseTask(), ctx).accepted());
  ctx.now = Utc(2026, 11, 28, 12, 0);  // Saturday
  EXPECT_EQ(CheckTask(p, BaseTask(), ctx).reason, Reason::kPolicyWindow);
}

TEST(Policy, WindowPastMidnightCoversTheNextMorning) {
  auto p = BasePolicy();
  p.timezone = "UTC";
  p.windows = {{{4}, 22 * 60, 6 * 60}};  // Friday 22:00 to Saturday 06:00
  EXPECT_TRUE(*InAvailabilityWindow(p, Utc(2026, 11, 27, 23, 0)));   // Fri 23:00
  EXPECT_TRUE(*InAvailabilityWindow(p, Utc(2026, 11, 28, 5, 59)));   // Sat 05:59
  EXPECT_FALSE(*InAvailabilityWindow(p, Utc(2026, 11, 28, 6, 0)));   // Sat 06:00
  EXPECT_FALSE(*InAvailabilityWindow(p, Utc(2026, 11, 27, 3, 0)));   // Fri 03:00 (Thu not listed)
  EXPECT_FALSE(*InAvailabilityWindow(p, Utc(2026, 11, 28, 23, 0)));  // Sat 23:00
}

TEST(Policy, UnknownTimeZoneIsAnErrorThatNamesIt) {
  auto p = BasePolicy();
  p.timezone = "Mars/Olympus_Mons";
  auto st = ValidatePolicy(p);
  EXPECT_EQ(st.code(), Code::kInvalidArgument);
  EXPECT_NE(st.message().find("Mars/Olympus_Mons"), std::string::npos) << st.ToString();
  p.windows = {{{0}, 0, 60}};
  EXPECT_EQ(CheckTask(p, BaseTask(), BaseContext()).reason, Reason::kPolicyWindow);
  EXPECT_OK(ValidatePolicy(BasePolicy()));
}

TEST(Policy, ValidateRejectsBadWindows) {
  auto p = BasePolicy();
  p.windows = {{{7}, 0, 60}};
  EXPECT_EQ(ValidatePolicy(p).code(), Code::kInvalidArgument);
  p.windows = {{{1}, 60, 60}};
  EXPECT_EQ(ValidatePolicy(p).code(), Code::kInvalidArgument);
}

TEST(Policy, RefusesWhenMonthlyQuotaIsUsedUp) {
  auto p = BasePolicy();
  p.quota_device_hours_per_lead_month = 2.0;
  auto ctx = BaseContext();
  ctx.lead_device_hours_this_month = 1.99;
  EXPECT_TRUE(CheckTask(p, BaseTask(), ctx).accepted());
  ctx.lead_device_hours_this_month = 2.0;
  auto d = CheckTask(p, BaseTask(), ctx);
  EXPECT_EQ(d.reason, Reason::kPolicyQuota);
  EXPECT_NE(d.text.find("alice"), std::string::npos) << d.text;
  p.quota_device_hours_per_lead_month = 0;  // unlimited
  EXPECT_TRUE(CheckTask(p, BaseTask(), ctx).accepted());
}

TEST(Policy, MonthFollowsTheTimeZone) {
  auto p = BasePolicy();
  EXPECT_EQ(*PolicyMonth(p, Utc(2026, 11, 30, 23, 30)), "2026-12");  // 00:30 in Paris
  p.timezone = "UTC";
  EXPECT_EQ(*PolicyMonth(p, Utc(2026, 11, 30, 23, 30)), "2026-11");
}

TEST(Policy, FirstFailingCheckGivesTheReason) {
  auto task = BaseTask();
  task.lead = "mallory";
  task.training.epochs = 99;
  EXPECT_EQ(CheckTask(BasePolicy(), task, BaseContext()).reason, Reason::kPolicyLead);
}

}  // namespace
}  // namespace hanse::site
