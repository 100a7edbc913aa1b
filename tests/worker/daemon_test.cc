// The site daemon against a scripted coordinator over the real CURVE transport
// (127.0.0.1, free port), with a fake trainer: no LibTorch needed.
#include "worker/daemon.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include <date/date.h>
#include <gtest/gtest.h>

#include "core/keys.h"
#include "core/safetensors.h"
#include "test_util.h"

namespace hanse::site {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using hanse::testing::TempDir;
using hanse::testing::WaitFor;

// ---------------------------------------------------------------- fake trainer

class FakeTrainer final : public Trainer {
 public:
  // When `block` is set, Train waits until Release() or the cancel flag.
  std::atomic<bool> block{false};
  std::atomic<bool> started{false};
  std::atomic<int> train_calls{0};

  void Release() {
    std::lock_guard l(mu_);
    released_ = true;
    cv_.notify_all();
  }

  Result<TrainOutput> Train(const TrainInput& input, const fs::path& out_file,
                            const std::atomic<bool>& cancelled) override {
    ++train_calls;
    started = true;
    if (!fs::exists(input.model_file)) return Status::NotFound("model file " + input.model_file.string());
    if (block) {
      std::unique_lock l(mu_);
      while (!released_ && !cancelled.load()) cv_.wait_for(l, 10ms);
    }
    if (cancelled.load()) return Status::FailedPrecondition("cancelled");
    float values[2] = {static_cast<float>(input.task->seed), 0.25f};
    std::string bytes(reinterpret_cast<const char*>(values), sizeof values);
    Status st = WriteSafetensorsFile(out_file, {{"w", DType::kF32, {2}, bytes}});
    if (!st.ok()) return st;
    TrainOutput out;
    out.update_file = out_file;
    out.examples = input.dataset->train.size();
    out.metrics = {{"train_loss", 0.5}, {"train_accuracy", 0.8}};
    out.usage.wall_seconds = 1.5;
    out.usage.cpu_seconds = 2.5;
    out.usage.device_kind = "cpu";
    out.usage.devices = {"cpu x2"};
    return out;
  }

  Result<EvalOutput> Evaluate(const TrainInput& input) override {
    if (!fs::exists(input.model_file)) return Status::NotFound("model file");
    EvalOutput out;
    out.examples = input.dataset->test.size();
    out.loss = 0.4;
    out.accuracy = 0.9;
    out.usage.wall_seconds = 0.5;
    return out;
  }

  std::vector<proto::DeviceInfo> Devices() const override { return {{"cpu", "cpu x2"}}; }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool released_ = false;
};

// ---------------------------------------------------------------- fixture

proto::TransportTuning FastTuning() {
  proto::TransportTuning t;
  t.heartbeat_interval = 200ms;
  t.heartbeat_timeout = 1000ms;
  t.handshake_timeout = 2000ms;
  t.reconnect_min = 50ms;
  t.reconnect_max = 200ms;
  return t;
}

// A scripted coordinator: answers the site's blob requests from its own store and
// pulls the site's updates; hands every other message to the test.
class FakeCoordinator {
 public:
  FakeCoordinator(const std::string& endpoint, const KeyPair& own, const KeyPair& site, const fs::path& dir) {
    auto store = BlobStore::Open(dir);
    EXPECT_TRUE(store.ok());
    store_ = std::move(store).value();
    sender_ = std::make_unique<proto::BlobSender>(*store_, proto::StreamOptions{1024, 2});
    receiver_ = std::make_unique<proto::BlobReceiver>(*store_, proto::StreamOptions{1024, 2});
    Bind(endpoint, own, site);
  }

  void Bind(const std::string& endpoint, const KeyPair& own, const KeyPair& site) {
    proto::ServerOptions o;
    o.endpoint = endpoint;
    o.secret_key = own.secret_key;
    o.public_key = own.public_key;
    o.principals = {{"paris", proto::Role::kSite, site.public_key}};
    o.tuning = FastTuning();
    auto server = proto::Server::Bind(o);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
  }
  void Unbind() { server_.reset(); }

