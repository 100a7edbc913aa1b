// Dataset loaders: IDX (raw, gzip, Debian's Fashion-MNIST), CSV, split,
// partition (labels, Dirichlet) and caps, plus the bad-input matrix.
#include "worker/dataset.h"

#include <zlib.h>

#include <algorithm>
#include <map>
#include <set>

#include "test_util.h"

namespace hanse::site {
namespace {

using hanse::testing::FashionMnistConfig;
using hanse::testing::HaveFashionMnist;
using hanse::testing::TempDir;
using hanse::testing::WriteFile;

std::string Be32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8), static_cast<char>(v)};
}

// n images of rows x cols; pixel (i, j) = (i + j) % 256; label i % 10.
std::string IdxImages(uint32_t n, uint32_t rows = 4, uint32_t cols = 3) {
  std::string s = Be32(0x803) + Be32(n) + Be32(rows) + Be32(cols);
  for (uint32_t i = 0; i < n; ++i)
    for (uint32_t j = 0; j < rows * cols; ++j) s.push_back(static_cast<char>((i + j) % 256));
  return s;
}
std::string IdxLabels(uint32_t n) {
  std::string s = Be32(0x801) + Be32(n);
  for (uint32_t i = 0; i < n; ++i) s.push_back(static_cast<char>(i % 10));
  return s;
}

// Writes `images` and `labels` as dir/img and dir/lab, and loads them.
auto LoadRawIdx(const TempDir& dir, const std::string& images, const std::string& labels) {
  WriteFile(dir / "img", images);
  WriteFile(dir / "lab", labels);
  return LoadIdx(dir / "img", dir / "lab", nullptr);
}

