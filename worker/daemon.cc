#include "worker/daemon.h"

#include <time.h>

#include <algorithm>
#include <deque>
#include <optional>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>

#include "core/fsutil.h"
#include "core/keys.h"
#include "core/sha256.h"
#include "protocol/codec.h"
#include "worker/policy.h"

namespace hanse::site {
namespace {

namespace fs = std::filesystem;
using SteadyClock = std::chrono::steady_clock;
using std::chrono::milliseconds;

std::string ReasonText(proto::Reason r) { return proto::ReasonName(r); }

double ProcessCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

bool Contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

std::string IsoNow(const Clock& clock) {
  auto t = std::chrono::system_clock::to_time_t(clock());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// A result (Update or EvaluationResult) the coordinator has not acknowledged yet.
struct PendingResult {
  proto::Envelope envelope;
  std::string task_id;
  std::string update_hash;   // empty for evaluations
  fs::path file;             // its copy under data_dir/pending
};

// The task being served: pulling its blobs, then running on the training thread.
struct ActiveTask {
  proto::Task task;
  enum class Phase { kPulling, kRunning } phase = Phase::kPulling;
  std::vector<std::string> waiting;       // blob hashes still being pulled
  SteadyClock::time_point last_progress;  // last chunk received (stall detection)
  int pull_restarts = 0;
  int pull_refusals = 0;                  // blob requests the coordinator refused
  std::optional<SteadyClock::time_point> retry_pull_at;
  std::thread thread;
  std::atomic<bool> cancel{false};
  std::atomic<bool> finished{false};
  std::string cancel_reason;
  // Written by the training thread before `finished` is set.
  std::optional<Result<TrainOutput>> train_result;
  std::optional<Result<EvalOutput>> eval_result;
  SteadyClock::time_point started;
  double cpu_at_start = 0;
  fs::path out_file;
  TrainInput input;
};

}  // namespace

Result<proto::ClientOptions> ClientOptionsFor(const SiteConfig& config) {
  proto::ClientOptions o;
  o.endpoint = config.coordinator;
  o.server_public_key = config.coordinator_public_key;
  if (o.server_public_key.empty()) {
    HANSE_ASSIGN_OR_RETURN(o.server_public_key, LoadPublicKey(config.coordinator_public_key_file));
  }
  HANSE_ASSIGN_OR_RETURN(o.secret_key, LoadSecretKey(config.secret_key_file));
  HANSE_ASSIGN_OR_RETURN(o.public_key, PublicKeyOf(o.secret_key));
  return o;
}

Result<std::map<std::string, Dataset>> LoadSiteDatasets(const SiteConfig& config) {
  std::map<std::string, Dataset> out;
  for (const auto& [name, dc] : config.datasets) {
    auto ds = LoadDataset(dc);
    if (!ds.ok()) return ds.status().WithContext("dataset \"" + name + "\"");
    ds->name = name;
    out.emplace(name, std::move(ds).value());
  }
  return out;
}

struct Daemon::Impl {
  DaemonParts parts;
  DaemonOptions options;
  DaemonStats stats;
  fs::path pending_dir;
  fs::path work_dir;

  std::unique_ptr<proto::Client> client;
  std::unique_ptr<proto::BlobReceiver> receiver;
  std::unique_ptr<proto::BlobSender> sender;
  uint64_t next_message_id = 1;
  bool was_connected = false;
  bool welcomed = false;
  SteadyClock::time_point last_hello{};

  std::unique_ptr<ActiveTask> active;
  std::map<std::string, PendingResult> pending;   // by task id
  std::map<uint64_t, std::string> sent_ids;       // message id of a sent result -> task id
  // Global models pulled for recent tasks, newest last. A round's evaluated model
  // is the next round's starting model, so the last few are kept; older ones are
  // removed so the site's disk does not grow with the number of rounds.
  std::deque<std::string> recent_models;
  static constexpr size_t kKeepModels = 2;
  static constexpr int kMaxPullRefusals = 3;

  // ------------------------------------------------------------ helpers

  const SiteConfig& config() const { return *parts.config; }