  BlobStore& store() { return *store_; }

  Status Send(proto::Message m) {
    proto::Envelope env;
    env.message_id = next_id_++;
    env.message = std::move(m);
    return server_->Send(peer_, env);
  }

  // Starts pulling a blob from the site.
  void Pull(const std::string& hash, uint64_t size) {
    auto reqs = receiver_->Start(hash, size);
    ASSERT_TRUE(reqs.ok()) << reqs.status().ToString();
    for (auto& r : *reqs) ASSERT_OK(Send(r));
  }
  bool Has(const std::string& hash) { return store_->Contains(hash); }

  // The next message that is not blob traffic, or nullopt after `timeout`.
  std::optional<proto::Envelope> Next(std::chrono::milliseconds timeout = 10s) {
    auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      auto in = server_->Receive(50ms);
      if (!in.ok() || !in->has_value()) continue;
      auto& incoming = **in;
      if (!incoming.envelope.ok()) continue;
      peer_ = incoming.peer;
      proto::Envelope env = std::move(incoming.envelope).value();
      if (auto* req = std::get_if<proto::BlobRequest>(&env.message)) {
        ++blob_requests;
        Status st = sender_->Serve(*req, [&](const proto::BlobChunk& c) { return server_->Send(peer_, Wrap(c)); });
        if (!st.ok()) (void)Send(proto::Reject{proto::Reason::kBlobNotFound, st.ToString(), req->hash});
        continue;
      }
      if (auto* chunk = std::get_if<proto::BlobChunk>(&env.message)) {
        auto next = receiver_->OnChunk(*chunk);
        if (next.ok()) {
          for (auto& r : *next) (void)Send(r);
        }
        continue;
      }
      if (std::holds_alternative<proto::Heartbeat>(env.message)) continue;
      return env;
    }
    return std::nullopt;
  }

  // Waits for a message of kind M (others are kept in `skipped`).
  template <class M>
  std::optional<M> Expect(std::chrono::milliseconds timeout = 10s) {
    auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      auto env = Next(std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now()));
      if (!env) break;
      if (auto* m = std::get_if<M>(&env->message)) return *m;
      skipped.push_back(*env);
    }
    return std::nullopt;
  }

  // Hello -> Welcome.
  std::optional<proto::Hello> Handshake() {
    auto hello = Expect<proto::Hello>();
    if (hello) EXPECT_OK(Send(proto::Welcome{"test-coordinator", "paris", 200}));
    return hello;
  }

  int blob_requests = 0;
  std::vector<proto::Envelope> skipped;

 private:
  proto::Envelope Wrap(const proto::BlobChunk& c) {
    proto::Envelope env;
    env.message_id = next_id_++;
    env.message = c;
    return env;
  }
  std::unique_ptr<BlobStore> store_;
  std::unique_ptr<proto::BlobSender> sender_;
  std::unique_ptr<proto::BlobReceiver> receiver_;
  std::unique_ptr<proto::Server> server_;
  proto::PeerId peer_;
  uint64_t next_id_ = 1;
};

std::chrono::system_clock::time_point FixedNow() {
  return date::sys_days{date::year{2026} / 11 / 25} + 12h;  // Wednesday noon UTC
}

Dataset ToyDataset() {
  Dataset d;
  d.name = "toy";
  d.sample_shape = {2};
  d.feature_count = 2;
  d.num_classes = 2;
  for (int i = 0; i < 10; ++i) {
    d.train.features.insert(d.train.features.end(), {float(i), float(-i)});
    d.train.labels.push_back(i % 2);
  }
  for (int i = 0; i < 4; ++i) {
    d.test.features.insert(d.test.features.end(), {float(i), 1.f});
    d.test.labels.push_back(i % 2);
  }
  return d;
}

