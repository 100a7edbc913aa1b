// Update validation and aggregation rules (pure C++: no ML framework, no ZeroMQ).
//
// Updates are deltas (new weights minus global) over the job's trainable subset
// of the global model, stored as safetensors files. Aggregation runs block by
// block over the global model, the K updates and the optimizer state, and
// streams the new model (and state) out: memory is O(K x block), independent of
// the model size. Updates are folded in a canonical order (by site id), so the
// result is bitwise identical whatever order they arrived in.
//
// Dtype rule: the global model's aggregated tensors may be F32, BF16 or F16;
// an update tensor must have the same name and shape as the global tensor and a
// dtype in ModelSchema::allowed_dtypes (by default F32, BF16, F16, whatever the
// global dtype is: a BF16 update of an F32 model is fine). Arithmetic is in fp32;
// the new model keeps the global model's dtypes. Non-float tensors and tensors
// outside the trainable subset are copied unchanged.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/blob_store.h"
#include "core/safetensors.h"
#include "core/status.h"

namespace hanse::agg {

// ---------------------------------------------------------------- rules ----
enum class Rule : uint8_t {
  kFedAvg,       // mean of deltas weighted by example counts
  kFedProx,      // the proximal term is the worker's; the server does FedAvg
  kFedAdam,      // FedOpt (Reddi et al. 2021): pseudo-gradient = weighted mean of deltas
  kFedYogi,
  kFedAdagrad,
  kMedian,       // coordinate-wise median (unweighted)
  kTrimmedMean,  // coordinate-wise mean after dropping floor(trim_beta*K) at each end (unweighted)
  kKrum,         // the update with the best Krum score (unweighted)
  kMultiKrum,    // unweighted mean of the krum_m updates with the best scores
};
// "fedavg" "fedprox" "fedadam" "fedyogi" "fedadagrad" "median" "trimmed_mean" "krum" "multi_krum".
Result<Rule> ParseRule(std::string_view name);
const char* RuleName(Rule rule);
bool IsFedOpt(Rule rule);  // FedAdam, FedYogi, FedAdagrad: they carry optimizer state

struct RuleOptions {
  Rule rule = Rule::kFedAvg;
  // FedOpt server step: m = b1 m + (1-b1) d; v per rule; x += server_lr * m / (sqrt(v) + tau).
  // m and v start at 0; no bias correction (as in the paper). server_lr is unused by
  // the other rules (new = global + aggregated delta).
  double server_lr = 1.0;
  double beta1 = 0.9;
  double beta2 = 0.99;
  double tau = 1e-3;
  double trim_beta = 0.1;  // in [0, 0.5)
  uint32_t krum_f = 0;     // assumed Byzantine updates; Krum needs K > 2f + 2
  uint32_t krum_m = 1;     // Multi-Krum: 1 <= m <= K - f
  std::optional<double> max_update_norm;  // L2 over the whole update; above it: rejected
  std::optional<double> clip_norm;        // above it: scaled down to it; must be <= max_update_norm
  size_t block_elems = size_t{1} << 16;   // elements per block (per update buffer)
};
// Checks ranges (betas in [0,1), tau > 0, trim_beta in [0,0.5), clip <= max, block > 0...).
Status ValidateRuleOptions(const RuleOptions& options);

// ------------------------------------------------------------- schema ----
struct TensorSchema {
  std::string name;
  std::vector<int64_t> shape;
};
// What an update must contain: exactly these tensors (names, shapes), each in an
// allowed dtype.
struct ModelSchema {
  std::vector<TensorSchema> tensors;  // sorted by name, unique
  std::vector<DType> allowed_dtypes = {DType::kF32, DType::kBF16, DType::kF16};
  const TensorSchema* Find(std::string_view name) const;
};
// The float tensors (F32/BF16/F16) of `model` whose names match one of
// `trainable_patterns` (fnmatch(3) globs without flags, as the worker's trainer
// matches them: '*' also crosses dots); no patterns: every float tensor. A pattern
// that matches nothing is an error. The worker sends only the tensors it trained
// (its model's parameters): a model whose file also holds float buffers (e.g.
// BatchNorm running stats) needs patterns that leave them out.
Result<ModelSchema> SchemaFromModel(const SafetensorsFile& model,
                                    std::span<const std::string> trainable_patterns = {});

// ---------------------------------------------------------- validation ----
enum class RejectReason : uint8_t {
  kMalformed,      // not a readable safetensors stream (header, offsets, length)
  kMissingTensor,  // a schema tensor is absent
  kExtraTensor,    // a tensor not in the schema
  kWrongShape,
  kWrongDType,
  kNonFinite,      // NaN or Inf
  kNormTooLarge,   // L2 norm above max_update_norm
  kDuplicateSite,  // a second update from the same site in one aggregation
  kUnreadable,     // I/O error reading the file
};
const char* RejectReasonName(RejectReason r);  // "malformed", "missing_tensor", ...

struct ValidatedUpdate {
  uint64_t bytes = 0;      // total size of the safetensors stream
  double l2_norm = 0;      // over all tensors; bitwise the same however the bytes were chunked
  size_t tensors = 0;
};

// Validates a safetensors update as its bytes arrive, chunk by chunk (call Feed
// from the same loop that hashes the chunk). Memory: the JSON header (<= 16 MiB)
// plus a few KiB. The first failure sticks: later Feed/Finish return it, and
// reason() says which kind it was. Error messages name the tensor, e.g.
// "tensor 'fc1.weight': element 17 is NaN". The schema is copied (it is small:
// names and shapes). Not thread-safe.
class UpdateValidator {
 public:
  UpdateValidator(const ModelSchema& expected, std::optional<double> max_norm);
  ~UpdateValidator();
  UpdateValidator(const UpdateValidator&) = delete;
  UpdateValidator& operator=(const UpdateValidator&) = delete;

