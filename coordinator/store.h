// Durable coordinator state in SQLite: jobs, rounds, the sites of each round,
// received updates, checkpoints, the transition log and the usage ledger.
//
// The database runs in WAL mode with synchronous=FULL, so a committed
// transaction survives kill -9 and power loss before anything is acknowledged
// to a peer. Callers group the writes of one state transition in one
// Transaction. This is the only file of the coordinator that sees sqlite3.h.
//
// Not thread-safe: owned and used by the coordinator's loop thread.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "coordinator/round_machine.h"

namespace hanse::coord {

// Stored as integers: same numbers as proto::JobState.
enum class JobState : uint8_t { kQueued = 0, kRunning = 1, kSucceeded = 2, kFailed = 3, kCancelled = 4 };

struct JobRecord {
  std::string job_id;
  std::string name;
  std::string lead;
  JobState state = JobState::kQueued;
  std::string reason;                // why it failed / was cancelled
  std::string job_toml;              // the submitted text (re-parsed on restart)
  std::string file_name;
  std::string initial_model;         // blob hash
  uint64_t initial_size = 0;
  std::string module_hash;           // model module blob ("" = built-in architecture)
  uint64_t module_size = 0;
  uint32_t rounds_total = 0;
  uint32_t rounds_done = 0;          // committed rounds
  std::string model_hash;            // current global model
  uint64_t model_size = 0;
  std::string opt_state_hash;        // server optimizer state blob ("" = none)
  int64_t created_unix = 0;
  int64_t ended_unix = 0;
};

struct RoundRecord {
  std::string job_id;
  uint32_t round = 0;                // 1-based
  uint32_t attempt = 0;              // retries so far
  RoundState state = RoundState::kSelecting;
  double started_unix = 0;
  double duration_s = 0;             // active time (excludes coordinator downtime)
  int64_t deadline_left_ms = 0;      // remaining collection time (paused while down)
  std::string model_in;              // global model the round starts from
  uint64_t model_in_size = 0;
  std::string model_out;             // aggregated model ("" until aggregated)
  uint64_t model_out_size = 0;
  std::string opt_state_out;         // server optimizer state after aggregation
  double eval_loss = 0;              // example-weighted over sites
  double eval_accuracy = 0;
  uint64_t eval_examples = 0;
  std::string reason;
};

// One selected site of a round. `state`: "selected", "training", "updated",
// "rejected", "dropped", "evaluating", "evaluated".
struct RoundSiteRecord {
  std::string job_id;
  uint32_t round = 0;
  std::string site;
  uint32_t attempt = 0;              // attempt that (last) tasked this site
  std::string task_id;               // train task
  std::string state = "selected";
  bool accepted = false;             // its update is part of the round
  std::string update_hash;
  uint64_t update_size = 0;
  uint64_t examples = 0;
  double train_loss = 0;
  double train_accuracy = 0;
  std::string eval_task_id;
  bool evaluated = false;
  double eval_loss = 0;
  double eval_accuracy = 0;
  uint64_t eval_examples = 0;
  double seconds = 0;                // device seconds reported (train + eval)
  std::string reason;
};

// A received update, keyed by (job, round, site, task). Stored once; resends
// compare their hash against it.
struct UpdateRecord {
  std::string job_id;
  uint32_t round = 0;
  std::string site;
  std::string task_id;
  std::string update_hash;
  uint64_t update_size = 0;
  uint64_t examples = 0;
  double received_unix = 0;
  bool deleted = false;              // blob removed by retention
  // ValidatedUpdate::l2_norm from the validation on arrival, so that aggregation
  // skips its own norm pass. nullopt (NULL: rows written before the column
  // existed): aggregation computes the norm itself.
  std::optional<double> l2_norm;
};

struct CheckpointRecord {
  std::string job_id;
  uint32_t round = 0;                // 0 = the initial model
  std::string hash;
  uint64_t size = 0;
  bool deleted = false;
};

// One row per finished task (unique by task id and kind): a resend is never billed twice.
struct UsageRecord {
  int64_t unix_time = 0;
  std::string job_id;
  std::string lead;
  std::string site;
  uint32_t round = 0;
  std::string kind;                  // "train" | "evaluate"
  std::string task_id;
  double cpu_seconds = 0;
  double gpu_seconds = 0;
  double wall_seconds = 0;
  std::string device;                // "cpu" | "cuda"
};

enum class UsageGroupBy : uint8_t { kSite = 0, kLead = 1, kJob = 2 };

struct UsageQuery {
  int64_t from_unix = 0;             // inclusive; 0 = beginning
  int64_t to_unix = 0;               // exclusive; 0 = no end
  UsageGroupBy by = UsageGroupBy::kSite;
  std::optional<std::string> only_site;   // restrict to one site's rows
  std::optional<std::string> only_lead;   // restrict to one lead's rows
};

struct UsageSum {
  std::string key;
  uint64_t tasks = 0;
  double cpu_seconds = 0;
  double gpu_seconds = 0;
};

struct SiteSeenRecord {
  std::string name;
  int64_t last_seen_unix = 0;
  std::string hello;                 // opaque (JSON of datasets/devices), written by the caller
};

struct TransitionRecord {
  std::string job_id;
  uint32_t round = 0;
  uint32_t attempt = 0;
  std::string from;
  std::string event;
  std::string to;
  double unix_time = 0;
};

class Store {
 public:
  // Opens (creating when missing) the database file; sets WAL, synchronous=FULL,
  // foreign keys; creates the schema and adds the columns that an older
  // database lacks. kIo / kCorruption naming the file.
  static Result<std::unique_ptr<Store>> Open(const std::filesystem::path& file);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // BEGIN IMMEDIATE .. COMMIT. Rolls back at destruction unless committed.
  class Transaction {
   public:
    explicit Transaction(Store& store);
    ~Transaction();
    Transaction(const Transaction&) = delete;
    Transaction& operator=(const Transaction&) = delete;
    Status Commit();
    const Status& begin_status() const { return begin_; }