class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto c = GenerateKeyPair();
    auto s = GenerateKeyPair();
    ASSERT_OK(c.status());
    ASSERT_OK(s.status());
    coord_keys_ = *c;
    site_keys_ = *s;
    endpoint_ = "tcp://127.0.0.1:" + std::to_string(hanse::testing::FreePort());
    config_.name = "paris";
    config_.coordinator = endpoint_;
    config_.data_dir = dir_ / "site";
    config_.audit_log = dir_ / "site/audit.jsonl";
    config_.threads = 1;
    config_.devices = {"cpu"};
    config_.policy.leads = {"alice"};
    config_.policy.timezone = "Europe/Paris";
    config_.policy.windows = {{{0, 1, 2, 3, 4}, 8 * 60, 18 * 60}};
    datasets_.emplace("toy", ToyDataset());
    coordinator_ = std::make_unique<FakeCoordinator>(endpoint_, coord_keys_, site_keys_, dir_ / "coord");
    std::string model(3000, 'm');
    auto h = coordinator_->store().Put(model);
    ASSERT_OK(h.status());
    model_hash_ = *h;
    model_size_ = model.size();
  }

  void TearDown() override { StopDaemon(); }

  void OpenSiteState() {
    auto audit = AuditLog::Open(config_.audit_log, false, FixedNow);
    ASSERT_OK(audit.status());
    audit_ = std::move(audit).value();
    auto ledger = SiteLedger::Open(config_.data_dir / "ledger.jsonl");
    ASSERT_OK(ledger.status());
    ledger_ = std::move(ledger).value();
    auto store = BlobStore::Open(config_.data_dir);
    ASSERT_OK(store.status());
    store_ = std::move(store).value();
  }

  void StartDaemon() {
    OpenSiteState();
    DaemonParts parts;
    parts.config = &config_;
    parts.trainer = &trainer_;
    parts.audit = audit_.get();
    parts.ledger = ledger_.get();
    parts.store = store_.get();
    parts.datasets = &datasets_;
    parts.clock = FixedNow;
    DaemonOptions options;
    options.client.endpoint = endpoint_;
    options.client.server_public_key = coord_keys_.public_key;
    options.client.secret_key = site_keys_.secret_key;
    options.client.public_key = site_keys_.public_key;
    options.client.tuning = FastTuning();
    options.stream = {1024, 2};  // small chunks: several round trips per blob
    options.hello_retry = 1000ms;
    options.pull_stall = 1000ms;
    options.pull_retry = 100ms;
    auto d = Daemon::Create(parts, options);
    ASSERT_OK(d.status());
    daemon_ = std::move(d).value();
    stop_ = false;
    run_status_ = Status::Ok();
    thread_ = std::thread([this] { run_status_ = daemon_->Run(stop_); });
  }

  void StopDaemon() {
    stop_ = true;
    trainer_.Release();
    if (thread_.joinable()) thread_.join();
  }

  proto::Task TrainTask(const std::string& id, const std::string& lead = "alice") {
    proto::Task t;
    t.task_id = id;
    t.job_id = "job1";
    t.round = 1;
    t.kind = proto::TaskKind::kTrain;
    t.lead = lead;
    t.model_hash = model_hash_;
    t.model_size = model_size_;
    t.initial_model_hash = model_hash_;
    t.model_name = "init";
    t.architecture = "mlp";
    t.dataset = "toy";
    t.seed = 7;
    return t;
  }

  std::vector<std::string> AuditEvents() {
    std::vector<std::string> out;
    auto entries = ReadAuditLog(config_.audit_log);
    if (entries.ok()) {
      for (const auto& e : *entries) out.push_back(e.event);
    }
    return out;
  }

  bool PendingEmpty() {
    std::error_code ec;
    return fs::is_empty(config_.data_dir / "pending", ec);
  }

  // Receives the Update for a task, pulls its blob and checks the content.
  std::optional<proto::Update> ReceiveUpdateAndPull() {
    auto u = coordinator_->Expect<proto::Update>();
    if (!u) return u;
    coordinator_->Pull(u->update_hash, u->update_size);
    bool got = false;
    auto end = std::chrono::steady_clock::now() + 10s;
    while (!got && std::chrono::steady_clock::now() < end) {
      auto env = coordinator_->Next(100ms);
      if (env) coordinator_->skipped.push_back(*env);
      got = coordinator_->Has(u->update_hash);
    }
    EXPECT_TRUE(got) << "update blob not pulled";
    return u;
  }

  TempDir dir_;
  KeyPair coord_keys_, site_keys_;
  std::string endpoint_;
  SiteConfig config_;
  std::map<std::string, Dataset> datasets_;
  std::unique_ptr<FakeCoordinator> coordinator_;
  std::string model_hash_;
  uint64_t model_size_ = 0;
  FakeTrainer trainer_;
  std::unique_ptr<AuditLog> audit_;
  std::unique_ptr<SiteLedger> ledger_;
  std::unique_ptr<BlobStore> store_;
  std::unique_ptr<Daemon> daemon_;
  std::atomic<bool> stop_{false};
  Status run_status_;
  std::thread thread_;
};

