#include "coordinator/coordinator.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <span>
#include <string_view>
#include <variant>
#include <vector>

#include "aggregation/aggregate.h"
#include "core/blob_store.h"
#include "core/keys.h"
#include "core/safetensors.h"
#include "coordinator/admin.h"
#include "coordinator/job_runner.h"
#include "coordinator/scheduler.h"
#include "coordinator/store.h"
#include "protocol/blob_stream.h"
#include "protocol/transport.h"

namespace hanse::coord {

namespace {

constexpr const char* kSoftwareVersion = "hanse-coordinator 0.1.0";

int64_t UnixSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string HelloJson(const proto::Hello& h) {
  nlohmann::json j;
  j["software_version"] = h.software_version;
  j["datasets"] = nlohmann::json::array();
  for (const auto& d : h.datasets)
    j["datasets"].push_back({{"name", d.name}, {"train", d.train_examples}, {"test", d.test_examples}});
  j["devices"] = nlohmann::json::array();
  for (const auto& d : h.devices) j["devices"].push_back({{"kind", d.kind}, {"name", d.name}});
  return j.dump();
}

proto::Hello HelloFromJson(const std::string& text) {
  proto::Hello h;
  try {
    auto j = nlohmann::json::parse(text);
    h.software_version = j.value("software_version", "");
    for (const auto& d : j.value("datasets", nlohmann::json::array()))
      h.datasets.push_back({d.value("name", ""), d.value("train", uint64_t{0}), d.value("test", uint64_t{0})});
    for (const auto& d : j.value("devices", nlohmann::json::array()))
      h.devices.push_back({d.value("kind", ""), d.value("name", "")});
  } catch (const nlohmann::json::exception&) {
    // Written by us; an unreadable value only loses the display of datasets/devices.
  }
  return h;
}

// The job id a task id starts with ("job-000001/r3/a0/paris/train").
std::string JobOfTask(const std::string& task_id) { return task_id.substr(0, task_id.find('/')); }

}  // namespace

struct Coordinator::Impl final : public RunnerHost {
  struct SiteConn {
    std::optional<proto::PeerId> peer;
    bool alive = false;
    int64_t last_seen_unix = 0;
    proto::Hello hello;
  };
  struct Pull {
    // A submit pulls the job's model module (if its architecture has one), then the initial model.
    enum class Kind { kUpdate, kSubmitModule, kSubmit } kind = Kind::kUpdate;
    proto::Principal principal;
    proto::PeerId peer;
    uint64_t reply_to = 0;
    proto::Update update;
    proto::SubmitJob submit;
  };

  CoordinatorConfig config;
  CoordinatorOptions options;
  RunnerOptions runner_options;
  std::unique_ptr<BlobStore> blob_store;
  std::unique_ptr<Store> db;
  std::unique_ptr<proto::Server> server;
  std::unique_ptr<proto::PacedSender> sender;
  std::unique_ptr<proto::BlobReceiver> receiver;
  Scheduler scheduler;
  std::vector<std::string> site_names;             // config order
  std::map<std::string, SiteConn> sites;
  std::map<std::string, std::unique_ptr<JobRunner>> runners;
  std::map<std::string, std::set<proto::PeerId>> watchers;
  std::map<std::string, std::vector<Pull>> pulls;  // by blob hash
  std::map<std::string, std::set<std::string>> grants;  // principal -> blob hashes it may read
  uint64_t next_message_id = 1;
  SteadyClock::time_point last_heartbeat{};

  // ---- RunnerHost ----
  bool SiteAlive(const std::string& site) const override {
    auto it = sites.find(site);
    return it != sites.end() && it->second.alive && it->second.peer.has_value();
  }
  void QueueTask(const std::string& site, const QueuedTask& task) override { scheduler.Enqueue(site, task); }
  void CancelTasks(const std::string& job_id, std::optional<uint32_t> round, std::optional<TaskType> type,
                   const std::string& reason) override {
    std::vector<Scheduler::Removed> removed;
    if (!round) {
      removed = scheduler.RemoveJob(job_id);
    } else {
      for (TaskType t : {TaskType::kTrain, TaskType::kEvaluate}) {
        if (type && *type != t) continue;
        auto r = scheduler.RemoveRound(job_id, *round, t);
        removed.insert(removed.end(), r.begin(), r.end());
      }
    }
    for (const auto& r : removed) {
      if (!r.in_flight) continue;
      spdlog::info("cancel task {} at site {}: {}", r.task_id, r.site, reason);
      SendToSite(r.site, proto::CancelTask{r.task_id, reason});
    }
  }
  void Publish(const proto::RoundEvent& event) override {
    auto it = watchers.find(event.job_id);
    if (it == watchers.end()) return;
    for (auto p = it->second.begin(); p != it->second.end();) {
      if (!Send(*p, event).ok()) {
        p = it->second.erase(p);
      } else {
        ++p;
      }
    }
    if (event.kind == "job_ended") watchers.erase(it);
  }
  BlobStore& blobs() override { return *blob_store; }
  Store& store() override { return *db; }

