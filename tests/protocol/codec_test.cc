// Codec: every message kind round-trips; every kind of bad frame is refused with
// a reason and never throws.
#include "protocol/codec.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "test_util.h"

namespace hanse::proto {
namespace {

const std::string kHashA(64, 'a');
const std::string kHashB = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

Usage SomeUsage() { return Usage{12.5, 20.25, 3.0, "cuda", {"NVIDIA H100", "NVIDIA H100"}}; }

// One populated value of every Message alternative.
std::vector<Message> AllKinds() {
  Task task;
  task.task_id = "t-1";
  task.job_id = "j-1";
  task.round = 3;
  task.kind = TaskKind::kEvaluate;
  task.lead = "alice";
  task.model_hash = kHashA;
  task.model_size = 1234;
  task.architecture = "torchscript";
  task.module_hash = kHashB;
  task.dataset = "fashion-mnist";
  task.training = TrainingConfig{2, 32, "adam", 0.001, 0.9, 1e-4, 0.01, {"fc.*", "head.*"}, "bf16", 5000, {256, 128}};
  task.seed = 42;
  task.model_name = "mlp-fmnist";
  task.initial_model_hash = kHashB;
  task.module_size = 999;

  JobSummary summary{"j-1", "fmnist", "alice", JobState::kRunning, 2, 5, "", 1700000000};
  RoundInfo round_info;
  round_info.round = 1;
  round_info.state = "committed";
  round_info.duration_seconds = 3.5;
  round_info.expected = 3;
  round_info.answered = 2;
  round_info.sites = {SiteRoundInfo{"paris", "updated", 100, 0.5, 0.8, 0.6, 0.75, 50, 2.5, ""},
                      SiteRoundInfo{"berlin", "rejected", 0, 0, 0, 0, 0, 0, 0, "policy_epochs"}};
  round_info.eval_loss = 0.4;
  round_info.eval_accuracy = 0.85;
  round_info.eval_examples = 100;
  round_info.model_hash = kHashA;

  return {
      Hello{"0.1.0", {DatasetInfo{"fashion-mnist", 60000, 10000}}, {DeviceInfo{"cpu", "cpu x2"}}},
      Welcome{"0.1.0", "paris", 1000},
      Heartbeat{},
      task,
      CancelTask{"t-1", "job cancelled"},
      Busy{"t-2"},
      BlobRequest{kHashA, 4096, 4, 1024},
      BlobChunk{kHashA, 4, 10, std::string("\0\1\2\3\4\5", 6), true},
      Update{"t-1", "j-1", 3, kHashB, 777, 600, {Metric{"train_loss", 0.3}, Metric{"train_accuracy", 0.9}}, SomeUsage()},
      EvaluationResult{"t-1", "j-1", 3, 100, 0.45, 0.83, SomeUsage()},
      Ack{"t-1", "stored"},
      Reject{Reason::kPolicyEpochs, "epochs 50 > max_epochs 10", "t-1"},
      SubmitJob{"architecture = \"torchscript\"\n", "job.toml", kHashA, 4096, kHashB, 1234},
      JobSubmitted{"j-7"},
      ListJobs{},
      JobList{{summary, JobSummary{"j-2", "b", "bob", JobState::kFailed, 0, 1, "no quorum", 5}}},
      GetJobStatus{"j-1"},
      JobStatus{summary, "fedavg", "mlp", "fashion-mnist", {round_info}},
      WatchJob{"j-1"},
      RoundEvent{"j-1", 2, "committed", 3, 3, 12.0, 0.4, 0.86, JobState::kSucceeded, ""},
      CancelJob{"j-1"},
      FetchModel{"j-1", 4},
      ModelRef{"j-1", 4, kHashA, 1 << 20},
      GetUsage{100, 200, UsageGroup::kLead},
      UsageReport{{UsageRow{"paris", 3, 0.5, 1.25, 4.5}}, "EUR"},
      ListSites{},
      SiteList{{SiteInfo{"paris", true, 1700000001, {DatasetInfo{"fmnist", 1, 2}}, {DeviceInfo{"cuda", "A100"}}, "0.1"}}},
  };
}

std::string Frame(Message m, uint32_t version = kProtocolVersion) {
  Envelope e;
  e.version = version;
  e.message_id = 7;
  e.in_reply_to = 3;
  e.message = std::move(m);
  return Encode(e);
}

TEST(Codec, RoundTripsEveryMessageKind) {
  auto kinds = AllKinds();
  ASSERT_EQ(kinds.size(), std::variant_size_v<Message>);
  for (const auto& m : kinds) {
    std::string frame = Frame(m);
    auto d = Decode(frame);
    ASSERT_OK(d.status());
    EXPECT_EQ(d->message.index(), m.index()) << KindName(m);
    EXPECT_EQ(d->message_id, 7u);
    EXPECT_EQ(d->in_reply_to, 3u);
    // The encoding is canonical for our builders: equal bytes = equal fields.
    EXPECT_EQ(Encode(*d), frame) << KindName(m);
  }
}

TEST(Codec, KeepsFieldValues) {
  auto kinds = AllKinds();
  auto d = Decode(Frame(kinds[3]));
  ASSERT_OK(d.status());
  const auto& t = std::get<Task>(d->message);
  EXPECT_EQ(t.kind, TaskKind::kEvaluate);
  EXPECT_EQ(t.training.trainable, (std::vector<std::string>{"fc.*", "head.*"}));
  EXPECT_EQ(t.training.hidden, (std::vector<uint32_t>{256, 128}));
  EXPECT_EQ(t.initial_model_hash, kHashB);
  EXPECT_EQ(t.module_size, 999u);
  auto c = Decode(Frame(kinds[7]));
  ASSERT_OK(c.status());
  EXPECT_EQ(std::get<BlobChunk>(c->message).bytes, std::string("\0\1\2\3\4\5", 6));
  auto f = Decode(Frame(FetchModel{"j", std::nullopt}));
  ASSERT_OK(f.status());
  EXPECT_FALSE(std::get<FetchModel>(f->message).round.has_value());
}

TEST(Codec, RoundTripsChunkPayloadsOfEverySize) {
  // Empty, odd and whole-word payloads take different encoding paths.
  for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{8}, size_t{9}, size_t{4096}, size_t{4099}}) {
    std::string bytes(n, '\0');
    for (size_t i = 0; i < n; ++i) bytes[i] = static_cast<char>(i * 31 + 7);
    std::string frame = Frame(BlobChunk{kHashA, 0, n, bytes, true});
    auto d = Decode(frame);
    ASSERT_TRUE(d.ok()) << n << ": " << d.status().ToString();
    EXPECT_EQ(std::get<BlobChunk>(d->message).bytes, bytes) << n;
    EXPECT_EQ(Encode(*d), frame) << n;
  }
}