TEST_F(DaemonTest, AnnouncesDatasetsAndDevicesButNoSamples) {
  StartDaemon();
  auto hello = coordinator_->Handshake();
  ASSERT_TRUE(hello);
  ASSERT_EQ(hello->datasets.size(), 1u);
  EXPECT_EQ(hello->datasets[0].name, "toy");
  EXPECT_EQ(hello->datasets[0].train_examples, 10u);
  EXPECT_EQ(hello->datasets[0].test_examples, 4u);
  ASSERT_EQ(hello->devices.size(), 1u);
  EXPECT_EQ(hello->devices[0].kind, "cpu");
  EXPECT_EQ(hello->software_version, kWorkerVersion);
}

TEST_F(DaemonTest, TrainsATaskAndKeepsTheUpdateUntilAcknowledged) {
  StartDaemon();
  ASSERT_TRUE(coordinator_->Handshake());
  ASSERT_OK(coordinator_->Send(TrainTask("job1/r1/paris/train")));
  auto u = ReceiveUpdateAndPull();
  ASSERT_TRUE(u);
  EXPECT_EQ(u->task_id, "job1/r1/paris/train");
  EXPECT_EQ(u->job_id, "job1");
  EXPECT_EQ(u->round, 1u);
  EXPECT_EQ(u->examples, 10u);
  EXPECT_EQ(u->usage.wall_seconds, 1.5);
  EXPECT_EQ(u->usage.devices, std::vector<std::string>{"cpu x2"});
  ASSERT_EQ(u->metrics.size(), 2u);
  EXPECT_GT(coordinator_->blob_requests, 1) << "the 3000-byte model comes in 1 KiB chunks";
  // The site pulled the model into its own store, and the update is a valid safetensors file.
  EXPECT_TRUE(store_->Contains(model_hash_));
  auto update = SafetensorsFile::Open(coordinator_->store().PathOf(u->update_hash));
  ASSERT_OK(update.status());
  ASSERT_NE((*update)->Find("w"), nullptr);

  EXPECT_FALSE(PendingEmpty()) << "kept on disk until acknowledged";
  EXPECT_TRUE(store_->Contains(u->update_hash));
  ASSERT_OK(coordinator_->Send(proto::Ack{u->task_id, "stored"}));
  EXPECT_TRUE(WaitFor([&] { return PendingEmpty(); }, 10s));
  StopDaemon();
  EXPECT_FALSE(store_->Contains(u->update_hash)) << "acknowledged updates leave the site's store";
  ASSERT_OK(run_status_);

  EXPECT_EQ(AuditEvents(), (std::vector<std::string>{"start", "task", "update_sent", "result_acked", "stop"}));
  EXPECT_EQ(*VerifyAuditLog(config_.audit_log), 5u);
  EXPECT_DOUBLE_EQ(ledger_->DeviceSeconds("alice", "2026-11"), 1.5);
  EXPECT_EQ(daemon_->stats().tasks_accepted, 1u);
  EXPECT_EQ(daemon_->stats().results_acked, 1u);
}