  // ---- sending ----
  Status Send(const proto::PeerId& to, proto::Message m, uint64_t in_reply_to = 0) {
    proto::Envelope env;
    env.message_id = next_message_id++;
    env.in_reply_to = in_reply_to;
    env.message = std::move(m);
    Status s = server->Send(to, env);
    if (!s.ok()) spdlog::debug("send {}: {}", proto::KindName(env.message), s.ToString());
    return s;
  }
  void Reply(const proto::Incoming& in, proto::Message m) {
    (void)Send(in.peer, std::move(m), in.envelope->message_id);
  }
  void Refuse(const proto::Incoming& in, proto::Reason reason, const std::string& text, const std::string& ref) {
    spdlog::warn("refused {} from {} {}: {}: {}", proto::KindName(in.envelope->message),
                 proto::RoleName(in.principal.role), in.principal.name, proto::ReasonName(reason), text);
    Reply(in, proto::Reject{reason, text, ref});
  }
  bool SendToSite(const std::string& site, proto::Message m) {
    auto it = sites.find(site);
    if (it == sites.end() || !it->second.peer) return false;
    if (!Send(*it->second.peer, std::move(m)).ok()) {
      MarkGone(site, "send failed");
      return false;
    }
    return true;
  }
  void MarkGone(const std::string& site, const std::string& why) {
    auto& c = sites[site];
    if (c.alive) spdlog::info("site {} disconnected ({})", site, why);
    c.alive = false;
    scheduler.OnReconnect(site);  // its in-flight task goes out again when it is back
    if (c.peer) PeerGone(*c.peer);
  }
  // Transfers with a gone peer give their share of the budgets to the others.
  void PeerGone(const proto::PeerId& peer) {
    sender->Forget(peer.routing_id);
    for (auto& [hash, list] : pulls) {
      const bool from_peer = std::any_of(list.begin(), list.end(), [&](const Pull& p) { return p.peer == peer; });
      if (from_peer) RouteRequests(receiver->Pause(hash));
    }
  }
  // With one budget for all pulls, freed credits may go to any transfer: each
  // request goes to the peer its blob is being pulled from.
  void RouteRequests(const std::vector<proto::BlobRequest>& requests) {
    for (const auto& r : requests) {
      auto it = pulls.find(r.hash);
      if (it == pulls.end() || it->second.empty()) continue;
      (void)Send(it->second.front().peer, r);
    }
  }
  void PumpBlobs() {
    RouteRequests(receiver->TakeRequests());
    sender->Pump(
        [&](const std::string& routing_id, const proto::Envelope& chunk) {
          return server->Send(proto::PeerId{routing_id}, chunk);
        },
        SteadyClock::now());
  }

  // ---- site presence ----
  // The site's worker connection is the one that said Hello last (a worker says
  // it on every connect), or any connection while the site has none alive. An
  // admin-API request with the site's key (`hanse jobs` run by its admin) never
  // takes the worker's place, nor does a second connection while the first lives.
  void Touch(const proto::Incoming& in) {
    if (in.principal.role != proto::Role::kSite) return;
    if (IsAdminRequest(in.envelope->message)) return;
    auto& c = sites[in.principal.name];
    c.last_seen_unix = UnixSeconds();
    const bool same = c.peer && *c.peer == in.peer;
    const bool hello = std::holds_alternative<proto::Hello>(in.envelope->message);
    if (same ? c.alive : (c.alive && !hello)) return;
    spdlog::info("site {} connected", in.principal.name);
    // A new connection of the site: what was in flight on the old one is lost.
    if (c.peer && !(*c.peer == in.peer)) PeerGone(*c.peer);
    c.peer = in.peer;
    c.alive = true;
    scheduler.OnReconnect(in.principal.name);
    ResumePullsFrom(in.principal.name, in.peer);
  }
  void ResumePullsFrom(const std::string& principal, const proto::PeerId& peer) {
    std::set<std::string> hashes;
    for (auto& [hash, list] : pulls)
      for (auto& p : list)
        if (p.principal.name == principal) {
          p.peer = peer;
          hashes.insert(hash);
        }
    for (const auto& hash : hashes) RouteRequests(receiver->Resume(hash));
  }

  static bool IsAdminRequest(const proto::Message& m) {
    return std::holds_alternative<proto::SubmitJob>(m) || std::holds_alternative<proto::ListJobs>(m) ||
           std::holds_alternative<proto::GetJobStatus>(m) || std::holds_alternative<proto::GetUsage>(m) ||
           std::holds_alternative<proto::FetchModel>(m) || std::holds_alternative<proto::WatchJob>(m) ||
           std::holds_alternative<proto::CancelJob>(m) || std::holds_alternative<proto::ListSites>(m);
  }

