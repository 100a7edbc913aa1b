// Round overhead of the coordinator against a floor measured in the same run.
//
// Coordinator: the real hanse-coordinator process, N light sites (threads of
// this process, each with its own CURVE socket) that answer train tasks with a
// synthetic update at once (no training); a FedAvg job without evaluation.
// Seconds per round = time between consecutive commit events.
//
// Floor: the same bytes over the same CURVE ZeroMQ transport and blob streaming
// (every site pulls the model, the server pulls every update and writes it
// durably, then writes a new model durably), but no coordinator logic: no
// SQLite, no validation, no aggregation, no state machine.
//
//   rounds_bench [--sites 2,8,32,128,256] [--params 1000000] [--rounds 3]
//   rounds_bench --big        100M parameters, 2 sites
//   rounds_bench --rss        coordinator peak anonymous RSS: 1M/25M/100M at N=2, 25M at N=8
//   rounds_bench --rss --sites 256 [--params N]   the same for the given site counts
#include <sys/types.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include <spdlog/spdlog.h>

#include "harness.h"
#include "protocol/blob_stream.h"

using namespace hanse;
using namespace hanse::testing;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

uint64_t RssAnonKiB(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("RssAnon:", 0) == 0) return std::strtoull(line.c_str() + 8, nullptr, 10);
  return 0;
}

// Starts n sites in batches, each batch connected before the next starts: 256
// simultaneous CURVE handshakes on a 2-core machine time out and retry in a loop
// (real sites do not all connect in the same millisecond either).
std::vector<std::unique_ptr<TestSite>> StartSites(int n, const std::function<std::unique_ptr<TestSite>(int)>& make) {
  constexpr int kBatch = 16;
  std::vector<std::unique_ptr<TestSite>> sites;
  for (int i = 0; i < n; ++i) {
    sites.push_back(make(i));
    if ((i + 1) % kBatch != 0 && i + 1 != n) continue;
    for (int j = i / kBatch * kBatch; j <= i; ++j) {
      if (!sites[j]->WaitFor([](const TestSite::Stats& s) { return s.connected; }, std::chrono::minutes(2))) {
        std::fprintf(stderr, "site %d did not connect within 2 minutes\n", j);
        std::exit(1);
      }
    }
  }
  return sites;
}

struct CoordResult {
  double seconds_per_round = 0;
  double peak_rss_mib = 0;
};

CoordResult RunCoordinator(int n, uint64_t params, int rounds) {
  // Long heartbeat timeouts: on a loaded 2-core machine, ZMTP pings queue behind
  // megabytes of CURVE chunks and would drop the connections.
  Harness h({.sites = n, .heartbeat_ms = 1000, .heartbeat_timeout_ms = 120000});
  h.Start();
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> peak{0};
  pid_t pid = h.pid();
  std::thread sampler([&] {
    while (!stop) {
      uint64_t v = RssAnonKiB(pid);
      if (v > peak) peak = v;
      std::this_thread::sleep_for(5ms);
    }
  });
  auto sites = StartSites(n, [&](int i) {
    return h.MakeSite(i, [](TestSiteOptions& o) {
      o.heartbeat = 1000ms;
      o.heartbeat_timeout = 120000ms;
    });
  });
  auto alice = h.Alice();
  auto model = h.WriteModel(params);
  // One warm-up round: its commit starts the clock.
  auto sub = alice->Submit(Harness::JobToml("bench", static_cast<uint32_t>(rounds + 1), static_cast<uint32_t>(n), 3600,
                                            "evaluate = false\n"),
                           model);
  if (!sub.ok() || !std::holds_alternative<proto::JobSubmitted>(*sub)) {
    std::fprintf(stderr, "submit failed\n%s\n", h.Log().c_str());
    std::exit(1);
  }
  std::string job = std::get<proto::JobSubmitted>(*sub).job_id;
  // Polls the job's status (as `hanse watch` does): a watch stream alone is lost
  // when the lead's connection drops under load, status polls are not.
  std::vector<Clock::time_point> commits;
  bool ok = false;
  auto give_up = Clock::now() + std::chrono::minutes(60);
  while (Clock::now() < give_up) {
    auto st = alice->Call(proto::GetJobStatus{job}, std::chrono::seconds(30));
    if (st.ok() && std::holds_alternative<proto::JobStatus>(*st)) {
      const auto& js = std::get<proto::JobStatus>(*st);
      while (commits.size() < js.summary.rounds_done) commits.push_back(Clock::now());
      if (js.summary.state != proto::JobState::kRunning && js.summary.state != proto::JobState::kQueued) {
        ok = js.summary.state == proto::JobState::kSucceeded;
        break;
      }
    }
    // Resolution vs load: a status of N sites per round costs the coordinator O(N).
    std::this_thread::sleep_for(50ms * std::max(1, n / 32));
  }
  stop = true;
  sampler.join();
  if (!ok || commits.size() != static_cast<size_t>(rounds + 1)) {
    std::fprintf(stderr, "job did not finish (%zu commits)\n%s\n", commits.size(), h.Log().c_str());
    std::exit(1);
  }
  sites.clear();
  h.Stop();
  CoordResult r;
  r.seconds_per_round = Seconds(commits.back() - commits.front()) / rounds;
  r.peak_rss_mib = static_cast<double>(peak.load()) / 1024.0;
  return r;
}

