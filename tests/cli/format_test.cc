#include "cli/format.h"

#include <gtest/gtest.h>

namespace hanse::cli {
namespace {

TEST(FormatTable, AlignsColumnsAndRightAlignsNumbers) {
  std::string t = FormatTable({"SITE", "TASKS"}, {{"paris", "3"}, {"düsseldorf", "12"}}, {false, true});
  EXPECT_EQ(t,
            "SITE        TASKS\n"
            "----------  -----\n"
            "paris           3\n"
            "düsseldorf     12\n");
}

TEST(CsvRow, QuotesOnlyWhatNeedsIt) {
  EXPECT_EQ(CsvRow({"a", "b,c", "say \"hi\"", ""}), "a,\"b,c\",\"say \"\"hi\"\"\",\n");
}

TEST(FormatDuration, PicksAReadableUnit) {
  EXPECT_EQ(FormatDuration(0.84), "0.8s");
  EXPECT_EQ(FormatDuration(42.7), "42s");
  EXPECT_EQ(FormatDuration(185), "3m 05s");
  EXPECT_EQ(FormatDuration(7260), "2h 01m");
  EXPECT_EQ(FormatDuration(-3), "0.0s");
}

TEST(ProgressBar, FillsByFraction) {
  EXPECT_EQ(ProgressBar(1, 2, 10), "[#####-----]");
  EXPECT_EQ(ProgressBar(5, 2, 4), "[####]");
  EXPECT_EQ(ProgressBar(0, 0, 4), "[----]");
}

TEST(ParseTime, AcceptsDatesTimesAndUnixSeconds) {
  EXPECT_EQ(ParseTime("1970-01-02").value(), 86400);
  EXPECT_EQ(ParseTime("2026-11-25T13:05").value(), ParseTime("2026-11-25 13:05:00").value());
  EXPECT_EQ(ParseTime("2026-11-25T00:00:10").value() - ParseTime("2026-11-25").value(), 10);
  EXPECT_EQ(ParseTime("1795600000").value(), 1795600000);
}

TEST(ParseTime, RejectsGarbageNamingIt) {
  for (const char* bad : {"", "yesterday", "2026-13-01", "2026-11-25X10:00", "2026-11-25T10:00:00Z", "2026-11-25T25:00"}) {
    auto r = ParseTime(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
    EXPECT_NE(r.status().message().find(std::string("'") + bad + "'"), std::string::npos) << r.status().message();
  }
}

TEST(FormatUsage, EndsWithATotalRow) {
  proto::UsageReport rep;
  rep.currency = "EUR";
  rep.rows = {{"paris", 3, 0.5, 0.0, 1.25}, {"berlin", 2, 0.25, 0.0, 0.5}};
  std::string t = FormatUsage(rep, proto::UsageGroup::kSite);
  EXPECT_NE(t.find("SITE"), std::string::npos);
  EXPECT_NE(t.find("COST (EUR)"), std::string::npos);
  EXPECT_NE(t.find("total       5   45m 00s      0.0s     0.7500     0.0000        1.75"), std::string::npos) << t;
  proto::UsageReport tiny;
  tiny.rows = {{"job-1", 12, 0.000109, 0.0, 0.0001}};
  std::string small = FormatUsage(tiny, proto::UsageGroup::kJob);
  EXPECT_NE(small.find("0.0001\n"), std::string::npos) << "fractions of a cent stay visible:\n" << small;
  EXPECT_NE(small.find("0.4s"), std::string::npos) << small;
  std::string csv = UsageCsv(rep, proto::UsageGroup::kLead);
  EXPECT_EQ(csv.substr(0, csv.find('\n')), "lead,tasks,cpu_hours,gpu_hours,cost,currency");
  EXPECT_NE(csv.find("paris,3,0.500000,0.000000,1.2500,EUR\n"), std::string::npos) << csv;
}

TEST(FormatRound, ProgressAndCommitLines) {
  EXPECT_EQ(FormatRoundProgress(3, 10, 2, 3, 41.2), "round 3/10 [#############-------] 2/3 sites  41s");
  EXPECT_EQ(FormatRoundCommitted(3, 10, 0.42131, 0.84123, 45), "round 3/10 committed: loss 0.4213  accuracy 84.12%  (45s)");
}

}  // namespace
}  // namespace hanse::cli