void WriteGz(const std::filesystem::path& p, const std::string& bytes) {
  gzFile f = gzopen(p.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
  ASSERT_EQ(gzclose(f), Z_OK);
}

TEST(LoadIdx, ReadsDebianFashionMnistGzip) {
  if (!HaveFashionMnist()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  std::vector<int64_t> shape;
  const auto fashion = hanse::testing::FashionMnistDir();
  auto r = LoadIdx(fashion / "t10k-images-idx3-ubyte.gz", fashion / "t10k-labels-idx1-ubyte.gz", &shape);
  ASSERT_OK(r.status());
  EXPECT_EQ(r->size(), 10000u);
  EXPECT_EQ(shape, (std::vector<int64_t>{1, 28, 28}));
  ASSERT_EQ(r->features.size(), 10000u * 784u);
  std::map<int64_t, int> counts;
  for (auto l : r->labels) counts[l]++;
  ASSERT_EQ(counts.size(), 10u);  // the test set is balanced: 1000 per class
  for (auto [l, n] : counts) EXPECT_EQ(n, 1000) << "label " << l;
  auto [mn, mx] = std::minmax_element(r->features.begin(), r->features.end());
  EXPECT_EQ(*mn, 0.0f);
  EXPECT_EQ(*mx, 1.0f);
  EXPECT_EQ(r->labels[0], 9);  // first test image of Fashion-MNIST is an ankle boot
}

TEST(LoadDataset, FashionMnistWithSeparateTestFilesAndCaps) {
  if (!HaveFashionMnist()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  DatasetConfig c = FashionMnistConfig(1000, 500);
  auto d = LoadDataset(c);
  ASSERT_OK(d.status());
  EXPECT_EQ(d->train.size(), 1000u);
  EXPECT_EQ(d->test.size(), 500u);
  EXPECT_EQ(d->num_classes, 10);
  EXPECT_EQ(d->feature_count, 784);
  auto again = LoadDataset(c);
  ASSERT_OK(again.status());
  EXPECT_EQ(again->train.labels, d->train.labels);
  EXPECT_EQ(again->train.features, d->train.features);
}

// The demo's setup: three sites, one Dirichlet share each of the same files.
TEST(LoadDataset, FashionMnistDirichletSharesPartitionTrainAndTest) {
  if (!HaveFashionMnist()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  DatasetConfig c = FashionMnistConfig();
  c.partition.kind = PartitionConfig::Kind::kDirichlet;
  c.partition.alpha = 0.5;
  c.partition.seed = 2026;
  c.partition.num_shares = 3;
  uint64_t train = 0, test = 0;
  for (uint32_t share = 0; share < 3; ++share) {
    c.partition.share = share;
    auto d = LoadDataset(c);
    ASSERT_OK(d.status());
    EXPECT_GT(d->train.size(), 0u);
    EXPECT_EQ(d->num_classes, 10);
    train += d->train.size();
    test += d->test.size();
  }
  EXPECT_EQ(train, 60000u);
  EXPECT_EQ(test, 10000u);
}

TEST(LoadIdx, RawAndGzipGiveTheSameSamples) {
  TempDir dir;
  WriteFile(dir / "img", IdxImages(7));
  WriteFile(dir / "lab", IdxLabels(7));
  WriteGz(dir / "img.gz", IdxImages(7));
  WriteGz(dir / "lab.gz", IdxLabels(7));
  std::vector<int64_t> shape;
  auto raw = LoadIdx(dir / "img", dir / "lab", &shape);
  auto gz = LoadIdx(dir / "img.gz", dir / "lab.gz", nullptr);
  ASSERT_OK(raw.status());
  ASSERT_OK(gz.status());
  EXPECT_EQ(shape, (std::vector<int64_t>{1, 4, 3}));
  EXPECT_EQ(raw->features, gz->features);
  EXPECT_EQ(raw->labels, gz->labels);
  EXPECT_EQ(raw->labels[3], 3);
  EXPECT_FLOAT_EQ(raw->features[1 * 12 + 2], 3.0f / 255.0f);
}

TEST(LoadIdx, TruncatedFileNamesFileAndSizes) {
  TempDir dir;
  std::string img = IdxImages(5);
  auto r = LoadRawIdx(dir, img.substr(0, img.size() - 3), IdxLabels(5));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kCorruption);
  const std::string m = r.status().message();
  EXPECT_NE(m.find((dir / "img").string()), std::string::npos) << m;
  EXPECT_NE(m.find(std::to_string(img.size() - 3) + " bytes, expected " + std::to_string(img.size())),
            std::string::npos)
      << m;
}

TEST(LoadIdx, TruncatedGzipStreamIsAnError) {
  TempDir dir;
  WriteGz(dir / "img.gz", IdxImages(50));
  std::string gz = hanse::testing::ReadFile(dir / "img.gz");
  WriteFile(dir / "cut.gz", gz.substr(0, gz.size() / 2));
  WriteFile(dir / "lab", IdxLabels(50));
  auto r = LoadIdx(dir / "cut.gz", dir / "lab", nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kCorruption);
  EXPECT_NE(r.status().message().find("cut.gz"), std::string::npos) << r.status().ToString();
}

TEST(LoadIdx, TruncatedHeaderIsAnError) {
  TempDir dir;
  auto r = LoadRawIdx(dir, IdxImages(5).substr(0, 10), IdxLabels(5));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("truncated IDX header"), std::string::npos) << r.status().ToString();
}

TEST(LoadIdx, WrongMagicIsAnError) {
  TempDir dir;
  // Labels passed as images: magic 0x801 where 0x803 is expected.
  auto r = LoadRawIdx(dir, IdxLabels(5), IdxImages(5));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kCorruption);
  EXPECT_NE(r.status().message().find("wrong magic 0x00000801, expected 0x00000803"), std::string::npos)
      << r.status().ToString();
}

TEST(LoadIdx, TrailingBytesAreAnError) {
  TempDir dir;
  auto r = LoadRawIdx(dir, IdxImages(5) + "xx", IdxLabels(5));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("2 trailing bytes"), std::string::npos) << r.status().ToString();
}

TEST(LoadIdx, CountMismatchIsAnError) {
  TempDir dir;
  auto r = LoadRawIdx(dir, IdxImages(5), IdxLabels(6));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_NE(r.status().message().find("has 5 images"), std::string::npos) << r.status().ToString();
  EXPECT_NE(r.status().message().find("has 6 labels"), std::string::npos) << r.status().ToString();
}

TEST(LoadIdx, MissingFileIsNotFound) {
  TempDir dir;
  WriteFile(dir / "lab", IdxLabels(5));
  auto r = LoadIdx(dir / "nope.gz", dir / "lab", nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kNotFound);
  EXPECT_NE(r.status().message().find("nope.gz"), std::string::npos);
}