  Status Feed(std::span<const std::byte> bytes);
  // Checks that the stream was complete; returns the norm.
  Result<ValidatedUpdate> Finish();
  std::optional<RejectReason> reason() const { return reason_; }

 private:
  struct State;
  Status Fail(RejectReason reason, Status status);
  Status ParseHeader();
  Status FeedData(std::span<const std::byte> bytes);
  Status CheckTensorDone();

  ModelSchema expected_;
  std::optional<double> max_norm_;
  std::unique_ptr<State> state_;
  std::optional<RejectReason> reason_;
  Status failure_;
};

// Reads the file in chunks through UpdateValidator. On rejection *reason (when
// given) says why; the Status message names the tensor.
Result<ValidatedUpdate> ValidateUpdateFile(const std::filesystem::path& file, const ModelSchema& expected,
                                           std::optional<double> max_norm,
                                           RejectReason* reason = nullptr);

// ---------------------------------------------------------- aggregation ----
struct UpdateRef {
  std::string site;        // canonical order key; unique within one aggregation
  uint64_t examples = 0;   // FedAvg/FedOpt weight
  std::filesystem::path file;  // safetensors delta (e.g. BlobStore::PathOf(hash))
  // Set from ValidatedUpdate::l2_norm when the update was validated as it arrived:
  // Aggregate then trusts its values (finite) and skips a pass. Unset: Aggregate
  // validates values and norms itself in a first pass over the blocks.
  std::optional<double> l2_norm;
};

struct RejectedUpdate {
  std::string site;
  RejectReason reason = RejectReason::kMalformed;
  std::string message;  // names the tensor
};

struct AggregateRequest {
  std::filesystem::path global_model;            // safetensors
  std::optional<ModelSchema> schema;             // none: SchemaFromModel(global) (all float tensors)
  std::vector<UpdateRef> updates;                // any order
  RuleOptions options;
  // FedOpt state written by the previous round (a safetensors file); none: first
  // round (m = v = 0). Ignored by the other rules.
  std::optional<std::filesystem::path> optimizer_state;
};

struct AggregateResult {
  std::string model_hash;                 // SHA-256 of the new model (its blob name)
  std::optional<std::string> state_hash;  // FedOpt state blob; pass it to the next round
  std::vector<RejectedUpdate> rejected;   // in site order
  std::vector<std::string> accepted_sites;  // passed validation (site order)
  std::vector<std::string> used_sites;      // entered the aggregate (Krum: the selected ones)
  std::vector<std::string> clipped_sites;   // scaled down to clip_norm
  uint64_t model_bytes = 0;
};

// Validates, aggregates and writes the new model (and FedOpt state) into
// `out_store`. Rejected updates are listed and the round goes on with the others.
// A second update from a site already seen is rejected (kDuplicateSite), not an error.
// Errors: kInvalidArgument (bad options), kFailedPrecondition (no update left, or
// the rule's precondition fails with the accepted ones, e.g. Krum needs
// K > 2f + 2; optimizer state that does not fit the rule or the schema),
// kNotFound/kIo/kCorruption for the global model and state files. Blocks the
// calling thread; concurrent calls are fine (they share nothing).
Result<AggregateResult> Aggregate(const AggregateRequest& request, BlobStore& out_store);

// The same, writing the new model (and FedOpt state when the rule has one) to
// files atomically (temp file, fsync, rename). Hashes are still returned.
Result<AggregateResult> AggregateToFiles(const AggregateRequest& request, const std::filesystem::path& model_out,
                                         const std::filesystem::path& state_out = {});

// ---------------------------------------------------------- offline (CLI) ----
// `hanse aggregate --rule fedavg --weights 100,300 a.safetensors b.safetensors -o out.safetensors`
struct OfflineRequest {
  RuleOptions options;
  std::vector<std::filesystem::path> inputs;
  // Example counts, one per input; empty: 1 each (plain mean).
  std::vector<uint64_t> weights;
  // false (default): inputs are full models. With `base` set, each input's delta is
  // (input - base) and the result is base + rule(deltas). Without `base`, the rule
  // runs on the models themselves (new = rule(models)); this equals
  // base + rule(deltas) for every rule except FedOpt (which needs `base`) and
  // except max_update_norm/clip_norm (which then apply to the models' norms).
  // true: inputs are deltas and `base` is required.
  bool inputs_are_deltas = false;
  std::filesystem::path base;         // global model ("" = none)
  std::filesystem::path output;       // new model (written atomically)
  std::filesystem::path state_in;     // FedOpt state from a previous run ("" = none)
  std::filesystem::path state_out;    // FedOpt state to write ("" = <output>.state.safetensors)
};
// Inputs are ordered by their position (site ids "input-000", "input-001", ...).
// Any rejected input makes the whole call fail (an offline run must not silently
// drop what the user named). Returns what Aggregate returns.
Result<AggregateResult> AggregateFiles(const OfflineRequest& request);

}  // namespace hanse::agg
