// Replays the committed fuzz corpus (fuzz/corpus/decode) through the fuzz entry
// point, so the gcc build checks what the libFuzzer build found interesting.
// HANSE_WRITE_FUZZ_SEEDS=DIR writes the seed frames (one per message kind and a
// few broken ones) into DIR instead.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

#include "protocol/codec.h"
#include "test_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace hanse::proto {
namespace {

std::vector<std::pair<std::string, std::string>> Seeds() {
  const std::string h(64, 'c');
  Task task;
  task.task_id = "t";
  task.model_hash = h;
  task.training.trainable = {"fc.*"};
  task.training.hidden = {256};
  JobStatus status;
  status.rounds.push_back(RoundInfo{1, "committed", 1.0, 2, 2, {SiteRoundInfo{"paris", "updated", 1, 0, 0, 0, 0, 0, 0, ""}}, 0, 0, 0, h});
  std::vector<std::pair<std::string, Message>> kinds = {
      {"hello", Hello{"0.1", {DatasetInfo{"fmnist", 60000, 10000}}, {DeviceInfo{"cpu", "x"}}}},
      {"task", task},
      {"blob_request", BlobRequest{h, 0, 4}},
      {"blob_chunk", BlobChunk{h, 0, 16, "0123456789abcdef", true}},
      {"update", Update{"t", "j", 1, h, 10, 5, {Metric{"loss", 0.5}}, Usage{1, 2, 3, "cpu", {"x"}}}},
      {"reject", Reject{Reason::kPolicyEpochs, "too many", "t"}},
      {"job_status", status},
      {"site_list", SiteList{{SiteInfo{"p", true, 1, {}, {}, "v"}}}},
      {"fetch_model", FetchModel{"j", 3}},
      {"heartbeat", Heartbeat{}},
  };
  std::vector<std::pair<std::string, std::string>> out;
  for (auto& [name, m] : kinds) {
    Envelope e;
    e.message_id = 1;
    e.message = m;
    out.emplace_back(name, Encode(e));
  }
  Envelope v2;
  v2.version = 2;
  v2.message = Heartbeat{};
  out.emplace_back("wrong_version", Encode(v2));
  out.emplace_back("truncated", out[1].second.substr(0, out[1].second.size() - 8));
  return out;
}

TEST(FuzzReplay, CorpusDecodesWithoutCrashing) {
  if (const char* dir = std::getenv("HANSE_WRITE_FUZZ_SEEDS")) {
    for (const auto& [name, bytes] : Seeds()) testing::WriteFile(std::filesystem::path(dir) / ("seed_" + name), bytes);
  }
  auto corpus = testing::SourceDir() / "fuzz" / "corpus" / "decode";
  ASSERT_TRUE(std::filesystem::is_directory(corpus)) << corpus;
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(corpus)) {
    if (!entry.is_regular_file()) continue;
    std::string bytes = testing::ReadFile(entry.path());
    EXPECT_EQ(LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()), 0)
        << entry.path();
    ++files;
  }
  EXPECT_GE(files, 10);
}

TEST(FuzzReplay, SeedsAreValidOrRefusedWithReason) {
  for (const auto& [name, bytes] : Seeds()) {
    auto d = Decode(bytes);
    bool should_fail = name == "wrong_version" || name == "truncated";
    EXPECT_EQ(d.ok(), !should_fail) << name << ": " << d.status().ToString();
    EXPECT_EQ(LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()), 0);
  }
}

}  // namespace
}  // namespace hanse::proto
