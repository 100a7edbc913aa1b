#include "cli/report.h"

#include <gtest/gtest.h>

#include "cli/format.h"
#include "test_util.h"

namespace hanse::cli {
namespace {

using hanse::testing::ReadFile;
using hanse::testing::TempDir;

size_t Count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + what.size())) ++n;
  return n;
}

size_t Lines(const std::string& text) { return Count(text, "\n"); }

proto::JobStatus Synthetic(uint32_t rounds = 3) {
  proto::JobStatus st;
  st.summary.job_id = "j-0001";
  st.summary.name = "fashion <mnist> & co";
  st.summary.lead = "alice";
  st.summary.state = proto::JobState::kSucceeded;
  st.summary.rounds_done = rounds;
  st.summary.rounds_total = rounds;
  st.summary.created_unix = 1795600000;
  st.strategy = "fedavg";
  st.architecture = "mlp";
  st.dataset = "fashion-mnist";
  for (uint32_t r = 1; r <= rounds; ++r) {
    proto::RoundInfo ri;
    ri.round = r;
    ri.state = "committed";
    ri.duration_seconds = 10.0 + r;
    ri.expected = 2;
    ri.answered = 2;
    ri.eval_loss = 1.0 / r;
    ri.eval_accuracy = 0.6 + 0.1 * r;
    ri.eval_examples = 2000;
    ri.model_hash = std::string(64, static_cast<char>('a' + r));
    for (const char* site : {"paris", "lyon, france"}) {
      proto::SiteRoundInfo s;
      s.site = site;
      s.state = "evaluated";
      s.examples = 1000 * r;
      s.train_loss = 1.5 / r;
      s.train_accuracy = 0.5 + 0.1 * r;
      s.eval_loss = 1.1 / r;
      s.eval_accuracy = 0.55 + 0.1 * r;
      s.eval_examples = 1000;
      s.seconds = 2.5;
      ri.sites.push_back(s);
    }
    st.rounds.push_back(ri);
  }
  return st;
}

TEST(Report, CsvFilesHoldEveryRoundAndSite) {
  auto st = Synthetic(3);
  std::string rounds = RoundsCsv(st);
  EXPECT_EQ(Lines(rounds), 4u) << rounds;  // header + 3 rounds
  EXPECT_EQ(rounds.substr(0, rounds.find('\n')),
            "round,state,expected_sites,answered_sites,duration_s,eval_loss,eval_accuracy,eval_examples,model_hash");
  EXPECT_NE(rounds.find("\n3,committed,2,2,13.000,0.333333,0.900000,2000,"), std::string::npos) << rounds;

  std::string sites = SitesCsv(st);
  EXPECT_EQ(Lines(sites), 7u) << sites;  // header + 3 x 2
  EXPECT_NE(sites.find("\"lyon, france\""), std::string::npos) << "a name with a comma is quoted";

  std::string usage = SiteUsageCsv(st);
  EXPECT_EQ(Lines(usage), 3u) << usage;
  // Sorted by name; examples summed over rounds (1000 + 2000 + 3000); seconds 3 x 2.5.
  EXPECT_NE(usage.find("\"lyon, france\",3,6000,7.500\n"), std::string::npos) << usage;
  EXPECT_NE(usage.find("paris,3,6000,7.500\n"), std::string::npos) << usage;
}

TEST(Report, SumBySiteCountsOnlyRoundsWithAnUpdate) {
  auto st = Synthetic(2);
  st.rounds[1].sites[0].examples = 0;  // paris dropped out of round 2
  st.rounds[1].sites[0].state = "dropped";
  auto totals = SumBySite(st);
  ASSERT_EQ(totals.size(), 2u);
  EXPECT_EQ(totals[1].site, "paris");
  EXPECT_EQ(totals[1].rounds, 1u);
  EXPECT_EQ(totals[1].examples, 1000u);
}