// The floor: a minimal server over the same transport and blob streaming.
double RunFloor(int n, uint64_t params, int rounds) {
  TempDir dir;
  auto server_keys = *GenerateKeyPair();
  proto::ServerOptions so;
  so.endpoint = "tcp://127.0.0.1:0";
  so.secret_key = server_keys.secret_key;
  so.public_key = server_keys.public_key;
  so.tuning.heartbeat_timeout = 120000ms;
  std::vector<KeyPair> keys;
  for (int i = 0; i < n; ++i) {
    keys.push_back(*GenerateKeyPair());
    so.principals.push_back({"site" + std::to_string(i), proto::Role::kSite, keys.back().public_key});
  }
  auto server = proto::Server::Bind(so).value();
  auto store = BlobStore::Open(dir / "server").value();
  proto::StreamOptions stream;  // the sites' defaults: 4 MiB chunks, window 4
  proto::BlobSender sender(*store, stream);
  proto::BlobReceiver receiver(*store, stream);
  Harness::WriteModelFile(dir / "model.safetensors", params);
  std::string model = *store->PutFile(dir / "model.safetensors");
  auto sites = StartSites(n, [&](int i) {
    TestSiteOptions o;
    o.name = "site" + std::to_string(i);
    o.endpoint = server->endpoint();
    o.server_public_key = server_keys.public_key;
    o.keys = keys[i];
    o.data_dir = dir / ("site" + std::to_string(i));
    o.heartbeat = 1000ms;
    o.heartbeat_timeout = 120000ms;
    auto site = std::make_unique<TestSite>(o);
    site->Start();
    return site;
  });
  std::map<std::string, proto::PeerId> peers;
  std::map<std::string, std::string> pulling;  // update hash -> site
  uint64_t id = 1;
  auto send = [&](const proto::PeerId& p, proto::Message m) {
    proto::Envelope e;
    e.message_id = id++;
    e.message = std::move(m);
    (void)server->Send(p, e);
  };
  std::vector<Clock::time_point> ends;
  int done = 0;
  int round = 0;
  auto start_round = [&] {
    done = 0;
    uint64_t k = 0;
    for (auto& [name, peer] : peers) {
      proto::Task t;
      t.task_id = "floor/" + std::to_string(round) + "/" + name;
      t.job_id = "floor";
      t.round = static_cast<uint32_t>(round);
      t.model_hash = model;
      t.model_size = *store->Size(model);
      t.seed = static_cast<uint64_t>(round) * 100000 + k++;  // distinct updates, as real sites send
      send(peer, t);
    }
  };
  auto deadline = Clock::now() + std::chrono::minutes(30);
  auto on_complete = [&](const proto::PeerId& peer, const std::string& hash) {
    send(peer, proto::Ack{pulling[hash], ""});
    if (++done == n) {
      // A new global model, written durably like the coordinator's.
      auto next_model = MakeSyntheticUpdate(*store, store->PathOf(model), 424242 + round, UpdateMode::kGood);
      model = next_model->first;
      ends.push_back(Clock::now());
      ++round;
      if (round <= rounds) start_round();
    }
  };
  while (round <= rounds && Clock::now() < deadline) {
    auto in = server->Receive(20ms);
    if (!in.ok() || !*in || !(*in)->envelope.ok()) continue;
    const auto& inc = **in;
    const auto& msg = inc.envelope->message;
    if (std::holds_alternative<proto::Hello>(msg)) {
      peers[inc.principal.name] = inc.peer;
      if (static_cast<int>(peers.size()) == n && round == 0 && done == 0) start_round();
    } else if (const auto* r = std::get_if<proto::BlobRequest>(&msg)) {
      (void)sender.Serve(*r, [&](const proto::BlobChunk& c) {
        send(inc.peer, c);
        return Status::Ok();
      });
    } else if (const auto* u = std::get_if<proto::Update>(&msg)) {
      pulling[u->update_hash] = u->task_id;
      auto reqs = receiver.Start(u->update_hash, u->update_size);
      if (!reqs.ok()) continue;
      for (const auto& q : *reqs) send(inc.peer, q);
      if (receiver.IsComplete(u->update_hash)) on_complete(inc.peer, u->update_hash);
    } else if (const auto* c = std::get_if<proto::BlobChunk>(&msg)) {
      auto next = receiver.OnChunk(*c);
      if (!next.ok()) continue;
      for (const auto& q : *next) send(inc.peer, q);
      if (receiver.IsComplete(c->hash)) on_complete(inc.peer, c->hash);
    }
  }
  sites.clear();
  if (static_cast<int>(ends.size()) != rounds + 1) {
    std::fprintf(stderr, "floor did not finish\n");
    std::exit(1);
  }
  return Seconds(ends.back() - ends.front()) / rounds;
}

