// The messages of the hanse wire protocol as plain C++ values.
//
// This header is the contract between protocol/, coordinator/, worker/ and cli/.
// protocol/hanse.capnp is its wire form; codec.h converts between the two and is
// the only place that touches Cap'n Proto readers. No message here can carry
// training samples: what leaves a site is an update blob hash, example counts,
// scalar metrics and usage.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace hanse::proto {

// Bumped on any incompatible schema change. A peer announcing another major
// version is refused with Reason::kIncompatibleVersion.
inline constexpr uint32_t kProtocolVersion = 1;

// Reason codes carried by Reject. Stable numbers: they are on the wire.
enum class Reason : uint16_t {
  kUnspecified = 0,
  kMalformed = 1,            // frame did not decode
  kIncompatibleVersion = 2,
  kUnauthorized = 3,         // role may not do this
  kUnknownJob = 4,
  kUnknownTask = 5,
  kInvalidJob = 6,           // job file failed validation; text names file:line:key
  kBlobNotFound = 7,
  kBlobCorrupt = 8,          // final SHA-256 did not match
  kUpdateInvalid = 9,        // failed aggregation validation (names the tensor)
  kUpdateDuplicateMismatch = 10,  // a different update under an existing key
  kUpdateLate = 11,          // round already closed
  kUpdateWrongJob = 12,
  kSiteNotSelected = 13,
  kBusy = 14,
  // Site policy refusals (worker -> coordinator -> lead).
  kPolicyLead = 20,
  kPolicyArchitecture = 21,
  kPolicyModel = 22,
  kPolicyDataset = 23,
  kPolicyEpochs = 24,
  kPolicyBatchSize = 25,
  kPolicyDevice = 26,
  kPolicyWindow = 27,
  kPolicyQuota = 28,
  kPolicyModelSize = 29,
  kTrainingFailed = 30,      // the worker could not train (bad model for arch, ...)
  kCancelled = 31,
  kInternal = 99,
};
const char* ReasonName(Reason r);

struct DatasetInfo {
  std::string name;          // logical name, e.g. "fashion-mnist"
  uint64_t train_examples = 0;
  uint64_t test_examples = 0;
};

struct DeviceInfo {
  std::string kind;          // "cpu" or "cuda"
  std::string name;          // e.g. "cpu x2", "NVIDIA H100"
};

struct Hello {
  std::string software_version;
  std::vector<DatasetInfo> datasets;
  std::vector<DeviceInfo> devices;
};

struct Welcome {
  std::string software_version;
  std::string principal;     // the name the coordinator knows this key by
  uint32_t heartbeat_ms = 1000;
};

struct Heartbeat {};

enum class TaskKind : uint8_t { kTrain = 0, kEvaluate = 1 };

struct TrainingConfig {
  uint32_t epochs = 1;
  uint32_t batch_size = 64;
  std::string optimizer = "sgd";        // "sgd" | "adam"
  double lr = 0.05;
  double momentum = 0.0;
  double weight_decay = 0.0;
  double prox_mu = 0.0;                 // FedProx proximal term, applied by the worker
  std::vector<std::string> trainable;   // glob patterns; empty = all tensors
  std::string update_dtype = "f32";     // "f32" | "bf16"
  uint64_t max_examples = 0;            // 0 = the whole local train split
  std::vector<uint32_t> hidden;         // mlp hidden sizes
};

struct Task {
  std::string task_id;
  std::string job_id;
  uint32_t round = 0;
  TaskKind kind = TaskKind::kTrain;
  std::string lead;                     // the lead that owns the job (policy input)
  std::string model_hash;               // global model blob (hex SHA-256)
  uint64_t model_size = 0;              // bytes
  std::string architecture;             // "mlp" | "cnn" | "torchscript"
  std::string module_hash;              // torchscript module blob, else empty
  std::string dataset;                  // logical name
  TrainingConfig training;
  uint64_t seed = 0;
  // Site policy inputs: the policy name of the job's initial model (job file
  // `model_name`), the hash of that initial model (the round-0 global model; the
  // policy may pin it), and the size of the torchscript module blob (so the worker
  // can pull it).
  std::string model_name;
  std::string initial_model_hash;
  uint64_t module_size = 0;
};

struct CancelTask {
  std::string task_id;
  std::string reason;
};

// The site is serving another task; the coordinator keeps this one queued.
struct Busy {
  std::string task_id;
};

// Receiver-driven, credit-based pull: "send me `credits` chunks of `hash`
// starting at byte `offset`; I hold `received` bytes". A request with 0
// credits only acknowledges chunks (the last one acknowledges the whole blob).
struct BlobRequest {
  std::string hash;
  uint64_t offset = 0;
  uint32_t credits = 0;
  uint64_t received = 0;
};

struct BlobChunk {
  std::string hash;
  uint64_t offset = 0;
  uint64_t total_size = 0;
  std::string bytes;                    // raw bytes, at most the chunk size
  bool last = false;
};

struct Metric {
  std::string name;
  double value = 0;
};

struct Usage {
  double wall_seconds = 0;
  double cpu_seconds = 0;
  double gpu_seconds = 0;
  std::string device_kind;              // "cpu" | "cuda"
  std::vector<std::string> devices;     // device names
};

struct Update {
  std::string task_id;
  std::string job_id;
  uint32_t round = 0;
  std::string update_hash;              // blob the coordinator pulls
  uint64_t update_size = 0;
  uint64_t examples = 0;
  std::vector<Metric> metrics;          // train_loss, train_accuracy, ...
  Usage usage;
};