TEST_F(DaemonTest, RefusesTaskOutsidePolicyWithItsReason) {
  StartDaemon();
  ASSERT_TRUE(coordinator_->Handshake());
  ASSERT_OK(coordinator_->Send(TrainTask("t-mallory", "mallory")));
  auto r = coordinator_->Expect<proto::Reject>();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->code, proto::Reason::kPolicyLead);
  EXPECT_EQ(r->ref, "t-mallory");
  EXPECT_NE(r->text.find("mallory"), std::string::npos);

  auto t = TrainTask("t-epochs");
  t.training.epochs = 1000;
  ASSERT_OK(coordinator_->Send(t));
  r = coordinator_->Expect<proto::Reject>();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->code, proto::Reason::kPolicyEpochs);
  StopDaemon();
  EXPECT_EQ(trainer_.train_calls.load(), 0);
  EXPECT_EQ(coordinator_->blob_requests, 0) << "a refused task pulls nothing";
  auto entries = ReadAuditLog(config_.audit_log);
  ASSERT_OK(entries.status());
  ASSERT_GE(entries->size(), 3u);
  EXPECT_EQ((*entries)[1].event, "refusal");
  EXPECT_NE((*entries)[1].line.find("\"reason\":\"policy_lead\""), std::string::npos) << (*entries)[1].line;
  EXPECT_NE((*entries)[2].line.find("\"reason\":\"policy_epochs\""), std::string::npos) << (*entries)[2].line;
}

TEST_F(DaemonTest, AnswersBusyToASecondTaskAndFinishesTheFirst) {
  trainer_.block = true;
  StartDaemon();
  ASSERT_TRUE(coordinator_->Handshake());
  ASSERT_OK(coordinator_->Send(TrainTask("first")));
  // Serve the model pull until training starts.
  ASSERT_TRUE(WaitFor([&] { coordinator_->Next(20ms); return trainer_.started.load(); }, 10s));
  ASSERT_OK(coordinator_->Send(TrainTask("second")));
  auto busy = coordinator_->Expect<proto::Busy>();
  ASSERT_TRUE(busy);
  EXPECT_EQ(busy->task_id, "second");
  trainer_.Release();
  auto u = ReceiveUpdateAndPull();
  ASSERT_TRUE(u);
  EXPECT_EQ(u->task_id, "first");
}

TEST_F(DaemonTest, CancelStopsTrainingAndIsReported) {
  trainer_.block = true;
  StartDaemon();
  ASSERT_TRUE(coordinator_->Handshake());
  ASSERT_OK(coordinator_->Send(TrainTask("doomed")));
  ASSERT_TRUE(WaitFor([&] { coordinator_->Next(20ms); return trainer_.started.load(); }, 10s));
  ASSERT_OK(coordinator_->Send(proto::CancelTask{"doomed", "job cancelled by lead"}));
  auto r = coordinator_->Expect<proto::Reject>();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->code, proto::Reason::kCancelled);
  EXPECT_EQ(r->ref, "doomed");
  // The site is free again.
  trainer_.block = false;
  ASSERT_OK(coordinator_->Send(TrainTask("next")));
  auto u = coordinator_->Expect<proto::Update>();
  ASSERT_TRUE(u);
  EXPECT_EQ(u->task_id, "next");
  StopDaemon();
  auto events = AuditEvents();
  EXPECT_NE(std::find(events.begin(), events.end(), "cancelled"), events.end());
}