TEST(Codec, DecodesMisalignedFrame) {
  std::string frame = Frame(Hello{"v", {}, {}});
  std::vector<std::byte> buf(frame.size() + 1);
  std::memcpy(buf.data() + 1, frame.data(), frame.size());
  auto d = Decode(std::span<const std::byte>(buf.data() + 1, frame.size()));
  ASSERT_OK(d.status());
  EXPECT_EQ(std::get<Hello>(d->message).software_version, "v");
}

TEST(Codec, RejectsTruncatedFrame) {
  std::string frame = Frame(AllKinds()[3]);
  for (size_t cut : {size_t{1}, size_t{7}, size_t{8}, size_t{64}, frame.size() - 8}) {
    auto d = Decode(frame.substr(0, frame.size() - cut));
    ASSERT_FALSE(d.ok()) << "cut " << cut;
    EXPECT_EQ(d.status().code(), Code::kCorruption) << d.status().ToString();
  }
  auto empty = Decode(std::string());
  EXPECT_EQ(empty.status().code(), Code::kCorruption);
}

TEST(Codec, RejectsGarbage) {
  std::mt19937_64 rng(1234);
  for (int i = 0; i < 2000; ++i) {
    std::string g((rng() % 64 + 1) * 8, '\0');
    for (auto& c : g) c = static_cast<char>(rng());
    auto d = Decode(g);
    if (d.ok()) continue;  // random bytes can form a valid (tiny) message
    EXPECT_TRUE(d.status().code() == Code::kCorruption || d.status().code() == Code::kFailedPrecondition)
        << d.status().ToString();
  }
}