  std::vector<std::string> SiteDeviceKinds() const {
    std::vector<std::string> kinds;
    auto devices = parts.trainer->Devices();
    for (const auto& configured : config().devices) {
      const std::string d = DeviceKind(configured);
      bool present = devices.empty() || std::any_of(devices.begin(), devices.end(),
                                                    [&](const proto::DeviceInfo& i) { return i.kind == d; });
      if (present && !Contains(kinds, d)) kinds.push_back(d);
    }
    return kinds;
  }

  Status Send(proto::Message message, uint64_t in_reply_to = 0, uint64_t* id_out = nullptr) {
    proto::Envelope env;
    env.message_id = next_message_id++;
    env.in_reply_to = in_reply_to;
    env.message = std::move(message);
    if (id_out) *id_out = env.message_id;
    return client->Send(env);
  }

  // Audit failures are fatal: the site must not work unaudited.
  Status Audit(const AuditRecord& r) {
    auto seq = parts.audit->Append(r);
    if (!seq.ok()) {
      spdlog::critical("audit log write failed: {}", seq.status().ToString());
      return seq.status().WithContext("audit log");
    }
    return Status::Ok();
  }

  static AuditRecord RecordFor(const proto::Task& t, const std::string& event) {
    AuditRecord r;
    r.event = event;
    r.job_id = t.job_id;
    r.task_id = t.task_id;
    r.round = t.round;
    r.task_kind = t.kind == proto::TaskKind::kTrain ? "train" : "evaluate";
    r.lead = t.lead;
    r.model_hash = t.model_hash;
    r.module_hash = t.module_hash;
    r.architecture = t.architecture;
    r.dataset = t.dataset;
    return r;
  }

  fs::path PendingFile(const std::string& task_id) const { return pending_dir / (Sha256Hex(task_id) + ".msg"); }

  Status LoadPending() {
    std::error_code ec;
    if (!fs::exists(pending_dir, ec)) return Status::Ok();
    for (const auto& entry : fs::directory_iterator(pending_dir, ec)) {
      if (entry.path().extension() != ".msg") continue;
      HANSE_ASSIGN_OR_RETURN(std::string bytes, ReadWholeFile(entry.path()));
      auto env = proto::Decode(bytes);
      if (!env.ok()) {
        spdlog::warn("ignoring unreadable pending result {}: {}", entry.path().string(), env.status().ToString());
        continue;
      }
      PendingResult p;
      p.envelope = std::move(env).value();
      p.file = entry.path();
      if (const auto* u = std::get_if<proto::Update>(&p.envelope.message)) {
        p.task_id = u->task_id;
        p.update_hash = u->update_hash;
      } else if (const auto* e = std::get_if<proto::EvaluationResult>(&p.envelope.message)) {
        p.task_id = e->task_id;
      } else {
        continue;
      }
      spdlog::info("result of task {} is still owed to the coordinator; will re-send", p.task_id);
      pending.emplace(p.task_id, std::move(p));
    }
    if (ec) return Status::Io("list " + pending_dir.string() + ": " + ec.message());
    return Status::Ok();
  }

  // Sends (or re-sends) a pending result.
  void SendPending(PendingResult& p) {
    uint64_t id = 0;
    Status st = Send(p.envelope.message, 0, &id);
    if (!st.ok()) {
      spdlog::warn("sending the result of task {} failed ({}); will re-send after reconnect", p.task_id,
                   st.ToString());
      return;
    }
    sent_ids[id] = p.task_id;
    if (std::holds_alternative<proto::Update>(p.envelope.message)) {
      ++stats.updates_sent;
    } else {
      ++stats.evaluations_sent;
    }
  }

  Status AddPending(proto::Message message, const std::string& task_id, const std::string& update_hash) {
    PendingResult p;
    p.envelope.message = std::move(message);
    p.task_id = task_id;
    p.update_hash = update_hash;
    p.file = PendingFile(task_id);
    // Kept on disk first: a worker restarted before the ack re-sends it.
    HANSE_RETURN_IF_ERROR(WriteFileAtomic(p.file, proto::Encode(p.envelope)));
    auto [it, inserted] = pending.insert_or_assign(task_id, std::move(p));
    SendPending(it->second);
    return Status::Ok();
  }