TEST_F(DaemonTest, EvaluatesATask) {
  StartDaemon();
  ASSERT_TRUE(coordinator_->Handshake());
  auto t = TrainTask("eval-1");
  t.kind = proto::TaskKind::kEvaluate;
  ASSERT_OK(coordinator_->Send(t));
  auto e = coordinator_->Expect<proto::EvaluationResult>();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->task_id, "eval-1");
  EXPECT_EQ(e->examples, 4u);
  EXPECT_DOUBLE_EQ(e->accuracy, 0.9);
  EXPECT_DOUBLE_EQ(e->loss, 0.4);
  ASSERT_OK(coordinator_->Send(proto::Ack{"eval-1", ""}));
  EXPECT_TRUE(WaitFor([&] { return PendingEmpty(); }, 10s));
  StopDaemon();
  auto events = AuditEvents();
  EXPECT_NE(std::find(events.begin(), events.end(), "evaluation"), events.end());
}

TEST_F(DaemonTest, CoordinatorGoingAwayMidTaskGetsTheUpdateAfterItComesBack) {
  trainer_.block = true;
  StartDaemon();
  ASSERT_TRUE(coordinator_->Handshake());
  ASSERT_OK(coordinator_->Send(TrainTask("survivor")));
  ASSERT_TRUE(WaitFor([&] { coordinator_->Next(20ms); return trainer_.started.load(); }, 10s));
  coordinator_->Unbind();  // the coordinator goes away mid-task
  trainer_.Release();      // training finishes while it is away
  ASSERT_TRUE(WaitFor([&] { return !PendingEmpty(); }, 10s)) << "update kept for later";
  std::this_thread::sleep_for(300ms);  // let the site notice the disconnect (not a correctness wait)
  coordinator_->Bind(endpoint_, coord_keys_, site_keys_);
  ASSERT_TRUE(coordinator_->Handshake()) << "the site says hello again after reconnecting";
  auto u = ReceiveUpdateAndPull();
  ASSERT_TRUE(u);
  EXPECT_EQ(u->task_id, "survivor");
  ASSERT_OK(coordinator_->Send(proto::Ack{"survivor", ""}));
  EXPECT_TRUE(WaitFor([&] { return PendingEmpty(); }, 10s));
}

TEST_F(DaemonTest, ResultOwedAtRestartIsResent) {
  StartDaemon();
  ASSERT_TRUE(coordinator_->Handshake());
  ASSERT_OK(coordinator_->Send(TrainTask("owed")));
  auto first = coordinator_->Expect<proto::Update>();
  ASSERT_TRUE(first);
  StopDaemon();  // no Ack: the worker stops owing the result
  daemon_.reset();
  audit_.reset();
  ledger_.reset();
  StartDaemon();
  ASSERT_TRUE(coordinator_->Handshake());
  auto again = ReceiveUpdateAndPull();
  ASSERT_TRUE(again);
  EXPECT_EQ(again->task_id, "owed");
  EXPECT_EQ(again->update_hash, first->update_hash);
  // A repeated task whose result is owed gets the result, not a second training.
  ASSERT_OK(coordinator_->Send(TrainTask("owed")));
  auto third = coordinator_->Expect<proto::Update>();
  ASSERT_TRUE(third);
  EXPECT_EQ(trainer_.train_calls.load(), 1);
  ASSERT_OK(coordinator_->Send(proto::Ack{"owed", ""}));
  EXPECT_TRUE(WaitFor([&] { return PendingEmpty(); }, 10s));
  StopDaemon();
  EXPECT_OK(VerifyAuditLog(config_.audit_log).status());
}