TEST(Codec, RefusesOtherProtocolVersionWithReason) {
  auto d = Decode(Frame(Hello{}, 2));
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), Code::kFailedPrecondition);
  EXPECT_NE(d.status().message().find("incompatible protocol version 2 (this peer speaks 1)"), std::string::npos)
      << d.status().message();
}

TEST(Codec, RejectsTooDeepMessage) {
  // JobStatus -> rounds -> RoundInfo -> sites -> SiteRoundInfo is 5 levels deep.
  DecodeLimits limits;
  limits.nesting = 3;
  auto d = Decode(Frame(AllKinds()[17]), limits);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), Code::kCorruption);
  EXPECT_NE(d.status().message().find("nesting"), std::string::npos) << d.status().message();
}

TEST(Codec, RejectsOversizeFrames) {
  DecodeLimits limits;
  limits.max_frame_bytes = 1024;
  auto big = Decode(Frame(BlobChunk{kHashA, 0, 4096, std::string(4096, 'x'), true}), limits);
  ASSERT_FALSE(big.ok());
  EXPECT_NE(big.status().message().find("exceeds the limit"), std::string::npos);
  // Only chunks may be large: a 2 MiB job file is refused by the per-kind limit.
  auto control = Decode(Frame(SubmitJob{std::string(2 << 20, 'a'), "j.toml", "", 0, "", 0}));
  ASSERT_FALSE(control.ok());
  EXPECT_NE(control.status().message().find("non-chunk"), std::string::npos) << control.status().message();
  // while a chunk of 4 MiB passes the default limits.
  auto chunk = Decode(Frame(BlobChunk{kHashA, 0, 4 << 20, std::string(4 << 20, 'x'), true}));
  EXPECT_OK(chunk.status());
}

TEST(Codec, RejectsTraversalAmplification) {
  // A tiny traversal budget stands in for a frame whose pointers fan out.
  DecodeLimits limits;
  limits.traversal_words = 8;
  auto d = Decode(Frame(AllKinds()[17]), limits);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), Code::kCorruption);
}

TEST(Codec, RejectsBadFieldValues) {
  struct Case {
    Message m;
    const char* what;
  };
  Task bad_kind;
  bad_kind.kind = static_cast<TaskKind>(7);
  Task bad_model;
  bad_model.model_hash = "ABC";
  std::vector<Case> cases = {
      {BlobRequest{"", 0, 1}, "blob_request.hash"},
      {BlobRequest{std::string(64, 'A'), 0, 1}, "blob_request.hash"},
      {BlobChunk{kHashA, 8, 10, "abcd", false}, "outside the blob"},
      {bad_model, "task.model_hash"},
      {bad_kind, "unknown task kind 7"},
      {Reject{static_cast<Reason>(55), "?", ""}, "unknown reason code 55"},
      {GetUsage{0, 0, static_cast<UsageGroup>(9)}, "unknown usage group 9"},
      {RoundEvent{"j", 1, "x", 0, 0, 0, 0, 0, static_cast<JobState>(8), ""}, "unknown job state 8"},
      {Update{"t", "j", 1, "", 0, 0, {}, {}}, "update.update_hash"},
  };
  for (const auto& c : cases) {
    auto d = Decode(Frame(c.m));
    ASSERT_FALSE(d.ok()) << c.what;
    EXPECT_EQ(d.status().code(), Code::kCorruption);
    EXPECT_NE(d.status().message().find(c.what), std::string::npos) << d.status().message();
  }
}

TEST(Codec, RejectsTrailingBytes) {
  std::string frame = Frame(Heartbeat{}) + std::string(8, '\0');
  auto d = Decode(frame);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("trailing"), std::string::npos);
}

}  // namespace
}  // namespace hanse::proto