  void DropPending(const std::string& task_id) {
    auto it = pending.find(task_id);
    if (it == pending.end()) return;
    std::error_code ec;
    fs::remove(it->second.file, ec);
    // The coordinator stored it (or will never take it): the site keeps only the
    // hash, in the audit log.
    if (!it->second.update_hash.empty()) {
      Status st = parts.store->Remove(it->second.update_hash);
      if (!st.ok() && st.code() != Code::kNotFound) spdlog::warn("removing update blob: {}", st.ToString());
    }
    pending.erase(it);
    for (auto s = sent_ids.begin(); s != sent_ids.end();) {
      s = s->second == task_id ? sent_ids.erase(s) : std::next(s);
    }
  }

  // Called when a task ends (whatever the outcome) with the model it used.
  void RetireModel(const std::string& hash) {
    if (hash.empty()) return;
    recent_models.erase(std::remove(recent_models.begin(), recent_models.end(), hash), recent_models.end());
    recent_models.push_back(hash);
    while (recent_models.size() > kKeepModels) {
      const std::string old = recent_models.front();
      recent_models.pop_front();
      Status st = parts.store->Remove(old);
      if (!st.ok() && st.code() != Code::kNotFound) spdlog::warn("removing model blob {}: {}", old, st.ToString());
    }
  }

  // ------------------------------------------------------------ connection

  void SendHello() {
    proto::Hello h;
    h.software_version = options.software_version;
    for (const auto& [name, ds] : *parts.datasets) {
      h.datasets.push_back({name, ds.train.size(), ds.test.size()});
    }
    auto kinds = SiteDeviceKinds();
    for (const auto& d : parts.trainer->Devices()) {
      if (Contains(kinds, d.kind)) h.devices.push_back(d);
    }
    if (h.devices.empty()) {
      for (const auto& k : kinds) h.devices.push_back({k, k});
    }
    Status st = Send(std::move(h));
    last_hello = SteadyClock::now();
    if (st.ok()) {
      ++stats.hellos_sent;
    } else {
      spdlog::warn("hello not sent: {}", st.ToString());
    }
  }

  // On every (re)connection: announce, resume pulls, re-send owed results.
  void OnConnected() {
    welcomed = false;
    SendHello();
    for (const auto& req : receiver->Resume()) (void)Send(req);
    for (auto& [id, p] : pending) SendPending(p);
  }

  // ------------------------------------------------------------ tasks

  Status OnTask(const proto::Envelope& env, const proto::Task& task) {
    if (auto it = pending.find(task.task_id); it != pending.end()) {
      spdlog::info("task {} is already done; re-sending its result", task.task_id);
      SendPending(it->second);
      return Status::Ok();
    }
    if (active) {
      if (active->task.task_id == task.task_id) return Status::Ok();  // re-sent after a reconnect: keep going
      ++stats.busy_sent;
      spdlog::info("busy with {}; answering Busy to {}", active->task.task_id, task.task_id);
      (void)Send(proto::Busy{task.task_id}, env.message_id);
      return Status::Ok();
    }

    PolicyContext ctx;
    ctx.now = parts.clock();
    ctx.site_devices = SiteDeviceKinds();
    for (const auto& [name, ds] : *parts.datasets) ctx.site_datasets.push_back(name);
    auto month = PolicyMonth(config().policy, ctx.now);
    if (month.ok()) ctx.lead_device_hours_this_month = parts.ledger->DeviceHours(task.lead, *month);
    PolicyDecision decision = CheckTask(config().policy, task, ctx);
    if (!decision.accepted()) {
      ++stats.tasks_refused;
      spdlog::warn("refused task {} (job {}, lead {}): {}: {}", task.task_id, task.job_id, task.lead,
                   ReasonText(decision.reason), decision.text);
      AuditRecord r = RecordFor(task, "refusal");
      r.decision = "refused";
      r.reason = ReasonText(decision.reason);
      r.detail = decision.text;
      HANSE_RETURN_IF_ERROR(Audit(r));
      (void)Send(proto::Reject{decision.reason, decision.text, task.task_id}, env.message_id);
      return Status::Ok();
    }

    ++stats.tasks_accepted;
    AuditRecord r = RecordFor(task, "task");
    r.decision = "accepted";
    HANSE_RETURN_IF_ERROR(Audit(r));
    spdlog::info("accepted {} task {} (job {}, round {}, lead {}, dataset {})",
                 task.kind == proto::TaskKind::kTrain ? "train" : "evaluate", task.task_id, task.job_id, task.round,
                 task.lead, task.dataset);

    active = std::make_unique<ActiveTask>();
    active->task = task;
    active->last_progress = SteadyClock::now();
    return StartPulls();
  }