std::vector<int> ParseList(const std::string& s) {
  std::vector<int> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::atoi(item.c_str()));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> ns = {2, 8, 32, 128, 256};
  uint64_t params = 1000000;
  int rounds = 3;
  bool big = false, rss = false, sites_given = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--sites" && i + 1 < argc) {
      ns = ParseList(argv[++i]);
      sites_given = true;
    }
    else if (a == "--params" && i + 1 < argc) params = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--rounds" && i + 1 < argc) rounds = std::atoi(argv[++i]);
    else if (a == "--big") big = true;
    else if (a == "--rss") rss = true;
    else {
      std::fprintf(stderr, "usage: %s [--sites 2,8,...] [--params N] [--rounds R] [--big] [--rss]\n", argv[0]);
      return 2;
    }
  }
  spdlog::set_level(spdlog::level::warn);
  if (rss) {
    std::printf("coordinator peak anonymous RSS (FedAvg, %d rounds)\n", rounds);
    std::vector<std::pair<uint64_t, int>> cases{{1000000, 2}, {25000000, 2}, {100000000, 2}, {25000000, 8}};
    if (sites_given) {  // --rss --sites 256 [--params N]: those site counts only
      cases.clear();
      for (int n : ns) cases.push_back({params, n});
    }
    for (auto [p, n] : cases) {
      auto c = RunCoordinator(n, p, rounds);
      std::printf("params=%-10llu N=%-3d peak RssAnon %.1f MiB  (%.2f s/round)\n", static_cast<unsigned long long>(p), n,
                  c.peak_rss_mib, c.seconds_per_round);
      std::fflush(stdout);
    }
    return 0;
  }
  if (big) {
    ns = {2};
    params = 100000000;
  }
  std::printf("round overhead: %llu parameters (%.1f MB), %d measured rounds, no training, no evaluation\n",
              static_cast<unsigned long long>(params), params * 4 / 1e6, rounds);
  std::fflush(stdout);
  for (int n : ns) {
    double floor_s = RunFloor(n, params, rounds);
    std::printf("N=%-4d floor %.3f s/round\n", n, floor_s);
    std::fflush(stdout);
    auto c = RunCoordinator(n, params, rounds);
    std::printf("N=%-4d coordinator %.3f s/round  floor %.3f s/round  ratio %.2f  (peak RssAnon %.1f MiB)\n", n,
                c.seconds_per_round, floor_s, c.seconds_per_round / floor_s, c.peak_rss_mib);
    std::fflush(stdout);
  }
  return 0;
}
