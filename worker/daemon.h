// The site daemon: connects out to the coordinator (the site opens no inbound
// port), announces its datasets (names and example counts, never samples) and
// devices, and serves tasks one at a time:
//
//   Task -> policy check -> (refused: Reject with the policy reason, audited)
//        -> pull the model blob into the site's blob store -> train / evaluate on
//           a separate thread (the loop keeps answering heartbeats, blob requests,
//           cancels; a second task meanwhile gets Busy)
//        -> Update (update blob served to the coordinator on request) or
//           EvaluationResult -> kept until the coordinator acknowledges it.
//
// Every step is appended to the audit log; the device time of each finished task
// goes into the site ledger (monthly quota). A result not yet acknowledged is
// also kept on disk (data_dir/pending) and re-sent after a reconnect or a
// restart, so a coordinator going away mid-task loses nothing.
//
// Threading: Run() owns the transport client and runs the I/O loop on the
// calling thread; training runs on one extra thread at a time.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "core/blob_store.h"
#include "core/config.h"
#include "core/status.h"
#include "protocol/blob_stream.h"
#include "protocol/transport.h"
#include "worker/audit_log.h"
#include "worker/dataset.h"
#include "worker/site_ledger.h"
#include "worker/trainer.h"

namespace hanse::site {

inline constexpr const char* kWorkerVersion = "hanse-worker 0.1.0";

struct DaemonOptions {
  proto::ClientOptions client;            // endpoint, keys, tuning (see ClientOptionsFor)
  proto::StreamOptions stream;            // blob chunk size and window
  std::string software_version = kWorkerVersion;
  std::chrono::milliseconds poll{50};     // longest wait in the loop
  std::chrono::milliseconds hello_retry{3000};   // re-send Hello while no Welcome came
  std::chrono::milliseconds pull_stall{10000};   // re-request a model pull that got no chunk
  std::chrono::milliseconds pull_retry{1000};    // after the coordinator refused a blob request (3 tries)
  // Tests replace the transport; empty = proto::Client::Connect(client).
  std::function<Result<std::unique_ptr<proto::Client>>()> connect;
};

// Loads the site's and the coordinator's keys named in the config.
Result<proto::ClientOptions> ClientOptionsFor(const SiteConfig& config);

// Loads every configured dataset (errors name the dataset and file).
Result<std::map<std::string, Dataset>> LoadSiteDatasets(const SiteConfig& config);

// What a Daemon borrows; everything must outlive it.
struct DaemonParts {
  const SiteConfig* config = nullptr;
  Trainer* trainer = nullptr;
  AuditLog* audit = nullptr;
  SiteLedger* ledger = nullptr;
  BlobStore* store = nullptr;
  const std::map<std::string, Dataset>* datasets = nullptr;
  Clock clock;                            // wall clock for policy windows and the ledger month
};

// Counters for logs and tests (read after Run() returned, or from the loop thread).
struct DaemonStats {
  uint64_t hellos_sent = 0;
  uint64_t welcomes = 0;
  uint64_t tasks_accepted = 0;
  uint64_t tasks_refused = 0;
  uint64_t busy_sent = 0;
  uint64_t updates_sent = 0;              // including re-sends
  uint64_t evaluations_sent = 0;
  uint64_t results_acked = 0;
  uint64_t results_rejected = 0;
  uint64_t tasks_failed = 0;
  uint64_t tasks_cancelled = 0;
};

class Daemon {
 public:
  // Validates the policy and loads results still owed from data_dir/pending.
  static Result<std::unique_ptr<Daemon>> Create(DaemonParts parts, DaemonOptions options);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Serves until `stop` turns true (a running task is cancelled and reported to
  // the coordinator as kCancelled) or a fatal error: the coordinator speaks an
  // incompatible protocol version, or the audit log or ledger cannot be written
  // (the site must not work unaudited). Blocks.
  Status Run(const std::atomic<bool>& stop);

  const DaemonStats& stats() const;

 private:
  struct Impl;
  explicit Daemon(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace hanse::site