  // ---- dispatch ----
  void Handle(const proto::Incoming& in) {
    if (!in.envelope.ok()) {
      spdlog::warn("refused a frame from {} {}: {}", proto::RoleName(in.principal.role), in.principal.name,
                   in.envelope.status().ToString());
      return;
    }
    Touch(in);
    std::visit([&](const auto& m) { On(in, m); }, in.envelope->message);
  }

  template <class M>
  void On(const proto::Incoming& in, const M&) {
    Refuse(in, proto::Reason::kMalformed,
           std::string("the coordinator does not accept ") + proto::KindName(in.envelope->message), "");
  }

  void On(const proto::Incoming& in, const proto::Hello& h) {
    spdlog::info("hello from {} {} ({}, {} datasets, {} devices)", proto::RoleName(in.principal.role),
                 in.principal.name, h.software_version, h.datasets.size(), h.devices.size());
    if (in.principal.role == proto::Role::kSite) {
      auto& c = sites[in.principal.name];
      c.hello = h;
      // A Hello starts a new session on the worker: its in-flight task goes again.
      scheduler.OnReconnect(in.principal.name);
      Store::Transaction tx(*db);
      Status s = tx.begin_status();
      if (s.ok()) s = db->PutSiteSeen({in.principal.name, UnixSeconds(), HelloJson(h)});
      if (s.ok()) s = tx.Commit();
      if (!s.ok()) spdlog::error("site {}: {}", in.principal.name, s.ToString());
    }
    Reply(in, proto::Welcome{kSoftwareVersion, in.principal.name, config.heartbeat_ms});
  }
  void On(const proto::Incoming&, const proto::Heartbeat&) {}
  void On(const proto::Incoming&, const proto::Ack&) {}
  void On(const proto::Incoming& in, const proto::Busy& b) {
    if (in.principal.role != proto::Role::kSite) return;
    spdlog::info("site {} is busy; task {} keeps its place", in.principal.name, b.task_id);
    scheduler.OnBusy(in.principal.name, b.task_id, SteadyClock::now());
  }

  void On(const proto::Incoming& in, const proto::Reject& r) {
    // A worker refusing a task (policy, failure) or a blob we asked for.
    if (auto it = pulls.find(r.ref); it != pulls.end()) {
      spdlog::warn("{} could not send blob {}: {}: {}", in.principal.name, r.ref, proto::ReasonName(r.code), r.text);
      auto list = std::move(it->second);
      pulls.erase(it);
      RouteRequests(receiver->Abandon(r.ref));
      for (const auto& p : list)
        (void)Send(p.peer, proto::Reject{proto::Reason::kBlobNotFound, "could not pull blob " + r.ref, ref(p)},
                   p.reply_to);
      return;
    }
    if (in.principal.role != proto::Role::kSite) {
      spdlog::warn("reject from {}: {}: {}", in.principal.name, proto::ReasonName(r.code), r.text);
      return;
    }
    if (r.code == proto::Reason::kBusy) {
      scheduler.OnBusy(in.principal.name, r.ref, SteadyClock::now());
      return;
    }
    auto run = runners.find(JobOfTask(r.ref));
    if (run != runners.end() && run->second->OwnsTask(in.principal.name, r.ref))
      run->second->OnTaskRefused(in.principal.name, r.ref, r.code, r.text);
    else
      spdlog::warn("site {} rejected {}: {}: {}", in.principal.name, r.ref, proto::ReasonName(r.code), r.text);
    scheduler.Finish(in.principal.name, r.ref);
  }
  static std::string ref(const Pull& p) {
    switch (p.kind) {
      case Pull::Kind::kUpdate: return p.update.task_id;
      case Pull::Kind::kSubmitModule: return p.submit.module_hash;
      case Pull::Kind::kSubmit: break;
    }
    return p.submit.model_hash;
  }

  // A site reads the blobs of the tasks sent to it, a lead the checkpoints it
  // fetched. After a restart a site may resume pulling the blob of a task that
  // is queued again but not yet re-sent: its queue authorizes that too.
  bool Readable(const proto::Principal& who, const std::string& hash) {
    if (who.role == proto::Role::kAdmin) return true;
    auto& granted = grants[who.name];
    if (granted.count(hash)) return true;
    if (who.role != proto::Role::kSite) return false;
    for (const auto& q : scheduler.Queued(who.name)) {
      auto run = runners.find(q.job_id);
      if (run == runners.end()) continue;
      proto::Task t = run->second->BuildTask(q);
      if (t.model_hash == hash || (!t.module_hash.empty() && t.module_hash == hash)) {
        granted.insert(hash);
        return true;
      }
    }
    return false;
  }