  Status StartPulls() {
    ActiveTask& a = *active;
    a.waiting.clear();
    std::vector<std::pair<std::string, uint64_t>> blobs = {{a.task.model_hash, a.task.model_size}};
    if (!a.task.module_hash.empty()) blobs.emplace_back(a.task.module_hash, a.task.module_size);
    for (const auto& [hash, size] : blobs) {
      auto reqs = receiver->Start(hash, size);
      if (!reqs.ok()) {
        return FinishWithFailure(proto::Reason::kBlobNotFound,
                                 "cannot pull blob " + hash + ": " + reqs.status().ToString());
      }
      if (!receiver->IsComplete(hash)) a.waiting.push_back(hash);
      for (const auto& req : *reqs) (void)Send(req);
    }
    return MaybeStartRunning();
  }

  Status OnChunk(const proto::BlobChunk& chunk) {
    if (!active || active->phase != ActiveTask::Phase::kPulling || !Contains(active->waiting, chunk.hash)) {
      // A late copy of a chunk of a blob we hold is acknowledged, so the
      // coordinator stops counting it in flight.
      if (!receiver->IsActive(chunk.hash)) {
        auto ack = receiver->OnChunk(chunk);
        if (ack.ok())
          for (const auto& req : *ack) (void)Send(req);
      }
      return Status::Ok();  // a late chunk of an abandoned transfer
    }
    active->last_progress = SteadyClock::now();
    auto next = receiver->OnChunk(chunk);
    if (!next.ok()) {
      spdlog::warn("pull of {} failed: {}", chunk.hash, next.status().ToString());
      if (++active->pull_restarts > 2) {
        return FinishWithFailure(proto::Reason::kBlobCorrupt, "blob " + chunk.hash + ": " + next.status().ToString());
      }
      return StartPulls();
    }
    for (const auto& req : *next) (void)Send(req);
    if (receiver->IsComplete(chunk.hash)) {
      auto& w = active->waiting;
      w.erase(std::remove(w.begin(), w.end(), chunk.hash), w.end());
    }
    return MaybeStartRunning();
  }

  Status MaybeStartRunning() {
    ActiveTask& a = *active;
    if (a.phase != ActiveTask::Phase::kPulling || !a.waiting.empty()) return Status::Ok();
    auto size = parts.store->Size(a.task.model_hash);
    if (size.ok() && *size > config().policy.max_model_bytes) {
      return FinishWithFailure(proto::Reason::kPolicyModelSize,
                               "model blob has " + std::to_string(*size) + " bytes, policy.max_model_bytes = " +
                                   std::to_string(config().policy.max_model_bytes));
    }
    auto ds = parts.datasets->find(a.task.dataset);
    if (ds == parts.datasets->end()) {
      return FinishWithFailure(proto::Reason::kPolicyDataset, "no dataset \"" + a.task.dataset + "\"");
    }
    a.input.task = &a.task;
    a.input.model_file = parts.store->PathOf(a.task.model_hash);
    if (!a.task.module_hash.empty()) a.input.module_file = parts.store->PathOf(a.task.module_hash);
    a.input.dataset = &ds->second;
    a.input.site_name = config().name;
    a.input.threads = static_cast<int>(config().threads);
    a.input.devices = AllowedDevices(config().policy, SiteDeviceKinds());
    a.out_file = work_dir / (Sha256Hex(a.task.task_id) + ".safetensors");
    a.phase = ActiveTask::Phase::kRunning;
    a.started = SteadyClock::now();
    a.cpu_at_start = ProcessCpuSeconds();
    Trainer* trainer = parts.trainer;
    ActiveTask* task = &a;
    a.thread = std::thread([trainer, task] {
      if (task->task.kind == proto::TaskKind::kTrain) {
        task->train_result = trainer->Train(task->input, task->out_file, task->cancel);
      } else {
        task->eval_result = trainer->Evaluate(task->input);
      }
      task->finished.store(true, std::memory_order_release);
    });
    return Status::Ok();
  }

