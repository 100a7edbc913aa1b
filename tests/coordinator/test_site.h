// Test peers that speak the real protocol over CURVE: a synthetic site that
// answers tasks with deterministic updates (delta = f(task seed, element index))
// and evaluation results, and an admin client (lead / admin / site keys) that
// submits jobs, serves the initial model blob and pulls checkpoints.
#pragma once

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/blob_store.h"
#include "core/keys.h"
#include "core/status.h"
#include "protocol/messages.h"
#include "protocol/transport.h"

namespace hanse::testing {

enum class UpdateMode { kGood, kNaN, kWrongShape };

struct TestSiteOptions {
  std::string name;
  std::string endpoint;
  std::string server_public_key;
  KeyPair keys;
  std::filesystem::path data_dir;
  uint64_t examples = 100;
  std::chrono::milliseconds train_delay{0};    // simulated training time
  std::chrono::milliseconds heartbeat{200};
  std::chrono::milliseconds heartbeat_timeout{0};  // transport heartbeat timeout; 0 = 5 x heartbeat
  int busy_first = 0;                           // answer Busy to this many first task offers
  UpdateMode mode = UpdateMode::kGood;
  int disconnect_at_task = 0;                   // >0: on the Nth train task, go away without answering
  bool reconnect_and_resend = false;            // after the first Ack of an update: reconnect, send it again
  bool ignore_cancel = false;                   // keep working on a cancelled task (to send a late update)
  double cpu_seconds = 1.5;
  double gpu_seconds = 0.0;
  std::string device_kind = "cpu";
  double eval_loss = 0.5;
  double eval_accuracy = 0.8;
  uint64_t eval_examples = 50;
};

// Deterministic synthetic delta for element i of a tensor.
float SyntheticDelta(uint64_t seed, const std::string& tensor, uint64_t i);

// Writes the deterministic update for `seed` against `model` into `store`; returns its hash and size.
Result<std::pair<std::string, uint64_t>> MakeSyntheticUpdate(BlobStore& store, const std::filesystem::path& model,
                                                             uint64_t seed, UpdateMode mode);

class TestSite {
 public:
  explicit TestSite(TestSiteOptions options);
  ~TestSite();
  TestSite(const TestSite&) = delete;
  TestSite& operator=(const TestSite&) = delete;

  void Start();
  void Stop();  // joins; the connection closes
  // Queues a message to send from the site's thread (forged updates in tests).
  void Send(proto::Message m);
  BlobStore& store() { return *store_; }
  const std::string& name() const { return options_.name; }

  struct Stats {
    std::vector<std::string> tasks;              // task ids offered (with repeats)
    std::map<std::string, std::pair<std::string, uint64_t>> modules;  // task id -> module hash, size
    std::vector<std::string> cancels;
    std::map<std::string, int> acks;             // by ref
    std::vector<proto::Reject> rejects;
    int updates_sent = 0;
    int evals_sent = 0;
    int busy_sent = 0;
    bool connected = false;                      // CURVE handshake done, Hello sent
  };
  Stats stats() const;
  bool WaitFor(const std::function<bool(const Stats&)>& pred, std::chrono::milliseconds timeout) const;

 private:
  void Loop();
  TestSiteOptions options_;
  std::unique_ptr<BlobStore> store_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  mutable std::mutex mu_;
  Stats stats_;
  std::vector<proto::Message> outbox_;
};

// A lead/admin/site client for the admin API.
class AdminClient {
 public:
  static Result<std::unique_ptr<AdminClient>> Connect(const std::string& endpoint, const std::string& server_key,
                                                      const KeyPair& keys, const std::filesystem::path& data_dir);
  ~AdminClient();
  // Sends a request and waits for its reply (RoundEvents seen meanwhile are kept).
  // Serves BlobRequests meanwhile (the coordinator pulls submitted models).
  Result<proto::Message> Call(proto::Message request, std::chrono::milliseconds timeout = std::chrono::seconds(30));
  // Submit: puts the model file in the client's store, sends SubmitJob, waits.
  // With `module_file`, also the TorchScript module.
  Result<proto::Message> Submit(const std::string& job_toml, const std::filesystem::path& model_file,
                                const std::string& file_name = "job.toml",
                                const std::filesystem::path& module_file = {});
  // Fetch: FetchModel then pulls the blob; returns its bytes hash.
  Result<std::string> Fetch(const std::string& job_id, std::optional<uint32_t> round,
                            std::chrono::milliseconds timeout = std::chrono::seconds(60));
  // Waits for RoundEvents (after WatchJob) until pred is true.
  bool WaitEvents(const std::function<bool(const std::vector<proto::RoundEvent>&)>& pred,
                  std::chrono::milliseconds timeout);
  BlobStore& store() { return *store_; }

 private:
  AdminClient() = default;
  void HandleOther(const proto::Envelope& env);
  std::unique_ptr<proto::Client> client_;
  std::unique_ptr<BlobStore> store_;
  uint64_t next_id_ = 1;
  std::vector<proto::RoundEvent> events_;
  std::vector<proto::BlobChunk> chunks_;
};

}  // namespace hanse::testing