  void On(const proto::Incoming& in, const proto::BlobRequest& req) {
    if (!Readable(in.principal, req.hash)) {
      Refuse(in, proto::Reason::kUnauthorized, "blob " + req.hash + " is not readable by " + in.principal.name,
             req.hash);
      return;
    }
    Status s = sender->OnRequest(in.peer.routing_id, req, in.envelope->message_id, SteadyClock::now());
    if (!s.ok()) Refuse(in, proto::Reason::kBlobNotFound, s.ToString(), req.hash);
  }

  void On(const proto::Incoming& in, const proto::BlobChunk& c) {
    if (!pulls.count(c.hash)) {
      spdlog::debug("chunk of blob {} that is not being pulled, from {}", c.hash, in.principal.name);
      auto ack = receiver->OnChunk(c);  // held already: acknowledged, so the sender stops counting it
      if (ack.ok())
        for (const auto& r : *ack) (void)Send(in.peer, r);
      return;
    }
    auto next = receiver->OnChunk(c);
    if (!next.ok()) {
      spdlog::warn("blob {} from {}: {}", c.hash, in.principal.name, next.status().ToString());
      auto list = std::move(pulls[c.hash]);
      pulls.erase(c.hash);
      for (const auto& p : list)
        (void)Send(p.peer, proto::Reject{proto::Reason::kBlobCorrupt, next.status().ToString(), ref(p)}, p.reply_to);
      return;
    }
    RouteRequests(*next);
    if (receiver->IsComplete(c.hash)) OnBlobComplete(c.hash);
  }

  void StartPull(Pull p, const std::string& hash, uint64_t size) {
    const bool already = pulls.count(hash) > 0;
    proto::PeerId peer = p.peer;
    pulls[hash].push_back(std::move(p));
    if (already) return;
    auto reqs = receiver->Start(hash, size);
    if (!reqs.ok()) {
      auto list = std::move(pulls[hash]);
      pulls.erase(hash);
      for (const auto& q : list)
        (void)Send(q.peer, proto::Reject{proto::Reason::kInternal, reqs.status().ToString(), ref(q)}, q.reply_to);
      return;
    }
    if (receiver->IsComplete(hash)) {
      OnBlobComplete(hash);
      return;
    }
    RouteRequests(*reqs);
  }

  void OnBlobComplete(const std::string& hash) {
    auto it = pulls.find(hash);
    if (it == pulls.end()) return;
    auto list = std::move(it->second);
    pulls.erase(it);
    for (auto& p : list) {
      switch (p.kind) {
        case Pull::Kind::kUpdate: FinishUpdate(p, hash); break;
        case Pull::Kind::kSubmitModule: FinishSubmitModule(std::move(p), hash); break;
        case Pull::Kind::kSubmit: FinishSubmit(p, hash); break;
      }
    }
  }

  // ---- updates and evaluations ----
  void On(const proto::Incoming& in, const proto::Update& u) {
    if (in.principal.role != proto::Role::kSite) {
      Refuse(in, proto::Reason::kUnauthorized, "only sites send updates", u.task_id);
      return;
    }
    const std::string& site = in.principal.name;
    auto run = runners.find(u.job_id);
    if (run == runners.end()) {
      auto job = db->GetJob(u.job_id);
      if (job.ok() && job->has_value()) {
        auto stored = db->GetUpdate(u.job_id, u.round, site, u.task_id);
        if (stored.ok() && stored->has_value()) {
          if ((*stored)->update_hash == u.update_hash) {
            scheduler.Finish(site, u.task_id);
            Reply(in, proto::Ack{u.task_id, "already stored"});
          } else {
            Refuse(in, proto::Reason::kUpdateDuplicateMismatch,
                   "a different update is already stored for task " + u.task_id, u.task_id);
          }
          return;
        }
        Refuse(in, proto::Reason::kUpdateLate, "job " + u.job_id + " has ended", u.task_id);
      } else if (runners.count(JobOfTask(u.task_id))) {
        Refuse(in, proto::Reason::kUpdateWrongJob,
               "task " + u.task_id + " belongs to job " + JobOfTask(u.task_id) + ", not " + u.job_id, u.task_id);
      } else {
        Refuse(in, proto::Reason::kUnknownJob, "no job " + u.job_id, u.task_id);
      }
      return;
    }
    auto verdict = run->second->CheckUpdate(site, u);
    switch (verdict.kind) {
      case UpdateVerdict::Kind::kAlreadyStored:
        spdlog::info("job {}: update {} from {} already stored; acknowledged, not counted again", u.job_id,
                     u.task_id, site);
        scheduler.Finish(site, u.task_id);
        Reply(in, proto::Ack{u.task_id, "already stored"});
        return;
      case UpdateVerdict::Kind::kReject:
        Refuse(in, verdict.reason, verdict.text, u.task_id);
        return;
      case UpdateVerdict::Kind::kPull: break;
    }
    spdlog::info("job {}: pulling update {} ({} bytes) from {}", u.job_id, u.update_hash.substr(0, 12),
                 u.update_size, site);
    Pull p;
    p.kind = Pull::Kind::kUpdate;
    p.principal = in.principal;
    p.peer = in.peer;
    p.reply_to = in.envelope->message_id;
    p.update = u;
    StartPull(std::move(p), u.update_hash, u.update_size);
  }

