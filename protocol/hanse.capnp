# Wire form of protocol/messages.h. One Envelope per ZeroMQ message.
#
# Compatibility: field numbers (@N) are forever. New fields and new union members
# are added at the end; a change that old peers cannot read bumps `version`
# (messages.h kProtocolVersion). No message here carries training samples.
@0x986ffd7d2aacb81c;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("hanse::wire");

struct DatasetInfo {
  name @0 :Text;
  trainExamples @1 :UInt64;
  testExamples @2 :UInt64;
}

struct DeviceInfo {
  kind @0 :Text;
  name @1 :Text;
}

struct Hello {
  softwareVersion @0 :Text;
  datasets @1 :List(DatasetInfo);
  devices @2 :List(DeviceInfo);
}

struct Welcome {
  softwareVersion @0 :Text;
  principal @1 :Text;
  heartbeatMs @2 :UInt32;
}

enum TaskKind {
  train @0;
  evaluate @1;
}

# As in the job file's [training] table.
struct TrainingConfig {
  epochs @0 :UInt32;
  batchSize @1 :UInt32;
  optimizer @2 :Text;
  lr @3 :Float64;
  momentum @4 :Float64;
  weightDecay @5 :Float64;
  proxMu @6 :Float64;
  trainable @7 :List(Text);
  updateDtype @8 :Text;
  maxExamples @9 :UInt64;
  hidden @10 :List(UInt32);
}

struct Task {
  taskId @0 :Text;
  jobId @1 :Text;
  round @2 :UInt32;
  kind @3 :TaskKind;
  lead @4 :Text;
  modelHash @5 :Text;
  modelSize @6 :UInt64;
  architecture @7 :Text;
  moduleHash @8 :Text;
  dataset @9 :Text;
  training @10 :TrainingConfig;
  seed @11 :UInt64;
  # Site policy inputs (worker/policy): the job's initial model name and hash, and
  # the TorchScript module's size so the worker can pull it.
  modelName @12 :Text;
  initialModelHash @13 :Text;
  moduleSize @14 :UInt64;
}

struct CancelTask {
  taskId @0 :Text;
  reason @1 :Text;
}

struct Busy {
  taskId @0 :Text;
}

struct BlobRequest {
  hash @0 :Text;
  offset @1 :UInt64;
  credits @2 :UInt32;
  # Bytes of the blob the receiver has taken off the wire so far: lets a sender
  # that serves many peers from one budget know what is no longer in flight.
  received @3 :UInt64;
}

struct BlobChunk {
  hash @0 :Text;
  offset @1 :UInt64;
  totalSize @2 :UInt64;
  bytes @3 :Data;
  last @4 :Bool;
}

struct Metric {
  name @0 :Text;
  value @1 :Float64;
}

struct Usage {
  wallSeconds @0 :Float64;
  cpuSeconds @1 :Float64;
  gpuSeconds @2 :Float64;
  deviceKind @3 :Text;
  devices @4 :List(Text);
}

struct Update {
  taskId @0 :Text;
  jobId @1 :Text;
  round @2 :UInt32;
  updateHash @3 :Text;
  updateSize @4 :UInt64;
  examples @5 :UInt64;
  metrics @6 :List(Metric);
  usage @7 :Usage;
}

struct EvaluationResult {
  taskId @0 :Text;
  jobId @1 :Text;
  round @2 :UInt32;
  examples @3 :UInt64;
  loss @4 :Float64;
  accuracy @5 :Float64;
  usage @6 :Usage;
}

struct Ack {
  ref @0 :Text;
  text @1 :Text;
}

struct Reject {
  # messages.h Reason; a number, not a Cap'n Proto enum, because the codes have
  # gaps (20.., 99). Unknown codes are refused by the decoder.
  code @0 :UInt16;
  text @1 :Text;
  ref @2 :Text;
}

# ---- Admin API ----

struct SubmitJob {
  jobToml @0 :Text;
  fileName @1 :Text;
  modelHash @2 :Text;
  modelSize @3 :UInt64;
  # The TorchScript module (architecture = "torchscript"), pulled like the model.
  moduleHash @4 :Text;
  moduleSize @5 :UInt64;
}

struct JobSubmitted {
  jobId @0 :Text;
}