TEST_F(DaemonTest, KeepsOnlyTheLastTwoModels) {
  StartDaemon();
  ASSERT_TRUE(coordinator_->Handshake());
  std::vector<std::string> models;
  for (int i = 0; i < 3; ++i) {
    auto h = coordinator_->store().Put(std::string(2000 + i, static_cast<char>('a' + i)));
    ASSERT_OK(h.status());
    models.push_back(*h);
    auto t = TrainTask("t" + std::to_string(i));
    t.model_hash = *h;
    t.model_size = 2000 + i;
    ASSERT_OK(coordinator_->Send(t));
    auto u = coordinator_->Expect<proto::Update>();
    ASSERT_TRUE(u);
    ASSERT_OK(coordinator_->Send(proto::Ack{u->task_id, ""}));
  }
  EXPECT_TRUE(WaitFor([&] { return PendingEmpty(); }, 10s));
  EXPECT_FALSE(store_->Contains(models[0]));
  EXPECT_TRUE(store_->Contains(models[1]));
  EXPECT_TRUE(store_->Contains(models[2]));
}

TEST_F(DaemonTest, ModelPullRetriesAfterARefusedRequestThenGivesUp) {
  StartDaemon();
  ASSERT_TRUE(coordinator_->Handshake());
  // A model the coordinator does not have: every request is refused.
  auto t = TrainTask("missing-model");
  t.model_hash = std::string(64, 'e');
  ASSERT_OK(coordinator_->Send(t));
  auto r = coordinator_->Expect<proto::Reject>(30s);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->code, proto::Reason::kBlobNotFound);
  EXPECT_EQ(r->ref, "missing-model");
  EXPECT_EQ(coordinator_->blob_requests, 4) << "the first request and three retries";
  // A refusal that clears up (the coordinator came back and re-issued the task) is survived.
  ASSERT_OK(coordinator_->store().Put(std::string(500, 'z')).status());
  auto late = TrainTask("late-model");
  late.model_hash = *coordinator_->store().Put(std::string(500, 'z'));
  late.model_size = 500;
  fs::path hidden = coordinator_->store().PathOf(late.model_hash);
  fs::rename(hidden, dir_ / "hidden-blob");
  ASSERT_OK(coordinator_->Send(late));
  ASSERT_TRUE(WaitFor([&] { coordinator_->Next(20ms); return coordinator_->blob_requests >= 5; }, 10s));
  fs::rename(dir_ / "hidden-blob", hidden);
  auto u = coordinator_->Expect<proto::Update>();
  ASSERT_TRUE(u);
  EXPECT_EQ(u->task_id, "late-model");
}

TEST_F(DaemonTest, ServesOnlyItsOwnUpdates) {
  StartDaemon();
  ASSERT_TRUE(coordinator_->Handshake());
  ASSERT_OK(coordinator_->Send(TrainTask("t1")));
  ASSERT_TRUE(coordinator_->Expect<proto::Update>());
  // The model the site pulled is in its store, but it is not the site's to give out.
  ASSERT_OK(coordinator_->Send(proto::BlobRequest{model_hash_, 0, 1}));
  auto r = coordinator_->Expect<proto::Reject>();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->code, proto::Reason::kBlobNotFound);
  EXPECT_EQ(r->ref, model_hash_);
}

TEST_F(DaemonTest, StopWhileTrainingReportsCancelled) {
  trainer_.block = true;
  StartDaemon();
  ASSERT_TRUE(coordinator_->Handshake());
  ASSERT_OK(coordinator_->Send(TrainTask("interrupted")));
  ASSERT_TRUE(WaitFor([&] { coordinator_->Next(20ms); return trainer_.started.load(); }, 10s));
  stop_ = true;  // trainer stays blocked: only the cancel flag can end it
  auto r = coordinator_->Expect<proto::Reject>();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->code, proto::Reason::kCancelled);
  StopDaemon();
  ASSERT_OK(run_status_);
  auto events = AuditEvents();
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events[events.size() - 2], "cancelled");
  EXPECT_EQ(events.back(), "stop");
}

}  // namespace
}  // namespace hanse::site