  void FinishUpdate(const Pull& p, const std::string& hash) {
    const auto& u = p.update;
    const std::string& site = p.principal.name;
    auto run = runners.find(u.job_id);
    if (run == runners.end()) {
      (void)Send(p.peer, proto::Reject{proto::Reason::kUpdateLate, "job " + u.job_id + " has ended", u.task_id},
                 p.reply_to);
      return;
    }
    JobRunner& runner = *run->second;
    agg::RejectReason why{};
    auto v = agg::ValidateUpdateFile(blob_store->PathOf(hash), runner.schema(), runner.config().max_update_norm, &why);
    if (!v.ok()) {
      std::string text = std::string(agg::RejectReasonName(why)) + ": " + v.status().message();
      runner.RejectUpdate(site, u, text);
      scheduler.Finish(site, u.task_id);
      (void)Send(p.peer, proto::Reject{proto::Reason::kUpdateInvalid, text, u.task_id}, p.reply_to);
      auto used = db->HashInUse(hash);
      if (used.ok() && !*used) (void)blob_store->Remove(hash);
      return;
    }
    auto res = runner.AcceptUpdate(site, u, *v, SteadyClock::now());
    if (!res.ok()) {
      (void)Send(p.peer, proto::Reject{proto::Reason::kInternal, res.status().ToString(), u.task_id}, p.reply_to);
      return;
    }
    if (res->has_value()) {
      spdlog::warn("job {}: update {} from {} refused after transfer: {}", u.job_id, u.task_id, site, (*res)->text);
      (void)Send(p.peer, **res, p.reply_to);
      return;
    }
    scheduler.Finish(site, u.task_id);
    (void)Send(p.peer, proto::Ack{u.task_id, "update stored"}, p.reply_to);
  }

  void On(const proto::Incoming& in, const proto::EvaluationResult& r) {
    if (in.principal.role != proto::Role::kSite) {
      Refuse(in, proto::Reason::kUnauthorized, "only sites send evaluation results", r.task_id);
      return;
    }
    auto run = runners.find(r.job_id);
    if (run == runners.end()) {
      Refuse(in, proto::Reason::kUpdateLate, "job " + r.job_id + " is not running", r.task_id);
      return;
    }
    auto rej = run->second->OnEvaluation(in.principal.name, r, SteadyClock::now());
    scheduler.Finish(in.principal.name, r.task_id);
    if (rej) {
      Refuse(in, rej->code, rej->text, r.task_id);
      return;
    }
    Reply(in, proto::Ack{r.task_id, "evaluation stored"});
  }

  // ---- admin API ----
  void On(const proto::Incoming& in, const proto::SubmitJob& m) {
    if (in.principal.role != proto::Role::kLead) {
      Refuse(in, proto::Reason::kUnauthorized,
             std::string(proto::RoleName(in.principal.role)) + " " + in.principal.name + " may not submit jobs", "");
      return;
    }
    auto cfg = ParseJobConfig(m.job_toml, m.file_name.empty() ? "job.toml" : m.file_name, {});
    if (!cfg.ok()) {
      Refuse(in, proto::Reason::kInvalidJob, cfg.status().message(), "");
      return;
    }
    for (const auto& s : cfg->sites) {
      if (s == "all") continue;
      if (!sites.count(s)) {
        Refuse(in, proto::Reason::kInvalidJob, m.file_name + ": sites: unknown site '" + s + "'", "");
        return;
      }
    }
    const size_t eligible = cfg->sites == std::vector<std::string>{"all"} ? site_names.size() : cfg->sites.size();
    if (cfg->min_sites > eligible) {
      Refuse(in, proto::Reason::kInvalidJob,
             m.file_name + ": min_sites: " + std::to_string(cfg->min_sites) + " exceeds the " +
                 std::to_string(eligible) + " sites the coordinator knows",
             "");
      return;
    }
    if (!IsValidHash(m.model_hash) || m.model_size == 0) {
      Refuse(in, proto::Reason::kInvalidJob, "initial model: invalid hash or empty model", m.model_hash);
      return;
    }
    const bool with_module = cfg->needs_module();
    if (with_module && (!IsValidHash(m.module_hash) || m.module_size == 0)) {
      Refuse(in, proto::Reason::kInvalidJob,
             m.file_name + ": " + JobConfig::kModuleKey + ": the module was not sent with the job (invalid hash or empty)",
             m.module_hash);
      return;
    }
    if (!with_module && !m.module_hash.empty()) {
      Refuse(in, proto::Reason::kInvalidJob,
             m.file_name + ": architecture: a model module was sent but architecture is \"" + cfg->architecture + "\"",
             m.module_hash);
      return;
    }
    spdlog::info("lead {} submits {} ({}); pulling initial model {} ({} bytes)", in.principal.name, cfg->name,
                 m.file_name, m.model_hash.substr(0, 12), m.model_size);
    Pull p;
    p.kind = with_module ? Pull::Kind::kSubmitModule : Pull::Kind::kSubmit;
    p.principal = in.principal;
    p.peer = in.peer;
    p.reply_to = in.envelope->message_id;
    p.submit = m;
    if (with_module) {
      StartPull(std::move(p), m.module_hash, m.module_size);
    } else {
      StartPull(std::move(p), m.model_hash, m.model_size);
    }
  }