struct EvaluationResult {
  std::string task_id;
  std::string job_id;
  uint32_t round = 0;
  uint64_t examples = 0;
  double loss = 0;
  double accuracy = 0;
  Usage usage;
};

// Positive acknowledgement of an update / evaluation / admin action.
struct Ack {
  std::string ref;                      // task id, job id, ...
  std::string text;
};

struct Reject {
  Reason code = Reason::kUnspecified;
  std::string text;
  std::string ref;                      // task id / job id / blob hash it is about
};

// ---- Admin API (leads, admins, sites reading their own data) ----

struct SubmitJob {
  std::string job_toml;                 // the job file's text, validated by the coordinator
  std::string file_name;                // for error messages: "job-fashion-mnist.toml"
  std::string model_hash;               // initial model, pulled from the client as a blob
  uint64_t model_size = 0;
  std::string module_hash;              // torchscript module blob (architecture = torchscript), else empty
  uint64_t module_size = 0;
};

struct JobSubmitted {
  std::string job_id;
};

struct ListJobs {};

enum class JobState : uint8_t { kQueued = 0, kRunning = 1, kSucceeded = 2, kFailed = 3, kCancelled = 4 };
const char* JobStateName(JobState s);

struct JobSummary {
  std::string job_id;
  std::string name;
  std::string lead;
  JobState state = JobState::kQueued;
  uint32_t rounds_done = 0;
  uint32_t rounds_total = 0;
  std::string reason;                   // why it failed / was cancelled
  int64_t created_unix = 0;
};

struct JobList {
  std::vector<JobSummary> jobs;
};

struct GetJobStatus {
  std::string job_id;
};

struct SiteRoundInfo {
  std::string site;
  std::string state;                    // "selected", "training", "updated", "rejected", "dropped", "evaluated"
  uint64_t examples = 0;
  double train_loss = 0;
  double train_accuracy = 0;
  double eval_loss = 0;
  double eval_accuracy = 0;
  uint64_t eval_examples = 0;
  double seconds = 0;                   // device seconds the site reported
  std::string reason;                   // rejection reason, if any
};

struct RoundInfo {
  uint32_t round = 0;
  std::string state;                    // round state machine state name
  double duration_seconds = 0;
  uint32_t expected = 0;
  uint32_t answered = 0;
  std::vector<SiteRoundInfo> sites;
  double eval_loss = 0;                 // example-weighted over sites
  double eval_accuracy = 0;
  uint64_t eval_examples = 0;
  std::string model_hash;               // checkpoint committed for this round
};

struct JobStatus {
  JobSummary summary;
  std::string strategy;
  std::string architecture;
  std::string dataset;
  std::vector<RoundInfo> rounds;
};

struct WatchJob {
  std::string job_id;
};

// Streamed to a watcher: progress within a round, then a commit, then the end.
struct RoundEvent {
  std::string job_id;
  uint32_t round = 0;
  std::string kind;                     // "progress" | "committed" | "job_ended"
  uint32_t expected = 0;
  uint32_t answered = 0;
  double elapsed_seconds = 0;
  double eval_loss = 0;
  double eval_accuracy = 0;
  JobState job_state = JobState::kRunning;
  std::string reason;
};

struct CancelJob {
  std::string job_id;
};

// Asks for the checkpoint of a round (round 0 = initial model; no round = latest).
struct FetchModel {
  std::string job_id;
  std::optional<uint32_t> round;
};

struct ModelRef {
  std::string job_id;
  uint32_t round = 0;
  std::string hash;
  uint64_t size = 0;
};

enum class UsageGroup : uint8_t { kSite = 0, kLead = 1, kJob = 2 };

struct GetUsage {
  int64_t from_unix = 0;                // inclusive; 0 = beginning
  int64_t to_unix = 0;                  // exclusive; 0 = now
  UsageGroup by = UsageGroup::kSite;
};

struct UsageRow {
  std::string key;                      // site, lead or job id
  uint64_t tasks = 0;
  double cpu_hours = 0;
  double gpu_hours = 0;
  double cost = 0;                      // at the coordinator's rates
};

struct UsageReport {
  std::vector<UsageRow> rows;
  std::string currency;
};

struct ListSites {};

struct SiteInfo {
  std::string name;
  bool connected = false;
  int64_t last_seen_unix = 0;
  std::vector<DatasetInfo> datasets;
  std::vector<DeviceInfo> devices;
  std::string software_version;
};

struct SiteList {
  std::vector<SiteInfo> sites;
};

using Message = std::variant<Hello, Welcome, Heartbeat, Task, CancelTask, Busy, BlobRequest, BlobChunk, Update,
                             EvaluationResult, Ack, Reject, SubmitJob, JobSubmitted, ListJobs, JobList,
                             GetJobStatus, JobStatus, WatchJob, RoundEvent, CancelJob, FetchModel, ModelRef,
                             GetUsage, UsageReport, ListSites, SiteList>;

struct Envelope {
  uint32_t version = kProtocolVersion;
  uint64_t message_id = 0;              // sender-assigned, echoed in replies as in_reply_to
  uint64_t in_reply_to = 0;             // 0 = not a reply
  Message message;
};

// Short kind name for logs: "hello", "blob_chunk", ...
const char* KindName(const Message& m);

}  // namespace hanse::proto