TEST(Report, WritesPageCsvAndGnuplotSvgs) {
  TempDir dir;
  auto files = WriteReport(Synthetic(3), dir / "out");
  ASSERT_TRUE(files.ok()) << files.status().ToString();
  EXPECT_TRUE(files->warning.empty()) << files->warning;
  ASSERT_EQ(files->svg.size(), 4u);  // accuracy, loss, participation, usage
  for (const auto& svg : files->svg) {
    std::string text = ReadFile(svg);
    EXPECT_NE(text.find("<svg"), std::string::npos) << svg;
    EXPECT_NE(text.find("gnuplot"), std::string::npos) << svg << " was not drawn by gnuplot";
  }
  ASSERT_EQ(files->csv.size(), 3u);
  for (const auto& c : files->csv) EXPECT_TRUE(std::filesystem::exists(c)) << c;

  std::string html = ReadFile(files->html);
  EXPECT_EQ(files->html, dir / "out" / "report.html");
  EXPECT_EQ(Count(html, "src=\"data:image/svg+xml;base64,"), 4u) << "plots are inlined";
  EXPECT_EQ(Count(html, "src=\"http"), 0u) << "self-contained: nothing fetched from elsewhere";
  EXPECT_NE(html.find("fashion &lt;mnist&gt; &amp; co"), std::string::npos) << "names are escaped";
  EXPECT_EQ(html.find("<mnist>"), std::string::npos);
  EXPECT_NE(html.find("90.00%"), std::string::npos) << "final accuracy is shown";
  EXPECT_NE(html.find("href=\"rounds.csv\""), std::string::npos);
}

TEST(Report, WithoutGnuplotWritesThePageAndSaysWhy) {
  TempDir dir;
  ReportOptions options;
  options.gnuplot = (dir / "no-such-gnuplot").string();
  auto files = WriteReport(Synthetic(2), dir / "out", options);
  ASSERT_TRUE(files.ok()) << files.status().ToString();
  EXPECT_TRUE(files->svg.empty());
  EXPECT_NE(files->warning.find("no-such-gnuplot"), std::string::npos) << files->warning;
  std::string html = ReadFile(files->html);
  EXPECT_EQ(Count(html, "data:image/svg+xml"), 0u);
  EXPECT_NE(html.find("plots omitted"), std::string::npos);
  EXPECT_EQ(Lines(ReadFile(dir / "out" / "rounds.csv")), 3u);
}

TEST(Report, FailingJobWithoutRoundsStillGetsAPage) {
  TempDir dir;
  proto::JobStatus st = Synthetic(0);
  st.summary.state = proto::JobState::kFailed;
  st.summary.reason = "min_sites not met before the deadline";
  auto files = WriteReport(st, dir.path());
  ASSERT_TRUE(files.ok()) << files.status().ToString();
  EXPECT_TRUE(files->svg.empty());
  std::string html = ReadFile(files->html);
  EXPECT_NE(html.find("min_sites not met"), std::string::npos);
  EXPECT_EQ(Lines(ReadFile(dir / "rounds.csv")), 1u);
}

TEST(Report, RoundsWithoutEvaluationLeaveTheCellsEmpty) {
  auto st = Synthetic(2);
  st.rounds[0].eval_examples = 0;
  for (auto& s : st.rounds[0].sites) s.eval_examples = 0;
  std::string rounds = RoundsCsv(st);
  EXPECT_NE(rounds.find("\n1,committed,2,2,11.000,,,0,"), std::string::npos) << rounds;
  TempDir dir;
  auto files = WriteReport(st, dir.path());
  ASSERT_TRUE(files.ok()) << files.status().ToString();
  EXPECT_EQ(files->svg.size(), 4u) << files->warning;
}

TEST(Report, UnwritableFolderIsAnIoErrorNamingIt) {
  TempDir dir;
  hanse::testing::WriteFile(dir / "file", "x");
  auto files = WriteReport(Synthetic(1), dir / "file" / "sub");
  ASSERT_FALSE(files.ok());
  EXPECT_NE(files.status().message().find("file/sub"), std::string::npos) << files.status().ToString();
}

}  // namespace
}  // namespace hanse::cli