  // The module is here: check it is a zip archive (the format of serialized
  // modules; the coordinator never loads one), then pull the initial model.
  void FinishSubmitModule(Pull p, const std::string& hash) {
    char magic[4] = {};
    auto got = blob_store->ReadAt(hash, 0, std::as_writable_bytes(std::span<char>(magic, 4)));
    if (!got.ok() || *got != 4 || std::string_view(magic, 4) != std::string_view("PK\x03\x04", 4)) {
      const std::string text =
          p.submit.file_name + ": " + JobConfig::kModuleKey + ": not a serialized module archive (no zip header)";
      spdlog::warn("job from {} refused: {}", p.principal.name, text);
      (void)Send(p.peer, proto::Reject{proto::Reason::kInvalidJob, text, hash}, p.reply_to);
      auto used = db->HashInUse(hash);
      if (used.ok() && !*used) (void)blob_store->Remove(hash);
      return;
    }
    p.kind = Pull::Kind::kSubmit;
    const std::string model = p.submit.model_hash;
    const uint64_t size = p.submit.model_size;
    StartPull(std::move(p), model, size);
  }

  void FinishSubmit(const Pull& p, const std::string& hash) {
    auto reject = [&](const std::string& text) {
      spdlog::warn("job from {} refused: {}", p.principal.name, text);
      (void)Send(p.peer, proto::Reject{proto::Reason::kInvalidJob, text, hash}, p.reply_to);
    };
    auto model = SafetensorsFile::Open(blob_store->PathOf(hash));
    if (!model.ok()) return reject("initial model: " + model.status().message());
    auto cfg = ParseJobConfig(p.submit.job_toml, p.submit.file_name, {});
    if (!cfg.ok()) return reject(cfg.status().message());
    auto id = db->NextJobId();
    if (!id.ok()) return reject(id.status().ToString());
    JobRecord job;
    job.job_id = *id;
    job.name = cfg->name;
    job.lead = p.principal.name;
    job.job_toml = p.submit.job_toml;
    job.file_name = p.submit.file_name;
    job.initial_model = hash;
    job.initial_size = p.submit.model_size;
    job.module_hash = p.submit.module_hash;
    job.module_size = p.submit.module_size;
    job.created_unix = UnixSeconds();
    auto runner = JobRunner::Create(std::move(job), std::move(*cfg), *this, site_names, runner_options,
                                    SteadyClock::now());
    if (!runner.ok()) return reject(p.submit.file_name + ": " + runner.status().message());
    std::string job_id = (*runner)->job().job_id;
    runners[job_id] = std::move(*runner);
    (void)Send(p.peer, proto::JobSubmitted{job_id}, p.reply_to);
  }

  template <class F>
  void AdminCall(const proto::Incoming& in, const std::string& ref, F&& f) {
    auto r = f();
    if (!r.ok()) {
      Refuse(in, ReasonFor(r.status()), r.status().message(), ref);
      return;
    }
    Reply(in, std::move(*r));
  }