   private:
    Store& store_;
    Status begin_;
    bool done_ = false;
  };

  // ---- jobs ----
  // Allocates the next job id ("job-000001", ...); inside the caller's transaction.
  Result<std::string> NextJobId();
  Status PutJob(const JobRecord& job);     // insert or replace
  Result<std::optional<JobRecord>> GetJob(const std::string& job_id);
  Result<std::vector<JobRecord>> ListJobs();   // in creation order

  // ---- rounds ----
  Status PutRound(const RoundRecord& round);
  Result<std::optional<RoundRecord>> GetRound(const std::string& job_id, uint32_t round);
  Result<std::vector<RoundRecord>> ListRounds(const std::string& job_id);
  Status PutRoundSite(const RoundSiteRecord& site);
  Result<std::vector<RoundSiteRecord>> ListRoundSites(const std::string& job_id, uint32_t round);
  // Jobs whose rounds a site took part in (for the site's own view).
  Result<std::vector<std::string>> JobsOfSite(const std::string& site);
  Status AddTransition(const TransitionRecord& t);
  Result<std::vector<TransitionRecord>> ListTransitions(const std::string& job_id);

  // ---- updates ----
  Status PutUpdate(const UpdateRecord& update);   // kAlreadyExists when the key exists
  Result<std::optional<UpdateRecord>> GetUpdate(const std::string& job_id, uint32_t round, const std::string& site,
                                                const std::string& task_id);
  Result<std::vector<UpdateRecord>> ListUpdates(const std::string& job_id);
  Status MarkUpdateDeleted(const std::string& job_id, uint32_t round, const std::string& site,
                           const std::string& task_id);

  // ---- checkpoints ----
  Status PutCheckpoint(const CheckpointRecord& c);
  Result<std::vector<CheckpointRecord>> ListCheckpoints(const std::string& job_id);
  Status MarkCheckpointDeleted(const std::string& job_id, uint32_t round);
  // True when some live (not deleted) checkpoint, job model or update refers to `hash`.
  Result<bool> HashInUse(const std::string& hash);

  // ---- usage ledger ----
  // Inserts; a second row for the same (task_id, kind) is ignored (returns false).
  Result<bool> AddUsage(const UsageRecord& u);
  Result<std::vector<UsageSum>> QueryUsage(const UsageQuery& q);
  Result<std::vector<UsageRecord>> ListUsage();

  // ---- sites ----
  Status PutSiteSeen(const SiteSeenRecord& s);
  Result<std::vector<SiteSeenRecord>> ListSitesSeen();

  // PRAGMA integrity_check: "ok" or the first problem.
  Result<std::string> IntegrityCheck();

  struct Impl;

 private:
  explicit Store(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace hanse::coord