// CSV with an "id" feature equal to the row number, so tests can tell rows apart.
std::string Csv(int n, int classes) {
  std::string s = "id,x,label\n";
  for (int i = 0; i < n; ++i) s += std::to_string(i) + "," + std::to_string(i * 0.5) + "," + std::to_string(i % classes) + "\n";
  return s;
}

DatasetConfig CsvConfig(const std::filesystem::path& p) {
  DatasetConfig c;
  c.name = "table";
  c.format = "csv";
  c.path = p;
  c.label_column = "label";
  return c;
}

std::vector<int> Ids(const Split& s, int64_t fc) {
  std::vector<int> ids;
  for (size_t i = 0; i < s.size(); ++i) ids.push_back(static_cast<int>(s.features[i * static_cast<size_t>(fc)]));
  return ids;
}

TEST(LoadDataset, CsvFeaturesLabelsAndColumnSelection) {
  TempDir dir;
  WriteFile(dir / "t.csv", "a, b ,label,c\r\n1,2,0,3\r\n4,5e-1,2,6\r\n\r\n");
  auto c = CsvConfig(dir / "t.csv");
  auto d = LoadDataset(c);
  ASSERT_OK(d.status());
  EXPECT_EQ(d->sample_shape, (std::vector<int64_t>{3}));
  EXPECT_EQ(d->num_classes, 3);
  EXPECT_EQ(d->train.features, (std::vector<float>{1, 2, 3, 4, 0.5f, 6}));
  EXPECT_EQ(d->train.labels, (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(d->test.size(), 0u);
  c.feature_columns = {"c", "a"};
  auto d2 = LoadDataset(c);
  ASSERT_OK(d2.status());
  EXPECT_EQ(d2->train.features, (std::vector<float>{3, 1, 6, 4}));
}

TEST(LoadDataset, CsvBadRowNamesFileAndLine) {
  TempDir dir;
  WriteFile(dir / "t.csv", "x,label\n1,0\n2,1\nabc,0\n");
  auto r = LoadDataset(CsvConfig(dir / "t.csv"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_NE(r.status().message().find((dir / "t.csv").string() + ":4: column 'x'"), std::string::npos)
      << r.status().ToString();
}

TEST(LoadDataset, CsvWrongFieldCountAndBadLabel) {
  TempDir dir;
  WriteFile(dir / "a.csv", "x,label\n1,0\n2,1,3\n");
  auto r = LoadDataset(CsvConfig(dir / "a.csv"));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("a.csv:3: expected 2 fields, got 3"), std::string::npos)
      << r.status().ToString();
  WriteFile(dir / "b.csv", "x,label\n1,-1\n");
  r = LoadDataset(CsvConfig(dir / "b.csv"));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("b.csv:2: column 'label'"), std::string::npos) << r.status().ToString();
}

TEST(LoadDataset, CsvMissingLabelColumnAndMissingFile) {
  TempDir dir;
  WriteFile(dir / "t.csv", "x,y\n1,0\n");
  auto r = LoadDataset(CsvConfig(dir / "t.csv"));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("label column 'label' not in the header"), std::string::npos);
  r = LoadDataset(CsvConfig(dir / "missing.csv"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kNotFound);
}

TEST(LoadDataset, HoldoutSplitIsDisjointAndDeterministic) {
  TempDir dir;
  WriteFile(dir / "t.csv", Csv(1000, 4));
  auto c = CsvConfig(dir / "t.csv");
  c.test_fraction = 0.2;
  auto d = LoadDataset(c);
  ASSERT_OK(d.status());
  EXPECT_EQ(d->train.size(), 800u);
  EXPECT_EQ(d->test.size(), 200u);
  std::set<int> all;
  for (int id : Ids(d->train, 2)) all.insert(id);
  for (int id : Ids(d->test, 2)) all.insert(id);
  EXPECT_EQ(all.size(), 1000u);
  auto again = LoadDataset(c);
  ASSERT_OK(again.status());
  EXPECT_EQ(Ids(again->test, 2), Ids(d->test, 2));
}

TEST(LoadDataset, LabelPartitionKeepsOnlyListedLabels) {
  TempDir dir;
  WriteFile(dir / "t.csv", Csv(100, 5));
  auto c = CsvConfig(dir / "t.csv");
  c.test_fraction = 0.3;
  c.partition.kind = PartitionConfig::Kind::kLabels;
  c.partition.labels = {1, 3};
  auto d = LoadDataset(c);
  ASSERT_OK(d.status());
  EXPECT_EQ(d->num_classes, 5);  // of the file, not of the share: the model's output size
  EXPECT_EQ(d->train.size() + d->test.size(), 40u);
  for (auto l : d->train.labels) EXPECT_TRUE(l == 1 || l == 3);
  for (auto l : d->test.labels) EXPECT_TRUE(l == 1 || l == 3);
}

TEST(LoadDataset, DirichletSharesAreDisjointCoverEverythingAndAreNonIid) {
  TempDir dir;
  WriteFile(dir / "t.csv", Csv(3000, 10));
  auto c = CsvConfig(dir / "t.csv");
  c.test_fraction = 0.1;
  c.partition.kind = PartitionConfig::Kind::kDirichlet;
  c.partition.alpha = 0.3;
  c.partition.seed = 42;
  c.partition.num_shares = 3;
  std::multiset<int> train_ids, test_ids;
  std::vector<std::vector<int>> label_counts;
  for (uint32_t share = 0; share < 3; ++share) {
    c.partition.share = share;
    auto d = LoadDataset(c);
    ASSERT_OK(d.status());
    for (int id : Ids(d->train, 2)) train_ids.insert(id);
    for (int id : Ids(d->test, 2)) test_ids.insert(id);
    std::vector<int> counts(10);
    for (auto l : d->train.labels) counts[static_cast<size_t>(l)]++;
    label_counts.push_back(counts);
    auto again = LoadDataset(c);
    ASSERT_OK(again.status());
    EXPECT_EQ(Ids(again->train, 2), Ids(d->train, 2)) << "share " << share << " not deterministic";
  }
  EXPECT_EQ(train_ids.size(), 2700u);
  EXPECT_EQ(std::set<int>(train_ids.begin(), train_ids.end()).size(), 2700u);  // no row in two shares
  EXPECT_EQ(test_ids.size(), 300u);
  for (int id : test_ids) EXPECT_EQ(train_ids.count(id), 0u);
  // Non-IID: with alpha 0.3 the label mixes of the shares differ a lot.
  EXPECT_NE(label_counts[0], label_counts[1]);
  int max_gap = 0;
  for (size_t l = 0; l < 10; ++l) max_gap = std::max(max_gap, std::abs(label_counts[0][l] - label_counts[1][l]));
  EXPECT_GT(max_gap, 100);
  // Another seed gives another partition.
  c.partition.share = 0;
  c.partition.seed = 43;
  auto other = LoadDataset(c);
  ASSERT_OK(other.status());
  std::vector<int> counts(10);
  for (auto l : other->train.labels) counts[static_cast<size_t>(l)]++;
  EXPECT_NE(counts, label_counts[0]);
}

TEST(LoadDataset, DirichletRejectsBadShare) {
  TempDir dir;
  WriteFile(dir / "t.csv", Csv(10, 2));
  auto c = CsvConfig(dir / "t.csv");
  c.partition.kind = PartitionConfig::Kind::kDirichlet;
  c.partition.num_shares = 2;
  c.partition.share = 2;
  auto r = LoadDataset(c);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
}

TEST(LoadDataset, CapIsDeterministicSubset) {
  TempDir dir;
  WriteFile(dir / "t.csv", Csv(500, 3));
  auto c = CsvConfig(dir / "t.csv");
  c.max_train_examples = 50;
  auto a = LoadDataset(c);
  auto b = LoadDataset(c);
  ASSERT_OK(a.status());
  ASSERT_OK(b.status());
  EXPECT_EQ(a->train.size(), 50u);
  EXPECT_EQ(Ids(a->train, 2), Ids(b->train, 2));
  auto ids = Ids(a->train, 2);
  EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end()));
  EXPECT_GT(ids.back(), 100);  // a spread sample, not the first 50 rows
}

TEST(LoadDataset, UnknownFormatIsAnError) {
  DatasetConfig c;
  c.name = "x";
  c.format = "parquet";
  auto r = LoadDataset(c);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("unknown format 'parquet'"), std::string::npos);
}

}  // namespace
}  // namespace hanse::site