  // Ends the active task without a result; the coordinator learns why.
  Status FinishWithFailure(proto::Reason reason, const std::string& text) {
    ActiveTask& a = *active;
    const bool cancelled = reason == proto::Reason::kCancelled;
    if (cancelled) {
      ++stats.tasks_cancelled;
    } else {
      ++stats.tasks_failed;
    }
    spdlog::warn("task {} {}: {}", a.task.task_id, cancelled ? "cancelled" : "failed", text);
    for (const auto& h : a.waiting) receiver->Abandon(h);
    AuditRecord r = RecordFor(a.task, cancelled ? "cancelled" : "failed");
    r.reason = ReasonText(reason);
    r.detail = text;
    std::string task_id = a.task.task_id;
    std::string model_hash = a.task.model_hash;
    std::error_code ec;
    if (!a.out_file.empty()) fs::remove(a.out_file, ec);
    active.reset();
    RetireModel(model_hash);
    HANSE_RETURN_IF_ERROR(Audit(r));
    (void)Send(proto::Reject{reason, text, task_id});
    return Status::Ok();
  }

  proto::Usage FillUsage(proto::Usage u, const ActiveTask& a) const {
    double wall = std::chrono::duration<double>(SteadyClock::now() - a.started).count();
    if (u.wall_seconds <= 0) u.wall_seconds = wall;
    if (u.cpu_seconds <= 0) u.cpu_seconds = std::max(0.0, ProcessCpuSeconds() - a.cpu_at_start);
    if (u.device_kind.empty()) u.device_kind = u.gpu_seconds > 0 ? "cuda" : "cpu";
    return u;
  }

  Status RecordUsage(const ActiveTask& a, const proto::Usage& u) {
    LedgerRecord rec;
    auto month = PolicyMonth(config().policy, parts.clock());
    rec.month = month.ok() ? *month : "unknown";
    rec.lead = a.task.lead;
    rec.job_id = a.task.job_id;
    rec.task_id = a.task.task_id;
    rec.time = IsoNow(parts.clock);
    // A GPU task counts its GPU seconds; a CPU task the wall time it held the machine.
    rec.device_seconds = u.gpu_seconds > 0 ? u.gpu_seconds : u.wall_seconds;
    rec.cpu_seconds = u.cpu_seconds;
    rec.gpu_seconds = u.gpu_seconds;
    rec.device_kind = u.device_kind;
    Status st = parts.ledger->Record(rec);
    if (!st.ok()) spdlog::critical("ledger write failed: {}", st.ToString());
    return st;
  }

