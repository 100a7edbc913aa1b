// Starts a real hanse-coordinator process on 127.0.0.1 with generated keys for
// N sites, two leads (alice, bob) and an admin, and builds test sites and
// admin clients for it.
#pragma once

#include <signal.h>

#include <memory>
#include <string>
#include <vector>

#include "core/keys.h"
#include "core/safetensors.h"
#include "test_site.h"
#include "test_util.h"

namespace hanse::testing {

struct HarnessOptions {
  int sites = 2;
  uint32_t heartbeat_ms = 200;
  uint32_t heartbeat_timeout_ms = 1000;
  uint32_t chunk_bytes = 4u << 20;  // must match the test sites' StreamOptions (the sender picks the chunk size)
  uint32_t keep_updates_rounds = 0;
  uint32_t keep_checkpoints = 0;
  double gpu_hour = 2.0;
  double cpu_hour = 0.1;
};

class Harness {
 public:
  explicit Harness(HarnessOptions o = {}) : o_(o) {
    auto kc = WriteKeyPair("coordinator", dir_ / "keys");
    if (!kc.ok()) throw std::runtime_error(kc.status().ToString());
    coord_keys_ = *kc;
    for (int i = 0; i < o_.sites; ++i) {
      std::string n = "site" + std::to_string(i);
      site_names_.push_back(n);
      site_keys_.push_back(*WriteKeyPair(n, dir_ / "keys"));
    }
    alice_ = *WriteKeyPair("alice", dir_ / "keys");
    bob_ = *WriteKeyPair("bob", dir_ / "keys");
    admin_ = *WriteKeyPair("root", dir_ / "keys");
    port_ = FreePort();
    std::string t;
    t += "listen = \"tcp://127.0.0.1:" + std::to_string(port_) + "\"\n";
    t += "key = \"keys/coordinator.key\"\n";
    t += "data_dir = \"data\"\n";
    t += "[transport]\nchunk_bytes = " + std::to_string(o_.chunk_bytes) + "\nwindow = 4\nheartbeat_ms = " + std::to_string(o_.heartbeat_ms) +
         "\nheartbeat_timeout_ms = " + std::to_string(o_.heartbeat_timeout_ms) + "\n";
    t += "[retention]\nkeep_updates_rounds = " + std::to_string(o_.keep_updates_rounds) +
         "\nkeep_checkpoints = " + std::to_string(o_.keep_checkpoints) + "\n";
    t += "[rates]\ngpu_hour = " + std::to_string(o_.gpu_hour) + "\ncpu_hour = " + std::to_string(o_.cpu_hour) +
         "\ncurrency = \"EUR\"\n";
    for (const auto& n : site_names_) t += "[[site]]\nname = \"" + n + "\"\npublic_key = \"keys/" + n + ".pub\"\n";
    t += "[[lead]]\nname = \"alice\"\npublic_key = \"keys/alice.pub\"\n";
    t += "[[lead]]\nname = \"bob\"\npublic_key = \"keys/bob.pub\"\n";
    t += "[[admin]]\nname = \"root\"\npublic_key = \"keys/root.pub\"\n";
    WriteFile(dir_ / "coordinator.toml", t);
  }
  ~Harness() { coordinator_.reset(); }

  // Starts the coordinator and waits until it listens.
  void Start() {
    coordinator_ = std::make_unique<Child>(Child::Start(
        {(BinDir() / "hanse-coordinator").string(), "--config", (dir_ / "coordinator.toml").string()},
        dir_ / "coordinator.log"));
    ++starts_;
    const std::string marker = "coordinator listening on";
    bool up = WaitFor(
        [&] {
          std::string log = ReadFile(dir_ / "coordinator.log");
          size_t count = 0;
          for (size_t p = log.find(marker); p != std::string::npos; p = log.find(marker, p + 1)) ++count;
          return count >= static_cast<size_t>(starts_) || !coordinator_->Running();
        },
        std::chrono::seconds(30));
    if (!up || !coordinator_->Running())
      throw std::runtime_error("coordinator did not start:\n" + ReadFile(dir_ / "coordinator.log"));
  }
  void Kill() {
    if (!coordinator_) return;
    coordinator_->Signal(SIGKILL);
    coordinator_->Wait(std::chrono::seconds(10));
    coordinator_.reset();
  }
  int Stop() {
    coordinator_->Signal(SIGTERM);
    auto code = coordinator_->WaitExitCode(std::chrono::seconds(20));
    coordinator_.reset();
    return code.value_or(-1000);
  }
  bool Running() { return coordinator_ && coordinator_->Running(); }
  pid_t pid() const { return coordinator_ ? coordinator_->pid() : -1; }
  std::string Log() const { return ReadFile(dir_ / "coordinator.log"); }