  void On(const proto::Incoming& in, const proto::ListJobs&) {
    AdminCall(in, "", [&] { return ListJobsFor(in.principal, *db); });
  }
  void On(const proto::Incoming& in, const proto::GetJobStatus& m) {
    AdminCall(in, m.job_id, [&] { return JobStatusFor(in.principal, m.job_id, *db); });
  }
  void On(const proto::Incoming& in, const proto::GetUsage& m) {
    AdminCall(in, "", [&] { return UsageFor(in.principal, m, *db, config.rates); });
  }
  void On(const proto::Incoming& in, const proto::FetchModel& m) {
    auto r = ModelFor(in.principal, m, *db);
    if (!r.ok()) {
      Refuse(in, r.status().code() == Code::kNotFound && r.status().message().rfind("no job", 0) != 0
                     ? proto::Reason::kBlobNotFound
                     : ReasonFor(r.status()),
             r.status().message(), m.job_id);
      return;
    }
    grants[in.principal.name].insert(r->hash);
    spdlog::info("{} fetches round {} of job {} ({})", in.principal.name, r->round, r->job_id, r->hash.substr(0, 12));
    Reply(in, *r);
  }
  void On(const proto::Incoming& in, const proto::WatchJob& m) {
    auto job = LoadAuthorizedJob(in.principal, m.job_id, JobAction::kWatch, *db);
    if (!job.ok()) {
      Refuse(in, ReasonFor(job.status()), job.status().message(), m.job_id);
      return;
    }
    Reply(in, proto::Ack{m.job_id, "watching"});
    if (job->state != JobState::kRunning && job->state != JobState::kQueued) {
      proto::RoundEvent e;
      e.job_id = job->job_id;
      e.round = job->rounds_done;
      e.kind = "job_ended";
      e.job_state = static_cast<proto::JobState>(job->state);
      e.reason = job->reason;
      (void)Send(in.peer, e);
      return;
    }
    watchers[m.job_id].insert(in.peer);
  }
  void On(const proto::Incoming& in, const proto::CancelJob& m) {
    auto job = LoadAuthorizedJob(in.principal, m.job_id, JobAction::kControl, *db);
    if (!job.ok()) {
      Refuse(in, ReasonFor(job.status()), job.status().message(), m.job_id);
      return;
    }
    auto run = runners.find(m.job_id);
    if (run == runners.end()) {
      Reply(in, proto::Ack{m.job_id, std::string("job already ended (") +
                                         proto::JobStateName(static_cast<proto::JobState>(job->state)) + ")"});
      return;
    }
    run->second->Cancel("cancelled by " + std::string(proto::RoleName(in.principal.role)) + " " + in.principal.name,
                        SteadyClock::now());
    runners.erase(run);
    Reply(in, proto::Ack{m.job_id, "cancelled"});
  }
  void On(const proto::Incoming& in, const proto::ListSites&) {
    if (in.principal.role != proto::Role::kAdmin) {
      Refuse(in, proto::Reason::kUnauthorized, "only admins list sites", "");
      return;
    }
    proto::SiteList out;
    for (const auto& name : site_names) {
      const auto& c = sites[name];
      proto::SiteInfo s;
      s.name = name;
      s.connected = c.alive;
      s.last_seen_unix = c.last_seen_unix;
      s.datasets = c.hello.datasets;
      s.devices = c.hello.devices;
      s.software_version = c.hello.software_version;
      out.sites.push_back(std::move(s));
    }
    Reply(in, out);
  }

  // ---- periodic work ----
  void Heartbeats(SteadyClock::time_point now) {
    if (now - last_heartbeat < std::chrono::milliseconds(config.heartbeat_ms)) return;
    last_heartbeat = now;
    for (auto& [name, c] : sites) {
      if (!c.alive || !c.peer) continue;
      // ROUTER_MANDATORY: a send to a connection the heartbeat declared dead fails.
      if (!Send(*c.peer, proto::Heartbeat{}).ok()) MarkGone(name, "heartbeat send failed");
    }
  }

  void OnPeerEvent(const proto::PeerEvent& e) {
    if (e.kind == proto::PeerEvent::Kind::kAuthRefused) {
      spdlog::warn("refused connection: {}", e.detail);
      return;
    }
    auto it = sites.find(e.principal);
    if (it != sites.end() && it->second.peer && *it->second.peer == e.peer) {
      MarkGone(e.principal, "connection closed");
    } else {
      PeerGone(e.peer);  // a lead or admin uploading or fetching
    }
  }

  void Dispatch(SteadyClock::time_point now) {
    for (const auto& name : site_names) {
      if (!SiteAlive(name)) continue;
      auto q = scheduler.TakeNext(name, now);
      if (!q) continue;
      auto run = runners.find(q->job_id);
      if (run == runners.end()) {
        scheduler.Finish(name, q->task_id);
        continue;
      }
      proto::Task task = run->second->BuildTask(*q);
      grants[name].insert(task.model_hash);
      if (!task.module_hash.empty()) grants[name].insert(task.module_hash);
      spdlog::info("task {} ({} round {}) -> site {}", task.task_id,
                   task.kind == proto::TaskKind::kTrain ? "train" : "evaluate", task.round, name);
      SendToSite(name, std::move(task));
    }
  }