  // The training thread is done: send the result or the failure.
  Status OnFinished() {
    ActiveTask& a = *active;
    a.thread.join();
    if (a.cancel.load()) {
      return FinishWithFailure(proto::Reason::kCancelled,
                               a.cancel_reason.empty() ? "cancelled" : a.cancel_reason);
    }
    if (a.task.kind == proto::TaskKind::kTrain) {
      Result<TrainOutput>& res = *a.train_result;
      if (!res.ok()) return FinishWithFailure(proto::Reason::kTrainingFailed, res.status().ToString());
      TrainOutput out = std::move(res).value();
      fs::path file = out.update_file.empty() ? a.out_file : out.update_file;
      auto hash = parts.store->PutFile(file);
      std::error_code ec;
      fs::remove(file, ec);
      if (!hash.ok()) return FinishWithFailure(proto::Reason::kInternal, "storing the update: " + hash.status().ToString());
      auto size = parts.store->Size(*hash);
      proto::Update u;
      u.task_id = a.task.task_id;
      u.job_id = a.task.job_id;
      u.round = a.task.round;
      u.update_hash = *hash;
      u.update_size = size.ok() ? *size : 0;
      u.examples = out.examples;
      u.metrics = out.metrics;
      u.usage = FillUsage(out.usage, a);
      HANSE_RETURN_IF_ERROR(RecordUsage(a, u.usage));
      AuditRecord r = RecordFor(a.task, "update_sent");
      r.update_hash = u.update_hash;
      r.examples = u.examples;
      r.metrics = u.metrics;
      r.usage = u.usage;
      HANSE_RETURN_IF_ERROR(Audit(r));
      spdlog::info("task {} trained on {} examples; sending update {} ({} bytes)", u.task_id, u.examples,
                   u.update_hash.substr(0, 12), u.update_size);
      std::string task_id = a.task.task_id;
      std::string update_hash = u.update_hash;
      std::string model_hash = a.task.model_hash;
      active.reset();
      RetireModel(model_hash);
      return AddPending(std::move(u), task_id, update_hash);
    }
    Result<EvalOutput>& res = *a.eval_result;
    if (!res.ok()) return FinishWithFailure(proto::Reason::kTrainingFailed, res.status().ToString());
    EvalOutput out = std::move(res).value();
    proto::EvaluationResult e;
    e.task_id = a.task.task_id;
    e.job_id = a.task.job_id;
    e.round = a.task.round;
    e.examples = out.examples;
    e.loss = out.loss;
    e.accuracy = out.accuracy;
    e.usage = FillUsage(out.usage, a);
    HANSE_RETURN_IF_ERROR(RecordUsage(a, e.usage));
    AuditRecord r = RecordFor(a.task, "evaluation");
    r.examples = e.examples;
    r.metrics = {{"eval_loss", e.loss}, {"eval_accuracy", e.accuracy}};
    r.usage = e.usage;
    HANSE_RETURN_IF_ERROR(Audit(r));
    spdlog::info("task {} evaluated: accuracy {:.4f} loss {:.4f} on {} examples", e.task_id, e.accuracy, e.loss,
                 e.examples);
    std::string task_id = a.task.task_id;
    std::string model_hash = a.task.model_hash;
    active.reset();
    RetireModel(model_hash);
    return AddPending(std::move(e), task_id, "");
  }

  Status OnCancel(const proto::CancelTask& c) {
    if (!active || active->task.task_id != c.task_id) {
      spdlog::info("cancel for {}, which is not running here", c.task_id);
      return Status::Ok();
    }
    std::string why = "cancelled by the coordinator" + (c.reason.empty() ? "" : ": " + c.reason);
    if (active->phase == ActiveTask::Phase::kPulling) return FinishWithFailure(proto::Reason::kCancelled, why);
    active->cancel_reason = why;
    active->cancel.store(true);
    return Status::Ok();  // reported when the training thread stops
  }

  void OnBlobRequest(const proto::Envelope& env, const proto::BlobRequest& req) {
    if (req.credits == 0) return;  // the coordinator acknowledging chunks
    // Only our own updates leave the site; anything else is "not found".
    bool ours = std::any_of(pending.begin(), pending.end(),
                            [&](const auto& p) { return p.second.update_hash == req.hash; });
    if (!ours) {
      (void)Send(proto::Reject{proto::Reason::kBlobNotFound, "no such update blob at this site", req.hash},
                 env.message_id);
      return;
    }
    Status st = sender->Serve(req, [&](const proto::BlobChunk& chunk) { return Send(chunk, env.message_id); });
    if (!st.ok()) {
      spdlog::warn("serving {} failed: {}", req.hash.substr(0, 12), st.ToString());
      (void)Send(proto::Reject{proto::Reason::kBlobNotFound, st.ToString(), req.hash}, env.message_id);
    }
  }

  static std::string JobOf(const PendingResult& p) {
    if (const auto* u = std::get_if<proto::Update>(&p.envelope.message)) return u->job_id;
    if (const auto* e = std::get_if<proto::EvaluationResult>(&p.envelope.message)) return e->job_id;
    return "";
  }

  // Which pending result an Ack/Reject is about: its ref, or the message it answers.
  std::string PendingFor(const proto::Envelope& env, const std::string& ref) const {
    if (pending.count(ref)) return ref;
    if (auto it = sent_ids.find(env.in_reply_to); it != sent_ids.end()) return it->second;
    return "";
  }