  std::string endpoint() const { return "tcp://127.0.0.1:" + std::to_string(port_); }
  const std::filesystem::path& dir() const { return dir_.path(); }
  std::filesystem::path data_dir() const { return dir_ / "data"; }
  const std::vector<std::string>& site_names() const { return site_names_; }

  TestSiteOptions SiteOptions(int i) const {
    TestSiteOptions s;
    s.name = site_names_[i];
    s.endpoint = endpoint();
    s.server_public_key = coord_keys_.public_key;
    s.keys = site_keys_[i];
    s.data_dir = dir_ / ("site-data/" + s.name + "-" + std::to_string(++site_dirs_));
    s.examples = 100 + 10 * static_cast<uint64_t>(i);
    return s;
  }
  std::unique_ptr<TestSite> MakeSite(int i, const std::function<void(TestSiteOptions&)>& tweak = {}) {
    auto o = SiteOptions(i);
    if (tweak) tweak(o);
    auto s = std::make_unique<TestSite>(o);
    s->Start();
    return s;
  }
  std::unique_ptr<AdminClient> Client(const KeyPair& keys, const std::string& tag) {
    auto c = AdminClient::Connect(endpoint(), coord_keys_.public_key, keys, dir_ / ("client-data/" + tag));
    if (!c.ok()) throw std::runtime_error("client connect: " + c.status().ToString());
    return std::move(*c);
  }
  std::unique_ptr<AdminClient> Alice() { return Client(alice_, "alice-" + std::to_string(++clients_)); }
  std::unique_ptr<AdminClient> Bob() { return Client(bob_, "bob-" + std::to_string(++clients_)); }
  std::unique_ptr<AdminClient> Admin() { return Client(admin_, "root-" + std::to_string(++clients_)); }
  std::unique_ptr<AdminClient> SiteClient(int i) {
    return Client(site_keys_[i], site_names_[i] + "-client-" + std::to_string(++clients_));
  }

  // A model of `n` float parameters in two tensors.
  std::filesystem::path WriteModel(uint64_t n, const std::string& name = "model.safetensors") {
    auto p = dir_ / name;
    WriteModelFile(p, n);
    return p;
  }
  static void WriteModelFile(const std::filesystem::path& p, uint64_t n) {
    std::vector<OwnedTensor> ts;
    uint64_t a = n / 2, b = n - n / 2;
    auto fill = [](uint64_t k, float scale) {
      std::string bytes(k * 4, '\0');
      for (uint64_t i = 0; i < k; ++i) {
        float v = scale * static_cast<float>((i * 2654435761u) % 1000) / 1000.0f;
        std::memcpy(&bytes[i * 4], &v, 4);
      }
      return bytes;
    };
    ts.push_back({"layer.weight", DType::kF32, {static_cast<int64_t>(a)}, fill(a, 0.1f)});
    ts.push_back({"layer.bias", DType::kF32, {static_cast<int64_t>(b)}, fill(b, 0.01f)});
    auto s = WriteSafetensorsFile(p, ts);
    if (!s.ok()) throw std::runtime_error(s.ToString());
  }

  static std::string JobToml(const std::string& name, uint32_t rounds, uint32_t min_sites, uint32_t deadline_s,
                             const std::string& extra = "", uint32_t max_retries = 2) {
    return "name = \"" + name + "\"\ninitial_model = \"model.safetensors\"\narchitecture = \"mlp\"\n" +
           "dataset = \"synthetic\"\nrounds = " + std::to_string(rounds) + "\nmin_sites = " +
           std::to_string(min_sites) + "\nround_deadline_s = " + std::to_string(deadline_s) +
           "\nmax_retries = " + std::to_string(max_retries) + "\nseed = 7\n" + extra;
  }

  const KeyPair& alice_keys() const { return alice_; }

 private:
  HarnessOptions o_;
  TempDir dir_;
  KeyPair coord_keys_, alice_, bob_, admin_;
  std::vector<std::string> site_names_;
  std::vector<KeyPair> site_keys_;
  int port_ = 0;
  int starts_ = 0;
  mutable int site_dirs_ = 0;
  int clients_ = 0;
  std::unique_ptr<Child> coordinator_;
};

}  // namespace hanse::testing
