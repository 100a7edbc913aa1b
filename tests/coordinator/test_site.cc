#include "test_site.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "core/safetensors.h"
#include "protocol/blob_stream.h"

namespace hanse::testing {

namespace {

uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t Fnv(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

bool IsFloat(DType d) { return d == DType::kF32 || d == DType::kBF16 || d == DType::kF16; }

}  // namespace

float SyntheticDelta(uint64_t seed, const std::string& tensor, uint64_t i) {
  uint64_t x = Mix(seed ^ Fnv(tensor) ^ (i * 0x9e3779b97f4a7c15ull));
  return static_cast<float>(static_cast<int64_t>(x % 2001) - 1000) * 1e-6f;
}

Result<std::pair<std::string, uint64_t>> MakeSyntheticUpdate(BlobStore& store, const std::filesystem::path& model,
                                                             uint64_t seed, UpdateMode mode) {
  HANSE_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(model));
  std::vector<TensorSpec> specs;
  for (const auto& t : file->tensors()) {
    if (!IsFloat(t.dtype)) continue;
    TensorSpec s{t.name, DType::kF32, t.shape};
    if (mode == UpdateMode::kWrongShape && specs.empty()) s.shape.push_back(2);
    specs.push_back(s);
  }
  std::sort(specs.begin(), specs.end(), [](const TensorSpec& a, const TensorSpec& b) { return a.name < b.name; });
  HANSE_ASSIGN_OR_RETURN(auto writer, store.NewWriter());
  BlobStore::Writer* w = writer.get();
  HANSE_ASSIGN_OR_RETURN(auto st, SafetensorsWriter::Begin(specs, {}, [w](std::span<const std::byte> b) {
                           return w->Write(b);
                         }));
  std::vector<float> buf(1 << 14);
  for (size_t ti = 0; ti < specs.size(); ++ti) {
    uint64_t n = 1;
    for (auto d : specs[ti].shape) n *= static_cast<uint64_t>(d);
    for (uint64_t off = 0; off < n; off += buf.size()) {
      uint64_t k = std::min<uint64_t>(buf.size(), n - off);
      for (uint64_t i = 0; i < k; ++i) buf[i] = SyntheticDelta(seed, specs[ti].name, off + i);
      if (mode == UpdateMode::kNaN && ti == 0 && off == 0) buf[0] = std::numeric_limits<float>::quiet_NaN();
      HANSE_RETURN_IF_ERROR(st->Write(std::as_bytes(std::span<const float>(buf.data(), k))));
    }
  }
  HANSE_RETURN_IF_ERROR(st->Finish());
  uint64_t size = st->total_size();
  HANSE_ASSIGN_OR_RETURN(std::string hash, writer->Finish());
  return std::make_pair(hash, size);
}

TestSite::TestSite(TestSiteOptions options) : options_(std::move(options)) {
  auto s = BlobStore::Open(options_.data_dir);
  if (!s.ok()) throw std::runtime_error(s.status().ToString());
  store_ = std::move(*s);
}

TestSite::~TestSite() { Stop(); }

void TestSite::Start() {
  stop_ = false;
  thread_ = std::thread([this] { Loop(); });
}

void TestSite::Stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

void TestSite::Send(proto::Message m) {
  std::lock_guard l(mu_);
  outbox_.push_back(std::move(m));
}

TestSite::Stats TestSite::stats() const {
  std::lock_guard l(mu_);
  return stats_;
}

bool TestSite::WaitFor(const std::function<bool(const Stats&)>& pred, std::chrono::milliseconds timeout) const {
  auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    if (pred(stats())) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return pred(stats());
}

void TestSite::Loop() {
  using Clock = std::chrono::steady_clock;
  proto::ClientOptions co;
  co.endpoint = options_.endpoint;
  co.server_public_key = options_.server_public_key;
  co.secret_key = options_.keys.secret_key;
  co.public_key = options_.keys.public_key;
  co.tuning.heartbeat_interval = options_.heartbeat;
  co.tuning.heartbeat_timeout =
      options_.heartbeat_timeout.count() > 0 ? options_.heartbeat_timeout : options_.heartbeat * 5;
  co.tuning.reconnect_max = std::chrono::milliseconds(500);
  std::unique_ptr<proto::Client> client;
  auto connect = [&] {
    auto c = proto::Client::Connect(co);
    if (c.ok()) client = std::move(*c);
  };
  connect();
  if (!client) return;
  proto::BlobSender sender(*store_, {});
  proto::BlobReceiver receiver(*store_, {});
  struct Work {
    proto::Task task;
    enum Phase { kPulling, kTraining, kDone } phase = kPulling;
    Clock::time_point ready_at{};
    std::optional<proto::Message> result;
    bool acked = false;
    bool rejected = false;
  };
  std::map<std::string, Work> work;
  std::optional<std::string> current;
  int busy_left = options_.busy_first;
  int train_seen = 0;
  bool resent = false;
  std::optional<proto::Message> resend_after_reconnect;
  uint64_t next_id = 1;
  bool was_connected = false;
  Clock::time_point last_hb{};
  auto send = [&](proto::Message m) {
    proto::Envelope e;
    e.message_id = next_id++;
    e.message = std::move(m);
    (void)client->Send(e);
  };
  auto finish = [&](Work& w) {
    if (w.task.kind == proto::TaskKind::kTrain) {
      auto up = MakeSyntheticUpdate(*store_, store_->PathOf(w.task.model_hash), w.task.seed, options_.mode);
      if (!up.ok()) {
        send(proto::Reject{proto::Reason::kTrainingFailed, up.status().ToString(), w.task.task_id});
        w.rejected = true;
        return;
      }
      proto::Update u;
      u.task_id = w.task.task_id;
      u.job_id = w.task.job_id;
      u.round = w.task.round;
      u.update_hash = up->first;
      u.update_size = up->second;
      u.examples = options_.examples;
      u.metrics = {{"train_loss", 1.0 / (1 + w.task.round)}, {"train_accuracy", 0.5}};
      u.usage = {options_.cpu_seconds + options_.gpu_seconds, options_.cpu_seconds, options_.gpu_seconds,
                 options_.device_kind, {options_.device_kind + " test"}};
      w.result = u;
      std::lock_guard l(mu_);
      stats_.updates_sent++;
    } else {
      proto::EvaluationResult r;
      r.task_id = w.task.task_id;
      r.job_id = w.task.job_id;
      r.round = w.task.round;
      r.examples = options_.eval_examples;
      r.loss = options_.eval_loss;
      r.accuracy = options_.eval_accuracy;
      r.usage = {0.1, options_.cpu_seconds / 10, options_.gpu_seconds / 10, options_.device_kind, {}};
      w.result = r;
      std::lock_guard l(mu_);
      stats_.evals_sent++;
    }
    w.phase = Work::kDone;
    send(*w.result);
  };

  while (!stop_) {
    auto now = Clock::now();
    const bool conn = client->connected();
    if (conn && !was_connected) {
      proto::Hello h;
      h.software_version = "test-site";
      h.datasets = {{"synthetic", 1000, 100}};
      h.devices = {{options_.device_kind, options_.device_kind + " test"}};
      send(h);
      if (resend_after_reconnect) {
        send(*resend_after_reconnect);
        resend_after_reconnect.reset();
      }
      for (auto& [id, w] : work)
        if (w.phase == Work::kDone && !w.acked && !w.rejected && w.result) send(*w.result);
      for (const auto& r : receiver.Resume()) send(r);
    }
    if (conn != was_connected) {
      std::lock_guard l(mu_);
      stats_.connected = conn;
    }
    was_connected = conn;
    {
      std::vector<proto::Message> out;
      {
        std::lock_guard l(mu_);
        out.swap(outbox_);
      }
      for (auto& m : out) send(std::move(m));
    }
    if (conn && now - last_hb >= options_.heartbeat) {
      send(proto::Heartbeat{});
      last_hb = now;
    }
    if (current) {
      auto& w = work[*current];
      if (w.phase == Work::kTraining && now >= w.ready_at) {
        finish(w);
        current.reset();
      }
    }
    auto rx = client->Receive(std::chrono::milliseconds(10));
    if (!rx.ok() || !*rx) continue;
    const proto::Envelope& env = **rx;
    if (const auto* t = std::get_if<proto::Task>(&env.message)) {
      {
        std::lock_guard l(mu_);
        stats_.tasks.push_back(t->task_id);
        if (!t->module_hash.empty()) stats_.modules[t->task_id] = {t->module_hash, t->module_size};
      }
      auto it = work.find(t->task_id);
      if (it != work.end()) {
        // The same task again (reconnect, coordinator restart): same answer, no new work.
        if (it->second.phase == Work::kDone && it->second.result) {
          send(*it->second.result);
        } else if (it->second.phase == Work::kPulling) {
          for (const auto& r : receiver.Resume()) send(r);
        }
        continue;
      }
      if (current || busy_left > 0) {
        if (!current) --busy_left;
        send(proto::Busy{t->task_id});
        std::lock_guard l(mu_);
        stats_.busy_sent++;
        continue;
      }
      if (t->kind == proto::TaskKind::kTrain && ++train_seen == options_.disconnect_at_task) return;  // gone
      Work w;
      w.task = *t;
      work[t->task_id] = w;
      current = t->task_id;
      auto reqs = receiver.Start(t->model_hash, t->model_size);
      if (!reqs.ok()) {
        send(proto::Reject{proto::Reason::kBlobNotFound, reqs.status().ToString(), t->task_id});
        work.erase(t->task_id);
        current.reset();
        continue;
      }
      if (receiver.IsComplete(t->model_hash)) {
        work[t->task_id].phase = Work::kTraining;
        work[t->task_id].ready_at = now + options_.train_delay;
      }
      for (const auto& r : *reqs) send(r);
    } else if (const auto* c = std::get_if<proto::BlobChunk>(&env.message)) {
      auto next = receiver.OnChunk(*c);
      if (!next.ok()) continue;
      for (const auto& r : *next) send(r);
      if (receiver.IsComplete(c->hash) && current) {
        auto& w = work[*current];
        if (w.phase == Work::kPulling && w.task.model_hash == c->hash) {
          w.phase = Work::kTraining;
          w.ready_at = Clock::now() + options_.train_delay;
        }
      }
    } else if (const auto* r = std::get_if<proto::BlobRequest>(&env.message)) {
      (void)sender.Serve(*r, [&](const proto::BlobChunk& ch) {
        send(ch);
        return Status::Ok();
      });
    } else if (const auto* a = std::get_if<proto::Ack>(&env.message)) {
      {
        std::lock_guard l(mu_);
        stats_.acks[a->ref]++;
      }
      auto it = work.find(a->ref);
      if (it == work.end()) continue;
      it->second.acked = true;
      if (options_.reconnect_and_resend && !resent && it->second.task.kind == proto::TaskKind::kTrain) {
        resent = true;
        resend_after_reconnect = it->second.result;
        client.reset();
        connect();
        if (!client) return;
        was_connected = false;
      }
    } else if (const auto* rj = std::get_if<proto::Reject>(&env.message)) {
      {
        std::lock_guard l(mu_);
        stats_.rejects.push_back(*rj);
      }
      auto it = work.find(rj->ref);
      if (it != work.end()) it->second.rejected = true;
      if (current && *current == rj->ref) current.reset();
    } else if (const auto* ct = std::get_if<proto::CancelTask>(&env.message)) {
      {
        std::lock_guard l(mu_);
        stats_.cancels.push_back(ct->task_id);
      }
      if (current && *current == ct->task_id && !options_.ignore_cancel) {
        work.erase(ct->task_id);
        current.reset();
      }
    }
  }
}

// ---------------------------------------------------------------- AdminClient

Result<std::unique_ptr<AdminClient>> AdminClient::Connect(const std::string& endpoint, const std::string& server_key,
                                                          const KeyPair& keys, const std::filesystem::path& data_dir) {
  std::unique_ptr<AdminClient> a(new AdminClient());
  HANSE_ASSIGN_OR_RETURN(a->store_, BlobStore::Open(data_dir));
  proto::ClientOptions co;
  co.endpoint = endpoint;
  co.server_public_key = server_key;
  co.secret_key = keys.secret_key;
  co.public_key = keys.public_key;
  HANSE_ASSIGN_OR_RETURN(a->client_, proto::Client::Connect(co));
  HANSE_RETURN_IF_ERROR(a->client_->WaitConnected(std::chrono::seconds(20)));
  return a;
}

AdminClient::~AdminClient() = default;

void AdminClient::HandleOther(const proto::Envelope& env) {
  if (const auto* e = std::get_if<proto::RoundEvent>(&env.message)) {
    events_.push_back(*e);
  } else if (const auto* r = std::get_if<proto::BlobRequest>(&env.message)) {
    proto::BlobSender sender(*store_, {});
    (void)sender.Serve(*r, [&](const proto::BlobChunk& c) {
      proto::Envelope out;
      out.message_id = next_id_++;
      out.message = c;
      return client_->Send(out);
    });
  } else if (const auto* c = std::get_if<proto::BlobChunk>(&env.message)) {
    chunks_.push_back(*c);
  }
}

Result<proto::Message> AdminClient::Call(proto::Message request, std::chrono::milliseconds timeout) {
  proto::Envelope env;
  env.message_id = next_id_++;
  env.message = std::move(request);
  HANSE_RETURN_IF_ERROR(client_->Send(env));
  auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    auto rx = client_->Receive(std::chrono::milliseconds(50));
    if (!rx.ok()) return rx.status();
    if (!*rx) continue;
    if ((*rx)->in_reply_to == env.message_id) return (*rx)->message;
    HandleOther(**rx);
  }
  return Status::DeadlineExceeded("no reply within the timeout");
}