  Status OnAck(const proto::Envelope& env, const proto::Ack& ack) {
    std::string task_id = PendingFor(env, ack.ref);
    if (task_id.empty()) return Status::Ok();
    ++stats.results_acked;
    const PendingResult& p = pending.at(task_id);
    AuditRecord r;
    r.event = "result_acked";
    r.job_id = JobOf(p);
    r.task_id = task_id;
    r.update_hash = p.update_hash;
    r.detail = ack.text;
    spdlog::info("coordinator acknowledged the result of {}", task_id);
    DropPending(task_id);
    return Audit(r);
  }

  Status OnReject(const proto::Envelope& env, const proto::Reject& rej) {
    if (rej.code == proto::Reason::kIncompatibleVersion) {
      return Status::FailedPrecondition("the coordinator refused our protocol version: " + rej.text);
    }
    std::string task_id = PendingFor(env, rej.ref);
    if (!task_id.empty()) {
      ++stats.results_rejected;
      const PendingResult& p = pending.at(task_id);
      AuditRecord r;
      r.event = "result_rejected";
      r.job_id = JobOf(p);
      r.task_id = task_id;
      r.update_hash = p.update_hash;
      r.reason = ReasonText(rej.code);
      r.detail = rej.text;
      spdlog::warn("coordinator rejected the result of {}: {}: {}", task_id, ReasonText(rej.code), rej.text);
      DropPending(task_id);
      return Audit(r);
    }
    if (active && active->phase == ActiveTask::Phase::kPulling && Contains(active->waiting, rej.ref)) {
      // Right after a coordinator restart our resumed request can arrive before
      // the coordinator has re-issued the task and may hand out its blob: ask
      // again a little later before giving up.
      if (++active->pull_refusals <= kMaxPullRefusals) {
        spdlog::info("coordinator refused blob {} ({}: {}); asking again", rej.ref.substr(0, 12),
                     ReasonText(rej.code), rej.text);
        active->retry_pull_at = SteadyClock::now() + options.pull_retry;
        return Status::Ok();
      }
      return FinishWithFailure(proto::Reason::kBlobNotFound,
                               "the coordinator could not send blob " + rej.ref + ": " + ReasonText(rej.code) + ": " +
                                   rej.text);
    }
    spdlog::warn("coordinator: {}: {}{}", ReasonText(rej.code), rej.text, rej.ref.empty() ? "" : " (" + rej.ref + ")");
    return Status::Ok();
  }

  Status Dispatch(const proto::Envelope& env) {
    return std::visit(
        [&](const auto& m) -> Status {
          using M = std::decay_t<decltype(m)>;
          if constexpr (std::is_same_v<M, proto::Welcome>) {
            welcomed = true;
            ++stats.welcomes;
            spdlog::info("welcomed by the coordinator as \"{}\" ({})", m.principal, m.software_version);
            return Status::Ok();
          } else if constexpr (std::is_same_v<M, proto::Heartbeat>) {
            return Status::Ok();
          } else if constexpr (std::is_same_v<M, proto::Task>) {
            return OnTask(env, m);
          } else if constexpr (std::is_same_v<M, proto::CancelTask>) {
            return OnCancel(m);
          } else if constexpr (std::is_same_v<M, proto::BlobRequest>) {
            OnBlobRequest(env, m);
            return Status::Ok();
          } else if constexpr (std::is_same_v<M, proto::BlobChunk>) {
            return OnChunk(m);
          } else if constexpr (std::is_same_v<M, proto::Ack>) {
            return OnAck(env, m);
          } else if constexpr (std::is_same_v<M, proto::Reject>) {
            return OnReject(env, m);
          } else {
            spdlog::warn("ignoring unexpected {} from the coordinator", proto::KindName(env.message));
            return Status::Ok();
          }
        },
        env.message);
  }

  // Periodic work that needs no message: reconnects, hello retries, stalled pulls, finished training.
  Status Tick() {
    bool connected = client->connected();
    if (connected && !was_connected) OnConnected();
    was_connected = connected;
    auto now = SteadyClock::now();
    if (connected && !welcomed && now - last_hello >= options.hello_retry) SendHello();
    if (active && active->phase == ActiveTask::Phase::kPulling && connected && active->retry_pull_at &&
        now >= *active->retry_pull_at) {
      active->retry_pull_at.reset();
      active->last_progress = now;
      for (const auto& req : receiver->Resume()) (void)Send(req);
    }
    if (active && active->phase == ActiveTask::Phase::kPulling && connected &&
        now - active->last_progress >= options.pull_stall) {
      spdlog::info("pull of the model for {} stalled; asking again", active->task.task_id);
      active->last_progress = now;
      for (const auto& req : receiver->Resume()) (void)Send(req);
    }
    if (active && active->phase == ActiveTask::Phase::kRunning && active->finished.load(std::memory_order_acquire)) {
      return OnFinished();
    }
    return Status::Ok();
  }

