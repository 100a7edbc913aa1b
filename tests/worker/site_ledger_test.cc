#include "worker/site_ledger.h"

#include <gtest/gtest.h>

#include "test_util.h"

namespace hanse::site {
namespace {

using hanse::testing::ReadFile;
using hanse::testing::TempDir;
using hanse::testing::WriteFile;

LedgerRecord Rec(const std::string& lead, const std::string& month, double seconds) {
  // Designated initializers: GCC 12 warns falsely (-Wrestrict) on assigning short literals.
  return LedgerRecord{.month = month,
                      .lead = lead,
                      .job_id = std::string("job-1"),
                      .task_id = std::string("task-1"),
                      .time = std::string(),
                      .device_seconds = seconds,
                      .cpu_seconds = seconds * 2,
                      .gpu_seconds = 0,
                      .device_kind = std::string("cpu")};
}

TEST(SiteLedger, SumsPerLeadAndMonthAndSurvivesReopen) {
  TempDir dir;
  auto path = dir / "data/ledger.jsonl";
  {
    auto ledger = SiteLedger::Open(path);
    ASSERT_OK(ledger.status());
    EXPECT_EQ((*ledger)->DeviceSeconds("alice", "2026-11"), 0.0);
    ASSERT_OK((*ledger)->Record(Rec("alice", "2026-11", 1800)));
    ASSERT_OK((*ledger)->Record(Rec("alice", "2026-11", 1800)));
    ASSERT_OK((*ledger)->Record(Rec("alice", "2026-10", 100)));
    ASSERT_OK((*ledger)->Record(Rec("bob", "2026-11", 7)));
    EXPECT_DOUBLE_EQ((*ledger)->DeviceHours("alice", "2026-11"), 1.0);
  }
  auto ledger = SiteLedger::Open(path);
  ASSERT_OK(ledger.status());
  EXPECT_DOUBLE_EQ((*ledger)->DeviceSeconds("alice", "2026-11"), 3600);
  EXPECT_DOUBLE_EQ((*ledger)->DeviceSeconds("alice", "2026-10"), 100);
  EXPECT_DOUBLE_EQ((*ledger)->DeviceSeconds("bob", "2026-11"), 7);
  EXPECT_DOUBLE_EQ((*ledger)->DeviceSeconds("bob", "2026-10"), 0);
}

TEST(SiteLedger, MalformedLineIsCorruptionNamingTheLine) {
  TempDir dir;
  auto path = dir / "ledger.jsonl";
  WriteFile(path, "{\"lead\":\"a\",\"month\":\"2026-11\",\"device_seconds\":1}\n{\"lead\":\"a\"}\n");
  auto ledger = SiteLedger::Open(path);
  ASSERT_FALSE(ledger.ok());
  EXPECT_EQ(ledger.status().code(), Code::kCorruption);
  EXPECT_NE(ledger.status().message().find("ledger.jsonl:2:"), std::string::npos) << ledger.status().ToString();

  WriteFile(path, "{\"lead\":\"a\",\"month\":\"2026-11\",\"device_seconds\":-5}\n");
  EXPECT_EQ(SiteLedger::Open(path).status().code(), Code::kCorruption);
}

TEST(SiteLedger, TornLastLineIsDroppedAndTruncated) {
  TempDir dir;
  auto path = dir / "ledger.jsonl";
  const std::string good = "{\"lead\":\"a\",\"month\":\"2026-11\",\"device_seconds\":10}\n";
  WriteFile(path, good + "{\"lead\":\"a\",\"mon");
  {
    auto ledger = SiteLedger::Open(path);
    ASSERT_OK(ledger.status());
    EXPECT_DOUBLE_EQ((*ledger)->DeviceSeconds("a", "2026-11"), 10);
    EXPECT_EQ(ReadFile(path), good);
    ASSERT_OK((*ledger)->Record(Rec("a", "2026-11", 5)));
  }
  auto ledger = SiteLedger::Open(path);
  ASSERT_OK(ledger.status());
  EXPECT_DOUBLE_EQ((*ledger)->DeviceSeconds("a", "2026-11"), 15);
}

}  // namespace
}  // namespace hanse::site