enum JobState {
  queued @0;
  running @1;
  succeeded @2;
  failed @3;
  cancelled @4;
}

struct JobSummary {
  jobId @0 :Text;
  name @1 :Text;
  lead @2 :Text;
  state @3 :JobState;
  roundsDone @4 :UInt32;
  roundsTotal @5 :UInt32;
  reason @6 :Text;
  createdUnix @7 :Int64;
}

struct JobList {
  jobs @0 :List(JobSummary);
}

struct GetJobStatus {
  jobId @0 :Text;
}

struct SiteRoundInfo {
  site @0 :Text;
  state @1 :Text;
  examples @2 :UInt64;
  trainLoss @3 :Float64;
  trainAccuracy @4 :Float64;
  evalLoss @5 :Float64;
  evalAccuracy @6 :Float64;
  evalExamples @7 :UInt64;
  seconds @8 :Float64;
  reason @9 :Text;
}

struct RoundInfo {
  round @0 :UInt32;
  state @1 :Text;
  durationSeconds @2 :Float64;
  expected @3 :UInt32;
  answered @4 :UInt32;
  sites @5 :List(SiteRoundInfo);
  evalLoss @6 :Float64;
  evalAccuracy @7 :Float64;
  evalExamples @8 :UInt64;
  modelHash @9 :Text;
}

struct JobStatus {
  summary @0 :JobSummary;
  strategy @1 :Text;
  architecture @2 :Text;
  dataset @3 :Text;
  rounds @4 :List(RoundInfo);
}

struct WatchJob {
  jobId @0 :Text;
}

struct RoundEvent {
  jobId @0 :Text;
  round @1 :UInt32;
  kind @2 :Text;
  expected @3 :UInt32;
  answered @4 :UInt32;
  elapsedSeconds @5 :Float64;
  evalLoss @6 :Float64;
  evalAccuracy @7 :Float64;
  jobState @8 :JobState;
  reason @9 :Text;
}

struct CancelJob {
  jobId @0 :Text;
}

struct FetchModel {
  jobId @0 :Text;
  hasRound @1 :Bool;   # false: the latest checkpoint
  round @2 :UInt32;
}

struct ModelRef {
  jobId @0 :Text;
  round @1 :UInt32;
  hash @2 :Text;
  size @3 :UInt64;
}

enum UsageGroup {
  site @0;
  lead @1;
  job @2;
}

struct GetUsage {
  fromUnix @0 :Int64;
  toUnix @1 :Int64;
  by @2 :UsageGroup;
}

struct UsageRow {
  key @0 :Text;
  tasks @1 :UInt64;
  cpuHours @2 :Float64;
  gpuHours @3 :Float64;
  cost @4 :Float64;
}

struct UsageReport {
  rows @0 :List(UsageRow);
  currency @1 :Text;
}

struct SiteInfo {
  name @0 :Text;
  connected @1 :Bool;
  lastSeenUnix @2 :Int64;
  datasets @3 :List(DatasetInfo);
  devices @4 :List(DeviceInfo);
  softwareVersion @5 :Text;
}

struct SiteList {
  sites @0 :List(SiteInfo);
}

struct Envelope {
  version @0 :UInt32;
  messageId @1 :UInt64;
  inReplyTo @2 :UInt64;
  body :union {
    hello @3 :Hello;
    welcome @4 :Welcome;
    heartbeat @5 :Void;
    task @6 :Task;
    cancelTask @7 :CancelTask;
    busy @8 :Busy;
    blobRequest @9 :BlobRequest;
    blobChunk @10 :BlobChunk;
    update @11 :Update;
    evaluationResult @12 :EvaluationResult;
    ack @13 :Ack;
    reject @14 :Reject;
    submitJob @15 :SubmitJob;
    jobSubmitted @16 :JobSubmitted;
    listJobs @17 :Void;
    jobList @18 :JobList;
    getJobStatus @19 :GetJobStatus;
    jobStatus @20 :JobStatus;
    watchJob @21 :WatchJob;
    roundEvent @22 :RoundEvent;
    cancelJob @23 :CancelJob;
    fetchModel @24 :FetchModel;
    modelRef @25 :ModelRef;
    getUsage @26 :GetUsage;
    usageReport @27 :UsageReport;
    listSites @28 :Void;
    siteList @29 :SiteList;
  }
}