  Status Shutdown() {
    if (!active) return Status::Ok();
    if (active->phase == ActiveTask::Phase::kRunning) {
      active->cancel_reason = "the site worker is stopping";
      active->cancel.store(true);
      active->thread.join();
      if (!active->finished.load()) active->finished.store(true);
    }
    return FinishWithFailure(proto::Reason::kCancelled, "the site worker is stopping");
  }
};

Daemon::Daemon(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Daemon::~Daemon() {
  if (impl_ && impl_->active && impl_->active->thread.joinable()) {
    impl_->active->cancel.store(true);
    impl_->active->thread.join();
  }
}

const DaemonStats& Daemon::stats() const { return impl_->stats; }

Result<std::unique_ptr<Daemon>> Daemon::Create(DaemonParts parts, DaemonOptions options) {
  HANSE_CHECK(parts.config && parts.trainer && parts.audit && parts.ledger && parts.store && parts.datasets,
              "DaemonParts incomplete");
  if (!parts.clock) parts.clock = [] { return std::chrono::system_clock::now(); };
  HANSE_RETURN_IF_ERROR(ValidatePolicy(parts.config->policy).WithContext(parts.config->source.string()));
  auto impl = std::make_unique<Impl>();
  impl->pending_dir = parts.config->data_dir / "pending";
  impl->work_dir = parts.config->data_dir / "work";
  std::error_code ec;
  fs::create_directories(impl->pending_dir, ec);
  fs::create_directories(impl->work_dir, ec);
  if (ec) return Status::Io("create " + impl->work_dir.string() + ": " + ec.message());
  impl->parts = std::move(parts);
  impl->options = std::move(options);
  HANSE_RETURN_IF_ERROR(impl->LoadPending());
  return std::unique_ptr<Daemon>(new Daemon(std::move(impl)));
}

Status Daemon::Run(const std::atomic<bool>& stop) {
  Impl& d = *impl_;
  if (d.options.connect) {
    HANSE_ASSIGN_OR_RETURN(d.client, d.options.connect());
  } else {
    HANSE_ASSIGN_OR_RETURN(d.client, proto::Client::Connect(d.options.client));
  }
  d.receiver = std::make_unique<proto::BlobReceiver>(*d.parts.store, d.options.stream);
  d.sender = std::make_unique<proto::BlobSender>(*d.parts.store, d.options.stream);
  d.was_connected = false;

  AuditRecord start;
  start.event = "start";
  start.detail = d.options.software_version + " site " + d.config().name + " connecting to " + d.config().coordinator;
  HANSE_RETURN_IF_ERROR(d.Audit(start));
  spdlog::info("site {} connecting to {} ({} datasets, {} results owed)", d.config().name, d.config().coordinator,
               d.parts.datasets->size(), d.pending.size());

  Status result = Status::Ok();
  while (!stop.load()) {
    auto env = d.client->Receive(d.options.poll);
    if (!env.ok()) {
      if (env.status().code() == Code::kInternal) {
        result = env.status();
        break;
      }
      spdlog::warn("dropped a message from the coordinator: {}", env.status().ToString());
    } else if (env->has_value()) {
      Status st = d.Dispatch(**env);
      if (!st.ok()) {
        result = st;
        break;
      }
    }
    Status st = d.Tick();
    if (!st.ok()) {
      result = st;
      break;
    }
  }
  Status down = d.Shutdown();
  if (result.ok()) result = down;
  AuditRecord stop_rec;
  stop_rec.event = "stop";
  stop_rec.detail = result.ok() ? "stopped" : "stopped on error: " + result.ToString();
  (void)d.parts.audit->Append(stop_rec);
  spdlog::info("site worker stopped{}", result.ok() ? "" : ": " + result.ToString());
  return result;
}

}  // namespace hanse::site