  void Tick(SteadyClock::time_point now) {
    Heartbeats(now);
    for (auto it = runners.begin(); it != runners.end();) {
      it->second->Tick(now);
      if (it->second->finished()) {
        it = runners.erase(it);
      } else {
        ++it;
      }
    }
    Dispatch(now);
  }
};

Coordinator::Coordinator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Coordinator::~Coordinator() = default;

std::string Coordinator::endpoint() const { return impl_->server->endpoint(); }

Result<std::unique_ptr<Coordinator>> Coordinator::Open(const CoordinatorConfig& config,
                                                       const CoordinatorOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  impl->options = options;
  impl->runner_options.keep_updates_rounds = config.keep_updates_rounds;
  impl->runner_options.keep_checkpoints = config.keep_checkpoints;
  impl->runner_options.select_grace = options.select_grace;
  impl->runner_options.persist_every = options.persist_every;
  std::error_code ec;
  std::filesystem::create_directories(config.data_dir, ec);
  if (ec) return Status::Io("data folder " + config.data_dir.string() + ": " + ec.message());
  HANSE_ASSIGN_OR_RETURN(impl->blob_store, BlobStore::Open(config.data_dir));
  HANSE_ASSIGN_OR_RETURN(impl->db, Store::Open(config.data_dir / "coordinator.db"));
  // One budget for all pulls and one for all serves, so memory does not grow
  // with the number of sites transferring at once: twice a peer's window.
  proto::StreamOptions stream{config.chunk_bytes, config.window, 2 * config.window};
  impl->sender = std::make_unique<proto::PacedSender>(*impl->blob_store, stream,
                                                      uint64_t{stream.budget} * config.chunk_bytes,
                                                      std::chrono::milliseconds(config.heartbeat_timeout_ms));
  impl->receiver = std::make_unique<proto::BlobReceiver>(*impl->blob_store, stream);

  proto::ServerOptions so;
  so.endpoint = config.listen;
  HANSE_ASSIGN_OR_RETURN(so.secret_key, LoadSecretKey(config.secret_key_file));
  HANSE_ASSIGN_OR_RETURN(so.public_key, LoadPublicKey(config.public_key_file));
  so.tuning.heartbeat_interval = std::chrono::milliseconds(config.heartbeat_ms);
  so.tuning.heartbeat_timeout = std::chrono::milliseconds(config.heartbeat_timeout_ms);
  so.tuning.max_chunk_bytes = config.chunk_bytes;
  for (const auto& s : config.sites) so.principals.push_back({s.name, proto::Role::kSite, s.public_key});
  for (const auto& s : config.leads) so.principals.push_back({s.name, proto::Role::kLead, s.public_key});
  for (const auto& s : config.admins) so.principals.push_back({s.name, proto::Role::kAdmin, s.public_key});
  for (const auto& s : config.sites) {
    impl->site_names.push_back(s.name);
    impl->sites[s.name];
  }
  HANSE_ASSIGN_OR_RETURN(auto seen, impl->db->ListSitesSeen());
  for (const auto& s : seen) {
    auto it = impl->sites.find(s.name);
    if (it == impl->sites.end()) continue;
    it->second.last_seen_unix = s.last_seen_unix;
    it->second.hello = HelloFromJson(s.hello);
  }

  // Resume every running job before accepting traffic.
  HANSE_ASSIGN_OR_RETURN(auto jobs, impl->db->ListJobs());
  auto now = SteadyClock::now();
  for (auto& j : jobs) {
    if (j.state != JobState::kRunning && j.state != JobState::kQueued) continue;
    std::string id = j.job_id;
    auto r = JobRunner::Resume(j, *impl, impl->site_names, impl->runner_options, now);
    if (!r.ok()) {
      spdlog::error("job {}: cannot resume: {}; marking it failed", id, r.status().ToString());
      j.state = JobState::kFailed;
      j.reason = "cannot resume: " + r.status().ToString();
      j.ended_unix = UnixSeconds();
      Store::Transaction tx(*impl->db);
      HANSE_RETURN_IF_ERROR(tx.begin_status());
      HANSE_RETURN_IF_ERROR(impl->db->PutJob(j));
      HANSE_RETURN_IF_ERROR(tx.Commit());
      continue;
    }
    impl->runners[id] = std::move(*r);
  }

  HANSE_ASSIGN_OR_RETURN(impl->server, proto::Server::Bind(so));
  spdlog::info("coordinator listening on {} ({} sites, {} leads, {} admins, data in {}); {} running jobs",
               impl->server->endpoint(), config.sites.size(), config.leads.size(), config.admins.size(),
               config.data_dir.string(), impl->runners.size());
  return std::unique_ptr<Coordinator>(new Coordinator(std::move(impl)));
}

Status Coordinator::Run(const std::atomic<bool>& stop) {
  Impl& m = *impl_;
  while (!stop.load()) {
    auto in = m.server->Receive(m.options.poll);
    if (!in.ok()) {
      spdlog::error("receive: {}", in.status().ToString());
    } else if (*in) {
      m.Handle(**in);
      m.PumpBlobs();
      // Drain what is already queued before ticking, without waiting.
      for (int i = 0; i < 256; ++i) {
        auto more = m.server->Receive(std::chrono::milliseconds(0));
        if (!more.ok() || !*more) break;
        m.Handle(**more);
        m.PumpBlobs();
      }
    }
    for (const auto& e : m.server->TakeEvents()) m.OnPeerEvent(e);
    m.Tick(SteadyClock::now());
    m.PumpBlobs();
  }
  spdlog::info("coordinator stopping");
  return Status::Ok();
}

}  // namespace hanse::coord