Result<proto::Message> AdminClient::Submit(const std::string& job_toml, const std::filesystem::path& model_file,
                                           const std::string& file_name, const std::filesystem::path& module_file) {
  proto::SubmitJob m{job_toml, file_name, "", 0, "", 0};
  HANSE_ASSIGN_OR_RETURN(m.model_hash, store_->PutFile(model_file));
  HANSE_ASSIGN_OR_RETURN(m.model_size, store_->Size(m.model_hash));
  if (!module_file.empty()) {
    HANSE_ASSIGN_OR_RETURN(m.module_hash, store_->PutFile(module_file));
    HANSE_ASSIGN_OR_RETURN(m.module_size, store_->Size(m.module_hash));
  }
  return Call(m, std::chrono::seconds(60));
}

Result<std::string> AdminClient::Fetch(const std::string& job_id, std::optional<uint32_t> round,
                                       std::chrono::milliseconds timeout) {
  HANSE_ASSIGN_OR_RETURN(auto reply, Call(proto::FetchModel{job_id, round}));
  if (const auto* rj = std::get_if<proto::Reject>(&reply))
    return Status::PermissionDenied(std::string(proto::ReasonName(rj->code)) + ": " + rj->text);
  const auto* ref = std::get_if<proto::ModelRef>(&reply);
  if (!ref) return Status::Internal("unexpected reply to FetchModel");
  proto::BlobReceiver receiver(*store_, {});
  HANSE_ASSIGN_OR_RETURN(auto reqs, receiver.Start(ref->hash, ref->size));
  auto send = [&](const proto::BlobRequest& r) {
    proto::Envelope e;
    e.message_id = next_id_++;
    e.message = r;
    return client_->Send(e);
  };
  for (const auto& r : reqs) HANSE_RETURN_IF_ERROR(send(r));
  auto end = std::chrono::steady_clock::now() + timeout;
  while (!receiver.IsComplete(ref->hash)) {
    if (std::chrono::steady_clock::now() >= end) return Status::DeadlineExceeded("fetch timed out");
    auto rx = client_->Receive(std::chrono::milliseconds(50));
    if (!rx.ok()) return rx.status();
    if (!*rx) continue;
    if (const auto* c = std::get_if<proto::BlobChunk>(&(*rx)->message)) {
      HANSE_ASSIGN_OR_RETURN(auto next, receiver.OnChunk(*c));
      for (const auto& r : next) HANSE_RETURN_IF_ERROR(send(r));
    } else if (const auto* rj = std::get_if<proto::Reject>(&(*rx)->message)) {
      return Status::PermissionDenied(std::string(proto::ReasonName(rj->code)) + ": " + rj->text);
    } else {
      HandleOther(**rx);
    }
  }
  return ref->hash;
}

bool AdminClient::WaitEvents(const std::function<bool(const std::vector<proto::RoundEvent>&)>& pred,
                             std::chrono::milliseconds timeout) {
  auto end = std::chrono::steady_clock::now() + timeout;
  while (!pred(events_)) {
    if (std::chrono::steady_clock::now() >= end) return false;
    auto rx = client_->Receive(std::chrono::milliseconds(50));
    if (!rx.ok() || !*rx) continue;
    HandleOther(**rx);
  }
  return true;
}

}  // namespace hanse::testing
