// Envelope <-> Cap'n Proto flat-array bytes.
//
// Decoding treats every frame as hostile: size checked before parsing, copied to
// an aligned buffer when needed, read with explicit traversal/nesting limits,
// every getter called once, every field that has a closed set of values checked.
// kj::Exception and our own validation failures are caught in Decode() and come
// out as Status; nothing escapes.
#include "protocol/codec.h"

#include <capnp/message.h>
#include <capnp/orphan.h>
#include <capnp/serialize.h>
#include <kj/exception.h>
#include <kj/io.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "hanse.capnp.h"

namespace hanse::proto {
namespace {

namespace w = ::hanse::wire;

// Thrown by the field checks below; caught in Decode() (never escapes this file).
struct Invalid {
  std::string why;
};

[[noreturn]] void Fail(std::string why) { throw Invalid{std::move(why)}; }

capnp::Text::Reader T(const std::string& s) { return capnp::Text::Reader(s.c_str(), s.size()); }
capnp::Data::Reader D(const std::string& s) {
  return capnp::Data::Reader(reinterpret_cast<const kj::byte*>(s.data()), s.size());
}
std::string S(capnp::Text::Reader t) { return std::string(t.begin(), t.size()); }
std::string S(capnp::Data::Reader d) { return std::string(reinterpret_cast<const char*>(d.begin()), d.size()); }

bool IsHex64(const std::string& s) {
  if (s.size() != 64) return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}
// Hash fields are a 64-char lowercase hex SHA-256 or empty (= none).
std::string Hash(capnp::Text::Reader t, const char* field, bool required) {
  std::string s = S(t);
  if (s.empty() && !required) return s;
  if (!IsHex64(s)) {
    Fail(std::string(field) + " is not a 64-character lowercase hex SHA-256 (" + std::to_string(s.size()) +
         " chars)");
  }
  return s;
}

bool IsKnownReason(uint16_t v) {
  switch (static_cast<Reason>(v)) {
    case Reason::kUnspecified: case Reason::kMalformed: case Reason::kIncompatibleVersion:
    case Reason::kUnauthorized: case Reason::kUnknownJob: case Reason::kUnknownTask: case Reason::kInvalidJob:
    case Reason::kBlobNotFound: case Reason::kBlobCorrupt: case Reason::kUpdateInvalid:
    case Reason::kUpdateDuplicateMismatch: case Reason::kUpdateLate: case Reason::kUpdateWrongJob:
    case Reason::kSiteNotSelected: case Reason::kBusy: case Reason::kPolicyLead: case Reason::kPolicyArchitecture:
    case Reason::kPolicyModel: case Reason::kPolicyDataset: case Reason::kPolicyEpochs:
    case Reason::kPolicyBatchSize: case Reason::kPolicyDevice: case Reason::kPolicyWindow:
    case Reason::kPolicyQuota: case Reason::kPolicyModelSize: case Reason::kTrainingFailed:
    case Reason::kCancelled: case Reason::kInternal:
      return true;
  }
  return false;
}

// ---------------------------------------------------------------- encode

// Declared up front so the list templates below find every overload.
void Put(w::DatasetInfo::Builder b, const DatasetInfo& v);
void Put(w::DeviceInfo::Builder b, const DeviceInfo& v);
void Put(w::Metric::Builder b, const Metric& v);
void Put(w::JobSummary::Builder b, const JobSummary& v);
void Put(w::SiteRoundInfo::Builder b, const SiteRoundInfo& v);
void Put(w::RoundInfo::Builder b, const RoundInfo& v);
void Put(w::UsageRow::Builder b, const UsageRow& v);
void Put(w::SiteInfo::Builder b, const SiteInfo& v);
DatasetInfo Get(w::DatasetInfo::Reader r);
DeviceInfo Get(w::DeviceInfo::Reader r);
Metric Get(w::Metric::Reader r);
JobSummary Get(w::JobSummary::Reader r);
SiteRoundInfo Get(w::SiteRoundInfo::Reader r);
RoundInfo Get(w::RoundInfo::Reader r);
UsageRow Get(w::UsageRow::Reader r);
SiteInfo Get(w::SiteInfo::Reader r);

void Put(w::DatasetInfo::Builder b, const DatasetInfo& v) {
  b.setName(T(v.name));
  b.setTrainExamples(v.train_examples);
  b.setTestExamples(v.test_examples);
}
void Put(w::DeviceInfo::Builder b, const DeviceInfo& v) {
  b.setKind(T(v.kind));
  b.setName(T(v.name));
}
template <class ListB, class Vec>
void PutList(ListB l, const Vec& v) {
  for (unsigned i = 0; i < v.size(); ++i) Put(l[i], v[i]);
}
void PutTexts(capnp::List<capnp::Text>::Builder l, const std::vector<std::string>& v) {
  for (unsigned i = 0; i < v.size(); ++i) l.set(i, T(v[i]));
}
void Put(w::Usage::Builder b, const Usage& v) {
  b.setWallSeconds(v.wall_seconds);
  b.setCpuSeconds(v.cpu_seconds);
  b.setGpuSeconds(v.gpu_seconds);
  b.setDeviceKind(T(v.device_kind));
  PutTexts(b.initDevices(v.devices.size()), v.devices);
}
void Put(w::Metric::Builder b, const Metric& v) {
  b.setName(T(v.name));
  b.setValue(v.value);
}
void Put(w::TrainingConfig::Builder b, const TrainingConfig& v) {
  b.setEpochs(v.epochs);
  b.setBatchSize(v.batch_size);
  b.setOptimizer(T(v.optimizer));
  b.setLr(v.lr);
  b.setMomentum(v.momentum);
  b.setWeightDecay(v.weight_decay);
  b.setProxMu(v.prox_mu);
  PutTexts(b.initTrainable(v.trainable.size()), v.trainable);
  b.setUpdateDtype(T(v.update_dtype));
  b.setMaxExamples(v.max_examples);
  auto h = b.initHidden(v.hidden.size());
  for (unsigned i = 0; i < v.hidden.size(); ++i) h.set(i, v.hidden[i]);
}
void Put(w::JobSummary::Builder b, const JobSummary& v) {
  b.setJobId(T(v.job_id));
  b.setName(T(v.name));
  b.setLead(T(v.lead));
  b.setState(static_cast<w::JobState>(v.state));
  b.setRoundsDone(v.rounds_done);
  b.setRoundsTotal(v.rounds_total);
  b.setReason(T(v.reason));
  b.setCreatedUnix(v.created_unix);
}
void Put(w::SiteRoundInfo::Builder b, const SiteRoundInfo& v) {
  b.setSite(T(v.site));
  b.setState(T(v.state));
  b.setExamples(v.examples);
  b.setTrainLoss(v.train_loss);
  b.setTrainAccuracy(v.train_accuracy);
  b.setEvalLoss(v.eval_loss);
  b.setEvalAccuracy(v.eval_accuracy);
  b.setEvalExamples(v.eval_examples);
  b.setSeconds(v.seconds);
  b.setReason(T(v.reason));
}
void Put(w::RoundInfo::Builder b, const RoundInfo& v) {
  b.setRound(v.round);
  b.setState(T(v.state));
  b.setDurationSeconds(v.duration_seconds);
  b.setExpected(v.expected);
  b.setAnswered(v.answered);
  PutList(b.initSites(v.sites.size()), v.sites);
  b.setEvalLoss(v.eval_loss);
  b.setEvalAccuracy(v.eval_accuracy);
  b.setEvalExamples(v.eval_examples);
  b.setModelHash(T(v.model_hash));
}
void Put(w::UsageRow::Builder b, const UsageRow& v) {
  b.setKey(T(v.key));
  b.setTasks(v.tasks);
  b.setCpuHours(v.cpu_hours);
  b.setGpuHours(v.gpu_hours);
  b.setCost(v.cost);
}
void Put(w::SiteInfo::Builder b, const SiteInfo& v) {
  b.setName(T(v.name));
  b.setConnected(v.connected);
  b.setLastSeenUnix(v.last_seen_unix);
  PutList(b.initDatasets(v.datasets.size()), v.datasets);
  PutList(b.initDevices(v.devices.size()), v.devices);
  b.setSoftwareVersion(T(v.software_version));
}

void PutBody(w::Envelope::Body::Builder b, const Hello& v) {
  auto h = b.initHello();
  h.setSoftwareVersion(T(v.software_version));
  PutList(h.initDatasets(v.datasets.size()), v.datasets);
  PutList(h.initDevices(v.devices.size()), v.devices);
}
void PutBody(w::Envelope::Body::Builder b, const Welcome& v) {
  auto m = b.initWelcome();
  m.setSoftwareVersion(T(v.software_version));
  m.setPrincipal(T(v.principal));
  m.setHeartbeatMs(v.heartbeat_ms);
}
void PutBody(w::Envelope::Body::Builder b, const Heartbeat&) { b.setHeartbeat(); }
void PutBody(w::Envelope::Body::Builder b, const Task& v) {
  auto m = b.initTask();
  m.setTaskId(T(v.task_id));
  m.setJobId(T(v.job_id));
  m.setRound(v.round);
  m.setKind(static_cast<w::TaskKind>(v.kind));
  m.setLead(T(v.lead));
  m.setModelHash(T(v.model_hash));
  m.setModelSize(v.model_size);
  m.setArchitecture(T(v.architecture));
  m.setModuleHash(T(v.module_hash));
  m.setDataset(T(v.dataset));
  Put(m.initTraining(), v.training);
  m.setSeed(v.seed);
  m.setModelName(T(v.model_name));
  m.setInitialModelHash(T(v.initial_model_hash));
  m.setModuleSize(v.module_size);
}
void PutBody(w::Envelope::Body::Builder b, const CancelTask& v) {
  auto m = b.initCancelTask();
  m.setTaskId(T(v.task_id));
  m.setReason(T(v.reason));
}
void PutBody(w::Envelope::Body::Builder b, const Busy& v) { b.initBusy().setTaskId(T(v.task_id)); }
void PutBody(w::Envelope::Body::Builder b, const BlobRequest& v) {
  auto m = b.initBlobRequest();
  m.setHash(T(v.hash));
  m.setOffset(v.offset);
  m.setCredits(v.credits);
  m.setReceived(v.received);
}
void PutBody(w::Envelope::Body::Builder b, const BlobChunk& v) {
  auto m = b.initBlobChunk();
  m.setHash(T(v.hash));
  m.setOffset(v.offset);
  m.setTotalSize(v.total_size);
  // Whole-word, aligned payloads (every chunk but a blob's last) are referenced,
  // not copied: writeMessage copies them once, as their own segment. Others are
  // copied: capnp would read the rounded-up word past the end (found by fuzzing:
  // an empty one even produced a frame that does not decode).
  if (!v.bytes.empty() && v.bytes.size() % sizeof(capnp::word) == 0 &&
      reinterpret_cast<uintptr_t>(v.bytes.data()) % alignof(capnp::word) == 0) {
    m.adoptBytes(capnp::Orphanage::getForMessageContaining(m).referenceExternalData(D(v.bytes)));
  } else {
    m.setBytes(D(v.bytes));
  }
  m.setLast(v.last);
}
void PutBody(w::Envelope::Body::Builder b, const Update& v) {
  auto m = b.initUpdate();
  m.setTaskId(T(v.task_id));
  m.setJobId(T(v.job_id));
  m.setRound(v.round);
  m.setUpdateHash(T(v.update_hash));
  m.setUpdateSize(v.update_size);
  m.setExamples(v.examples);
  PutList(m.initMetrics(v.metrics.size()), v.metrics);
  Put(m.initUsage(), v.usage);
}
void PutBody(w::Envelope::Body::Builder b, const EvaluationResult& v) {
  auto m = b.initEvaluationResult();
  m.setTaskId(T(v.task_id));
  m.setJobId(T(v.job_id));
  m.setRound(v.round);
  m.setExamples(v.examples);
  m.setLoss(v.loss);
  m.setAccuracy(v.accuracy);
  Put(m.initUsage(), v.usage);
}
void PutBody(w::Envelope::Body::Builder b, const Ack& v) {
  auto m = b.initAck();
  m.setRef(T(v.ref));
  m.setText(T(v.text));
}
void PutBody(w::Envelope::Body::Builder b, const Reject& v) {
  auto m = b.initReject();
  m.setCode(static_cast<uint16_t>(v.code));
  m.setText(T(v.text));
  m.setRef(T(v.ref));
}
void PutBody(w::Envelope::Body::Builder b, const SubmitJob& v) {
  auto m = b.initSubmitJob();
  m.setJobToml(T(v.job_toml));
  m.setFileName(T(v.file_name));
  m.setModelHash(T(v.model_hash));
  m.setModelSize(v.model_size);
  m.setModuleHash(T(v.module_hash));
  m.setModuleSize(v.module_size);
}
void PutBody(w::Envelope::Body::Builder b, const JobSubmitted& v) { b.initJobSubmitted().setJobId(T(v.job_id)); }
void PutBody(w::Envelope::Body::Builder b, const ListJobs&) { b.setListJobs(); }
void PutBody(w::Envelope::Body::Builder b, const JobList& v) { PutList(b.initJobList().initJobs(v.jobs.size()), v.jobs); }
void PutBody(w::Envelope::Body::Builder b, const GetJobStatus& v) { b.initGetJobStatus().setJobId(T(v.job_id)); }
void PutBody(w::Envelope::Body::Builder b, const JobStatus& v) {
  auto m = b.initJobStatus();
  Put(m.initSummary(), v.summary);
  m.setStrategy(T(v.strategy));
  m.setArchitecture(T(v.architecture));
  m.setDataset(T(v.dataset));
  PutList(m.initRounds(v.rounds.size()), v.rounds);
}
void PutBody(w::Envelope::Body::Builder b, const WatchJob& v) { b.initWatchJob().setJobId(T(v.job_id)); }
void PutBody(w::Envelope::Body::Builder b, const RoundEvent& v) {
  auto m = b.initRoundEvent();
  m.setJobId(T(v.job_id));
  m.setRound(v.round);
  m.setKind(T(v.kind));
  m.setExpected(v.expected);
  m.setAnswered(v.answered);
  m.setElapsedSeconds(v.elapsed_seconds);
  m.setEvalLoss(v.eval_loss);
  m.setEvalAccuracy(v.eval_accuracy);
  m.setJobState(static_cast<w::JobState>(v.job_state));
  m.setReason(T(v.reason));
}
void PutBody(w::Envelope::Body::Builder b, const CancelJob& v) { b.initCancelJob().setJobId(T(v.job_id)); }
void PutBody(w::Envelope::Body::Builder b, const FetchModel& v) {
  auto m = b.initFetchModel();
  m.setJobId(T(v.job_id));
  m.setHasRound(v.round.has_value());
  m.setRound(v.round.value_or(0));
}
void PutBody(w::Envelope::Body::Builder b, const ModelRef& v) {
  auto m = b.initModelRef();
  m.setJobId(T(v.job_id));
  m.setRound(v.round);
  m.setHash(T(v.hash));
  m.setSize(v.size);
}
void PutBody(w::Envelope::Body::Builder b, const GetUsage& v) {
  auto m = b.initGetUsage();
  m.setFromUnix(v.from_unix);
  m.setToUnix(v.to_unix);
  m.setBy(static_cast<w::UsageGroup>(v.by));
}
void PutBody(w::Envelope::Body::Builder b, const UsageReport& v) {
  auto m = b.initUsageReport();
  PutList(m.initRows(v.rows.size()), v.rows);
  m.setCurrency(T(v.currency));
}
void PutBody(w::Envelope::Body::Builder b, const ListSites&) { b.setListSites(); }
void PutBody(w::Envelope::Body::Builder b, const SiteList& v) {
  PutList(b.initSiteList().initSites(v.sites.size()), v.sites);
}

// ---------------------------------------------------------------- decode
// Each reader getter is called once and its result kept.

DatasetInfo Get(w::DatasetInfo::Reader r) {
  return DatasetInfo{S(r.getName()), r.getTrainExamples(), r.getTestExamples()};
}
DeviceInfo Get(w::DeviceInfo::Reader r) { return DeviceInfo{S(r.getKind()), S(r.getName())}; }
Metric Get(w::Metric::Reader r) { return Metric{S(r.getName()), r.getValue()}; }
template <class Out, class ListR>
std::vector<Out> GetList(ListR l) {
  std::vector<Out> out;
  out.reserve(l.size());
  for (auto e : l) out.push_back(Get(e));
  return out;
}
std::vector<std::string> GetTexts(capnp::List<capnp::Text>::Reader l) {
  std::vector<std::string> out;
  out.reserve(l.size());
  for (auto t : l) out.push_back(S(t));
  return out;
}
Usage Get(w::Usage::Reader r) {
  Usage u;
  u.wall_seconds = r.getWallSeconds();
  u.cpu_seconds = r.getCpuSeconds();
  u.gpu_seconds = r.getGpuSeconds();
  u.device_kind = S(r.getDeviceKind());
  u.devices = GetTexts(r.getDevices());
  return u;
}
TrainingConfig Get(w::TrainingConfig::Reader r) {
  TrainingConfig c;
  c.epochs = r.getEpochs();
  c.batch_size = r.getBatchSize();
  c.optimizer = S(r.getOptimizer());
  c.lr = r.getLr();
  c.momentum = r.getMomentum();
  c.weight_decay = r.getWeightDecay();
  c.prox_mu = r.getProxMu();
  c.trainable = GetTexts(r.getTrainable());
  c.update_dtype = S(r.getUpdateDtype());
  c.max_examples = r.getMaxExamples();
  auto h = r.getHidden();
  c.hidden.reserve(h.size());
  for (uint32_t x : h) c.hidden.push_back(x);
  return c;
}
JobState GetJobState(w::JobState s, const char* field) {
  auto v = static_cast<uint16_t>(s);
  if (v > static_cast<uint16_t>(JobState::kCancelled)) Fail(std::string(field) + ": unknown job state " + std::to_string(v));
  return static_cast<JobState>(v);
}
JobSummary Get(w::JobSummary::Reader r) {
  JobSummary s;
  s.job_id = S(r.getJobId());
  s.name = S(r.getName());
  s.lead = S(r.getLead());
  s.state = GetJobState(r.getState(), "job summary");
  s.rounds_done = r.getRoundsDone();
  s.rounds_total = r.getRoundsTotal();
  s.reason = S(r.getReason());
  s.created_unix = r.getCreatedUnix();
  return s;
}
SiteRoundInfo Get(w::SiteRoundInfo::Reader r) {
  SiteRoundInfo s;
  s.site = S(r.getSite());
  s.state = S(r.getState());
  s.examples = r.getExamples();
  s.train_loss = r.getTrainLoss();
  s.train_accuracy = r.getTrainAccuracy();
  s.eval_loss = r.getEvalLoss();
  s.eval_accuracy = r.getEvalAccuracy();
  s.eval_examples = r.getEvalExamples();
  s.seconds = r.getSeconds();
  s.reason = S(r.getReason());
  return s;
}
RoundInfo Get(w::RoundInfo::Reader r) {
  RoundInfo i;
  i.round = r.getRound();
  i.state = S(r.getState());
  i.duration_seconds = r.getDurationSeconds();
  i.expected = r.getExpected();
  i.answered = r.getAnswered();
  i.sites = GetList<SiteRoundInfo>(r.getSites());
  i.eval_loss = r.getEvalLoss();
  i.eval_accuracy = r.getEvalAccuracy();
  i.eval_examples = r.getEvalExamples();
  i.model_hash = Hash(r.getModelHash(), "round.model_hash", false);
  return i;
}
UsageRow Get(w::UsageRow::Reader r) {
  return UsageRow{S(r.getKey()), r.getTasks(), r.getCpuHours(), r.getGpuHours(), r.getCost()};
}
SiteInfo Get(w::SiteInfo::Reader r) {
  SiteInfo s;
  s.name = S(r.getName());
  s.connected = r.getConnected();
  s.last_seen_unix = r.getLastSeenUnix();
  s.datasets = GetList<DatasetInfo>(r.getDatasets());
  s.devices = GetList<DeviceInfo>(r.getDevices());
  s.software_version = S(r.getSoftwareVersion());
  return s;
}

Message GetBody(w::Envelope::Body::Reader b) {
  switch (b.which()) {
    case w::Envelope::Body::HELLO: {
      auto r = b.getHello();
      return Hello{S(r.getSoftwareVersion()), GetList<DatasetInfo>(r.getDatasets()),
                   GetList<DeviceInfo>(r.getDevices())};
    }
    case w::Envelope::Body::WELCOME: {
      auto r = b.getWelcome();
      return Welcome{S(r.getSoftwareVersion()), S(r.getPrincipal()), r.getHeartbeatMs()};
    }
    case w::Envelope::Body::HEARTBEAT:
      return Heartbeat{};
    case w::Envelope::Body::TASK: {
      auto r = b.getTask();
      Task t;
      t.task_id = S(r.getTaskId());
      t.job_id = S(r.getJobId());
      t.round = r.getRound();
      auto kind = static_cast<uint16_t>(r.getKind());
      if (kind > static_cast<uint16_t>(TaskKind::kEvaluate)) Fail("task.kind: unknown task kind " + std::to_string(kind));
      t.kind = static_cast<TaskKind>(kind);
      t.lead = S(r.getLead());
      t.model_hash = Hash(r.getModelHash(), "task.model_hash", false);
      t.model_size = r.getModelSize();
      t.architecture = S(r.getArchitecture());
      t.module_hash = Hash(r.getModuleHash(), "task.module_hash", false);
      t.dataset = S(r.getDataset());
      t.training = Get(r.getTraining());
      t.seed = r.getSeed();
      t.model_name = S(r.getModelName());
      t.initial_model_hash = Hash(r.getInitialModelHash(), "task.initial_model_hash", false);
      t.module_size = r.getModuleSize();
      return t;
    }
    case w::Envelope::Body::CANCEL_TASK: {
      auto r = b.getCancelTask();
      return CancelTask{S(r.getTaskId()), S(r.getReason())};
    }
    case w::Envelope::Body::BUSY:
      return Busy{S(b.getBusy().getTaskId())};
    case w::Envelope::Body::BLOB_REQUEST: {
      auto r = b.getBlobRequest();
      return BlobRequest{Hash(r.getHash(), "blob_request.hash", true), r.getOffset(), r.getCredits(), r.getReceived()};
    }
    case w::Envelope::Body::BLOB_CHUNK: {
      auto r = b.getBlobChunk();
      BlobChunk c;
      c.hash = Hash(r.getHash(), "blob_chunk.hash", true);
      c.offset = r.getOffset();
      c.total_size = r.getTotalSize();
      c.bytes = S(r.getBytes());
      c.last = r.getLast();
      if (c.offset > c.total_size || c.bytes.size() > c.total_size - c.offset) {
        Fail("blob_chunk: bytes [" + std::to_string(c.offset) + ", +" + std::to_string(c.bytes.size()) +
             ") lie outside the blob of " + std::to_string(c.total_size) + " bytes");
      }
      return c;
    }
    case w::Envelope::Body::UPDATE: {
      auto r = b.getUpdate();
      Update u;
      u.task_id = S(r.getTaskId());
      u.job_id = S(r.getJobId());
      u.round = r.getRound();
      u.update_hash = Hash(r.getUpdateHash(), "update.update_hash", true);
      u.update_size = r.getUpdateSize();
      u.examples = r.getExamples();
      u.metrics = GetList<Metric>(r.getMetrics());
      u.usage = Get(r.getUsage());
      return u;
    }
    case w::Envelope::Body::EVALUATION_RESULT: {
      auto r = b.getEvaluationResult();
      EvaluationResult e;
      e.task_id = S(r.getTaskId());
      e.job_id = S(r.getJobId());
      e.round = r.getRound();
      e.examples = r.getExamples();
      e.loss = r.getLoss();
      e.accuracy = r.getAccuracy();
      e.usage = Get(r.getUsage());
      return e;
    }
    case w::Envelope::Body::ACK: {
      auto r = b.getAck();
      return Ack{S(r.getRef()), S(r.getText())};
    }
    case w::Envelope::Body::REJECT: {
      auto r = b.getReject();
      uint16_t code = r.getCode();
      if (!IsKnownReason(code)) Fail("reject.code: unknown reason code " + std::to_string(code));
      return Reject{static_cast<Reason>(code), S(r.getText()), S(r.getRef())};
    }
    case w::Envelope::Body::SUBMIT_JOB: {
      auto r = b.getSubmitJob();
      return SubmitJob{S(r.getJobToml()),
                       S(r.getFileName()),
                       Hash(r.getModelHash(), "submit_job.model_hash", false),
                       r.getModelSize(),
                       Hash(r.getModuleHash(), "submit_job.module_hash", false),
                       r.getModuleSize()};
    }
    case w::Envelope::Body::JOB_SUBMITTED:
      return JobSubmitted{S(b.getJobSubmitted().getJobId())};
    case w::Envelope::Body::LIST_JOBS:
      return ListJobs{};
    case w::Envelope::Body::JOB_LIST:
      return JobList{GetList<JobSummary>(b.getJobList().getJobs())};
    case w::Envelope::Body::GET_JOB_STATUS:
      return GetJobStatus{S(b.getGetJobStatus().getJobId())};
    case w::Envelope::Body::JOB_STATUS: {
      auto r = b.getJobStatus();
      JobStatus s;
      s.summary = Get(r.getSummary());
      s.strategy = S(r.getStrategy());
      s.architecture = S(r.getArchitecture());
      s.dataset = S(r.getDataset());
      s.rounds = GetList<RoundInfo>(r.getRounds());
      return s;
    }
    case w::Envelope::Body::WATCH_JOB:
      return WatchJob{S(b.getWatchJob().getJobId())};
    case w::Envelope::Body::ROUND_EVENT: {
      auto r = b.getRoundEvent();
      RoundEvent e;
      e.job_id = S(r.getJobId());
      e.round = r.getRound();
      e.kind = S(r.getKind());
      e.expected = r.getExpected();
      e.answered = r.getAnswered();
      e.elapsed_seconds = r.getElapsedSeconds();
      e.eval_loss = r.getEvalLoss();
      e.eval_accuracy = r.getEvalAccuracy();
      e.job_state = GetJobState(r.getJobState(), "round_event.job_state");
      e.reason = S(r.getReason());
      return e;
    }
    case w::Envelope::Body::CANCEL_JOB:
      return CancelJob{S(b.getCancelJob().getJobId())};
    case w::Envelope::Body::FETCH_MODEL: {
      auto r = b.getFetchModel();
      FetchModel f;
      f.job_id = S(r.getJobId());
      if (r.getHasRound()) f.round = r.getRound();
      return f;
    }
    case w::Envelope::Body::MODEL_REF: {
      auto r = b.getModelRef();
      return ModelRef{S(r.getJobId()), r.getRound(), Hash(r.getHash(), "model_ref.hash", false), r.getSize()};
    }
    case w::Envelope::Body::GET_USAGE: {
      auto r = b.getGetUsage();
      auto by = static_cast<uint16_t>(r.getBy());
      if (by > static_cast<uint16_t>(UsageGroup::kJob)) Fail("get_usage.by: unknown usage group " + std::to_string(by));
      return GetUsage{r.getFromUnix(), r.getToUnix(), static_cast<UsageGroup>(by)};
    }
    case w::Envelope::Body::USAGE_REPORT: {
      auto r = b.getUsageReport();
      return UsageReport{GetList<UsageRow>(r.getRows()), S(r.getCurrency())};
    }
    case w::Envelope::Body::LIST_SITES:
      return ListSites{};
    case w::Envelope::Body::SITE_LIST:
      return SiteList{GetList<SiteInfo>(b.getSiteList().getSites())};
  }
  // A union member added by a newer schema under the same version number.
  Fail("unknown message kind " + std::to_string(static_cast<unsigned>(b.which())));
}

Result<Envelope> DecodeAligned(kj::ArrayPtr<const capnp::word> words, uint64_t frame_bytes,
                               const DecodeLimits& limits) {
  capnp::ReaderOptions options;
  // A well-formed message reads each word about once; x2 leaves room for the
  // segment table and list headers while an amplification attack stops early.
  uint64_t traversal = limits.traversal_words ? limits.traversal_words : std::max<uint64_t>(words.size() * 2, 1024);
  options.traversalLimitInWords = traversal;
  options.nestingLimit = limits.nesting;
  capnp::FlatArrayMessageReader reader(words, options);
  if (reader.getEnd() != words.end()) {
    return Status::Corruption("frame has " + std::to_string((words.end() - reader.getEnd()) * 8) +
                              " trailing bytes after the message");
  }
  auto root = reader.getRoot<w::Envelope>();
  uint32_t version = root.getVersion();
  if (version != kProtocolVersion) {
    return Status::FailedPrecondition("incompatible protocol version " + std::to_string(version) +
                                      " (this peer speaks " + std::to_string(kProtocolVersion) + ")");
  }
  auto body = root.getBody();
  // Per-kind size: only blob chunks may use the whole frame budget.
  if (body.which() != w::Envelope::Body::BLOB_CHUNK && frame_bytes > limits.max_control_bytes) {
    return Status::Corruption("a non-chunk message of " + std::to_string(frame_bytes) +
                              " bytes exceeds the limit of " + std::to_string(limits.max_control_bytes) + " bytes");
  }
  Envelope e;
  e.version = version;
  e.message_id = root.getMessageId();
  e.in_reply_to = root.getInReplyTo();
  e.message = GetBody(body);
  return e;
}

}  // namespace

std::string Encode(const Envelope& envelope) {
  std::string out;
  EncodeTo(envelope, out);
  return out;
}

void EncodeTo(const Envelope& envelope, std::string& out) {
  capnp::MallocMessageBuilder builder(1024);
  auto root = builder.initRoot<w::Envelope>();
  root.setVersion(envelope.version);
  root.setMessageId(envelope.message_id);
  root.setInReplyTo(envelope.in_reply_to);
  auto body = root.initBody();
  std::visit([&](const auto& m) { PutBody(body, m); }, envelope.message);

  size_t words = capnp::computeSerializedSizeInWords(builder);
  out.resize(words * sizeof(capnp::word));
  kj::ArrayOutputStream stream(kj::arrayPtr(reinterpret_cast<kj::byte*>(out.data()), out.size()));
  capnp::writeMessage(stream, builder);
}

Result<Envelope> Decode(std::span<const std::byte> frame, const DecodeLimits& limits) {
  if (frame.size() > limits.max_frame_bytes) {
    return Status::Corruption("frame of " + std::to_string(frame.size()) + " bytes exceeds the limit of " +
                              std::to_string(limits.max_frame_bytes) + " bytes");
  }
  if (frame.empty()) return Status::Corruption("empty frame");
  if (frame.size() % sizeof(capnp::word) != 0) {
    return Status::Corruption("frame of " + std::to_string(frame.size()) +
                              " bytes is not a whole number of 8-byte words (truncated?)");
  }
  try {
    size_t n = frame.size() / sizeof(capnp::word);
    // FlatArrayMessageReader needs 8-byte alignment; ZeroMQ frames may not have it.
    if (reinterpret_cast<uintptr_t>(frame.data()) % alignof(capnp::word) == 0) {
      return DecodeAligned(kj::arrayPtr(reinterpret_cast<const capnp::word*>(frame.data()), n), frame.size(), limits);
    }
    auto copy = kj::heapArray<capnp::word>(n);
    std::memcpy(copy.begin(), frame.data(), frame.size());
    return DecodeAligned(copy.asPtr(), frame.size(), limits);
  } catch (const kj::Exception& e) {
    return Status::Corruption(std::string("malformed message: ") + e.getDescription().cStr());
  } catch (const Invalid& e) {
    return Status::Corruption("invalid message: " + e.why);
  }
}

Result<Envelope> Decode(const std::string& frame, const DecodeLimits& limits) {
  return Decode(std::as_bytes(std::span<const char>(frame.data(), frame.size())), limits);
}

}  // namespace hanse::proto
