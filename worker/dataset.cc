// Dataset loading: IDX (raw or gzip, via zlib) and CSV, then split, partition
// and cap. Selection happens on the raw rows (uint8 for IDX) so that a site
// holding a small share never materializes the whole file as floats.
#include "worker/dataset.h"

#include <zlib.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <numbers>
#include <numeric>
#include <random>
#include <sstream>

namespace hanse::site {
namespace {

// ---------------------------------------------------------------- raw tables

// Rows as read from the file, before selection. Exactly one of u8 / f32 is used.
struct RawTable {
  int64_t feature_count = 0;
  std::vector<uint8_t> u8;    // IDX pixels, scaled by 1/255 on gather
  std::vector<float> f32;     // CSV features
  std::vector<int64_t> labels;
  uint64_t size() const { return labels.size(); }
};

// Copies the selected rows (in the given order) into a Split.
Split Gather(const RawTable& t, const std::vector<uint64_t>& rows) {
  Split s;
  const auto fc = static_cast<size_t>(t.feature_count);
  s.features.resize(rows.size() * fc);
  s.labels.resize(rows.size());
  for (size_t k = 0; k < rows.size(); ++k) {
    const uint64_t r = rows[k];
    float* dst = s.features.data() + k * fc;
    if (!t.u8.empty()) {
      const uint8_t* src = t.u8.data() + r * fc;
      for (size_t j = 0; j < fc; ++j) dst[j] = static_cast<float>(src[j]) * (1.0f / 255.0f);
    } else {
      std::memcpy(dst, t.f32.data() + r * fc, fc * sizeof(float));
    }
    s.labels[k] = t.labels[r];
  }
  return s;
}

std::vector<uint64_t> AllRows(uint64_t n) {
  std::vector<uint64_t> v(n);
  std::iota(v.begin(), v.end(), uint64_t{0});
  return v;
}

// ---------------------------------------------------------------- seeded draws
// Own implementations rather than std::*_distribution: those are
// implementation-defined, and a partition must be the same on every site's
// machine (whatever its standard library) for the shares to be disjoint.

double Uniform01(std::mt19937_64& rng) {
  return static_cast<double>(rng() >> 11) * (1.0 / 9007199254740992.0);  // [0, 1)
}

double StdNormal(std::mt19937_64& rng) {
  // Box-Muller; 1 - u keeps the log argument in (0, 1].
  const double u1 = 1.0 - Uniform01(rng);
  const double u2 = Uniform01(rng);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

// Gamma(shape, 1) by Marsaglia-Tsang; shape < 1 via the boost U^(1/shape).
double Gamma(double shape, std::mt19937_64& rng) {
  if (shape < 1.0) {
    const double u = 1.0 - Uniform01(rng);
    return Gamma(shape + 1.0, rng) * std::pow(u, 1.0 / shape);
  }
  const double d = shape - 1.0 / 3.0;
  const double c = 1.0 / std::sqrt(9.0 * d);
  while (true) {
    double x, v;
    do {
      x = StdNormal(rng);
      v = 1.0 + c * x;
    } while (v <= 0.0);
    v = v * v * v;
    const double u = 1.0 - Uniform01(rng);
    if (std::log(u) < 0.5 * x * x + d - d * v + d * std::log(v)) return d * v;
  }
}

// Fisher-Yates with a plain modulo draw (bias ~n/2^64, irrelevant here).
void Shuffle(std::vector<uint64_t>& v, std::mt19937_64& rng) {
  for (size_t i = v.size(); i > 1; --i) {
    const size_t j = static_cast<size_t>(rng() % i);
    std::swap(v[i - 1], v[j]);
  }
}

uint64_t Mix(uint64_t a, uint64_t b) {
  // splitmix64 finalizer over a combined value: distinct streams per purpose.
  uint64_t z = a ^ (b + 0x9e3779b97f4a7c15ull + (a << 6) + (a >> 2));
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

constexpr uint64_t kHoldoutStream = 0x686f6c646f7574ull;   // "holdout"
constexpr uint64_t kDirichletStream = 0x6469726963686cull; // "dirichl"
constexpr uint64_t kCapStream = 0x636170ull;               // "cap"

// ---------------------------------------------------------------- partition

// Proportions per label over the shares, drawn once from the seed so train and
// test of a site get the same label mix.
std::vector<std::vector<double>> DirichletProportions(const PartitionConfig& p, int64_t num_classes) {
  std::mt19937_64 rng(Mix(p.seed, kDirichletStream));
  std::vector<std::vector<double>> props(static_cast<size_t>(num_classes));
  for (int64_t c = 0; c < num_classes; ++c) {
    auto& pc = props[static_cast<size_t>(c)];
    pc.resize(p.num_shares);
    double sum = 0;
    for (auto& x : pc) sum += (x = Gamma(p.alpha, rng));
    if (!(sum > 0) || !std::isfinite(sum)) {
      // All draws underflowed (tiny alpha): the whole label goes to one share.
      std::fill(pc.begin(), pc.end(), 0.0);
      pc[static_cast<size_t>(c) % p.num_shares] = 1.0;
    } else {
      for (auto& x : pc) x /= sum;
    }
  }
  return props;
}

// Rows of `t` (a subset `rows`) that belong to this site's share.
std::vector<uint64_t> Partition(const RawTable& t, const std::vector<uint64_t>& rows, const PartitionConfig& p,
                                int64_t num_classes, uint64_t stream) {
  using Kind = PartitionConfig::Kind;
  std::vector<uint64_t> out;
  if (p.kind == Kind::kNone) return rows;
  if (p.kind == Kind::kLabels) {
    for (uint64_t r : rows)
      if (std::find(p.labels.begin(), p.labels.end(), t.labels[r]) != p.labels.end()) out.push_back(r);
    return out;
  }
  const auto props = DirichletProportions(p, num_classes);
  std::vector<std::vector<uint64_t>> by_label(static_cast<size_t>(num_classes));
  for (uint64_t r : rows) by_label[static_cast<size_t>(t.labels[r])].push_back(r);
  std::mt19937_64 rng(Mix(Mix(p.seed, kDirichletStream), stream));
  for (int64_t c = 0; c < num_classes; ++c) {
    auto& idx = by_label[static_cast<size_t>(c)];
    Shuffle(idx, rng);
    const auto& pc = props[static_cast<size_t>(c)];
    const double n = static_cast<double>(idx.size());
    double cum = 0;
    uint64_t begin = 0;
    for (uint32_t k = 0; k < p.num_shares; ++k) {
      cum += pc[k];
      uint64_t end = k + 1 == p.num_shares ? idx.size() : static_cast<uint64_t>(std::llround(n * cum));
      end = std::clamp<uint64_t>(end, begin, idx.size());
      if (k == p.share) out.insert(out.end(), idx.begin() + begin, idx.begin() + end);
      begin = end;
    }
  }
  std::sort(out.begin(), out.end());  // back to file order: labels interleaved
  return out;
}

// Keeps `cap` rows chosen by a seeded draw (file order kept); 0 = all.
std::vector<uint64_t> Cap(std::vector<uint64_t> rows, uint64_t cap, uint64_t stream) {
  if (cap == 0 || rows.size() <= cap) return rows;
  std::mt19937_64 rng(Mix(kCapStream, stream));
  Shuffle(rows, rng);
  rows.resize(cap);
  std::sort(rows.begin(), rows.end());
  return rows;
}

// ---------------------------------------------------------------- IDX

Result<std::string> ReadMaybeGzip(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return Status::NotFound(path.string() + ": no such file");
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) return Status::Io(path.string() + ": cannot open: " + std::strerror(errno));
  gzbuffer(f, 1 << 17);
  std::string out;
  std::vector<char> buf(1 << 20);
  while (true) {
    const int n = gzread(f, buf.data(), static_cast<unsigned>(buf.size()));
    if (n < 0) {
      int err = 0;
      std::string msg = gzerror(f, &err);
      gzclose(f);
      return Status::Corruption(path.string() + ": gzip read error: " + msg);
    }
    if (n == 0) break;
    out.append(buf.data(), static_cast<size_t>(n));
  }
  int err = 0;
  const char* msg = gzerror(f, &err);
  // A gzip stream cut short ends with Z_BUF_ERROR ("unexpected end of file").
  std::string err_text = err != Z_OK && err != Z_STREAM_END ? msg : "";
  gzclose(f);
  if (!err_text.empty()) return Status::Corruption(path.string() + ": truncated or corrupt gzip: " + err_text);
  return out;
}

uint32_t BigEndian32(const std::string& s, size_t off) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data() + off);
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

// Parses an IDX ubyte file with `ndims` dimensions; returns dims, data offset.
Result<std::vector<uint32_t>> ParseIdxHeader(const std::string& bytes, const std::filesystem::path& path,
                                             uint32_t magic, int ndims) {
  const size_t header = 4 + 4 * static_cast<size_t>(ndims);
  if (bytes.size() < 4)
    return Status::Corruption(path.string() + ": truncated IDX: " + std::to_string(bytes.size()) +
                              " bytes, expected at least " + std::to_string(header));
  const uint32_t got = BigEndian32(bytes, 0);
  if (got != magic) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "wrong magic 0x%08x, expected 0x%08x", got, magic);
    return Status::Corruption(path.string() + ": " + buf);
  }
  if (bytes.size() < header)
    return Status::Corruption(path.string() + ": truncated IDX header: " + std::to_string(bytes.size()) +
                              " bytes, expected " + std::to_string(header));
  std::vector<uint32_t> dims(static_cast<size_t>(ndims));
  uint64_t expected = 1;
  for (int i = 0; i < ndims; ++i) {
    dims[static_cast<size_t>(i)] = BigEndian32(bytes, 4 + 4 * static_cast<size_t>(i));
    if (i > 0 && dims[static_cast<size_t>(i)] == 0)
      return Status::Corruption(path.string() + ": IDX dimension " + std::to_string(i) + " is 0");
    expected *= dims[static_cast<size_t>(i)];  // <= 2^96 would overflow; bounded below
    if (expected > (uint64_t{1} << 40))
      return Status::Corruption(path.string() + ": IDX dimensions too large");
  }
  expected += header;
  if (bytes.size() < expected)
    return Status::Corruption(path.string() + ": truncated IDX: " + std::to_string(bytes.size()) +
                              " bytes, expected " + std::to_string(expected));
  if (bytes.size() > expected)
    return Status::Corruption(path.string() + ": IDX has " + std::to_string(bytes.size() - expected) +
                              " trailing bytes after " + std::to_string(expected));
  return dims;
}

constexpr uint32_t kIdxImagesMagic = 0x00000803;
constexpr uint32_t kIdxLabelsMagic = 0x00000801;

Result<RawTable> LoadIdxRaw(const std::filesystem::path& images, const std::filesystem::path& labels,
                            std::vector<int64_t>* sample_shape) {
  HANSE_ASSIGN_OR_RETURN(std::string img, ReadMaybeGzip(images));
  HANSE_ASSIGN_OR_RETURN(auto idims, ParseIdxHeader(img, images, kIdxImagesMagic, 3));
  HANSE_ASSIGN_OR_RETURN(std::string lab, ReadMaybeGzip(labels));
  HANSE_ASSIGN_OR_RETURN(auto ldims, ParseIdxHeader(lab, labels, kIdxLabelsMagic, 1));
  if (idims[0] != ldims[0])
    return Status::InvalidArgument("count mismatch: " + images.string() + " has " + std::to_string(idims[0]) +
                                   " images, " + labels.string() + " has " + std::to_string(ldims[0]) + " labels");
  RawTable t;
  t.feature_count = int64_t{idims[1]} * idims[2];
  t.u8.assign(img.begin() + 16, img.end());
  img = std::string();
  t.labels.resize(ldims[0]);
  for (uint32_t i = 0; i < ldims[0]; ++i) t.labels[i] = static_cast<unsigned char>(lab[8 + i]);
  if (sample_shape) *sample_shape = {1, int64_t{idims[1]}, int64_t{idims[2]}};
  return t;
}

// ---------------------------------------------------------------- CSV

std::vector<std::string_view> SplitCsvLine(std::string_view line) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (true) {
    const size_t comma = line.find(',', start);
    std::string_view f = line.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
    while (!f.empty() && (f.front() == ' ' || f.front() == '\t')) f.remove_prefix(1);
    while (!f.empty() && (f.back() == ' ' || f.back() == '\t' || f.back() == '\r')) f.remove_suffix(1);
    if (f.size() >= 2 && f.front() == '"' && f.back() == '"') f = f.substr(1, f.size() - 2);
    out.push_back(f);
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return out;
}

Result<RawTable> LoadCsvRaw(const DatasetConfig& c) {
  const auto& path = c.path;
  HANSE_ASSIGN_OR_RETURN(std::string text, ReadMaybeGzip(path));
  std::istringstream in(text);
  std::string line;
  uint64_t line_no = 0;
  auto where = [&](uint64_t n) { return path.string() + ":" + std::to_string(n) + ": "; };
  // Header: first non-empty line.
  std::vector<std::string> header;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    for (auto f : SplitCsvLine(line)) header.emplace_back(f);
    break;
  }
  if (header.empty()) return Status::InvalidArgument(path.string() + ": empty CSV file (no header)");
  auto col = [&](const std::string& name) -> int64_t {
    for (size_t i = 0; i < header.size(); ++i)
      if (header[i] == name) return static_cast<int64_t>(i);
    return -1;
  };
  const std::string label_name = c.label_column.empty() ? std::string("label") : c.label_column;
  const int64_t label_col = col(label_name);
  if (label_col < 0)
    return Status::InvalidArgument(where(line_no) + "label column '" + label_name + "' not in the header");
  std::vector<size_t> feat_cols;
  if (c.feature_columns.empty()) {
    for (size_t i = 0; i < header.size(); ++i)
      if (static_cast<int64_t>(i) != label_col) feat_cols.push_back(i);
  } else {
    for (const auto& name : c.feature_columns) {
      const int64_t i = col(name);
      if (i < 0) return Status::InvalidArgument(where(line_no) + "feature column '" + name + "' not in the header");
      feat_cols.push_back(static_cast<size_t>(i));
    }
  }
  if (feat_cols.empty()) return Status::InvalidArgument(where(line_no) + "no feature columns");
  RawTable t;
  t.feature_count = static_cast<int64_t>(feat_cols.size());
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const auto fields = SplitCsvLine(line);
    if (fields.size() != header.size())
      return Status::InvalidArgument(where(line_no) + "expected " + std::to_string(header.size()) +
                                     " fields, got " + std::to_string(fields.size()));
    const auto lf = fields[static_cast<size_t>(label_col)];
    int64_t label = -1;
    auto [lp, lec] = std::from_chars(lf.data(), lf.data() + lf.size(), label);
    if (lec != std::errc() || lp != lf.data() + lf.size() || label < 0 || label > 100000)
      return Status::InvalidArgument(where(line_no) + "column '" + label_name +
                                     "': expected a class index >= 0, got '" + std::string(lf) + "'");
    for (size_t fcol : feat_cols) {
      const auto f = fields[fcol];
      float v = 0;
      auto [p, ec] = std::from_chars(f.data(), f.data() + f.size(), v);
      if (ec != std::errc() || p != f.data() + f.size() || !std::isfinite(v))
        return Status::InvalidArgument(where(line_no) + "column '" + header[fcol] + "': not a finite number: '" +
                                       std::string(f) + "'");
      t.f32.push_back(v);
    }
    t.labels.push_back(label);
  }
  if (t.labels.empty()) return Status::InvalidArgument(path.string() + ": no data rows after the header");
  return t;
}

int64_t NumClasses(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  int64_t m = -1;
  for (auto l : a) m = std::max(m, l);
  for (auto l : b) m = std::max(m, l);
  return m + 1;
}

Status CheckPartition(const DatasetConfig& c) {
  const auto& p = c.partition;
  if (p.kind != PartitionConfig::Kind::kDirichlet) return Status::Ok();
  if (!(p.alpha > 0) || !std::isfinite(p.alpha))
    return Status::InvalidArgument("dataset " + c.name + ": partition alpha must be > 0");
  if (p.num_shares == 0 || p.share >= p.num_shares)
    return Status::InvalidArgument("dataset " + c.name + ": partition share " + std::to_string(p.share) +
                                   " not in [0, " + std::to_string(p.num_shares) + ")");
  return Status::Ok();
}

}  // namespace

Result<Split> LoadIdx(const std::filesystem::path& images, const std::filesystem::path& labels,
                      std::vector<int64_t>* sample_shape) {
  HANSE_ASSIGN_OR_RETURN(RawTable t, LoadIdxRaw(images, labels, sample_shape));
  return Gather(t, AllRows(t.size()));
}

Result<Dataset> LoadDataset(const DatasetConfig& c) {
  HANSE_RETURN_IF_ERROR(CheckPartition(c));
  Dataset d;
  d.name = c.name;
  RawTable train_raw, test_raw;
  bool separate_test = false;
  if (c.format == "idx") {
    if (c.train_images.empty() || c.train_labels.empty())
      return Status::InvalidArgument("dataset " + c.name + ": idx needs train_images and train_labels");
    HANSE_ASSIGN_OR_RETURN(train_raw, LoadIdxRaw(c.train_images, c.train_labels, &d.sample_shape));
    if (!c.test_images.empty() || !c.test_labels.empty()) {
      if (c.test_images.empty() || c.test_labels.empty())
        return Status::InvalidArgument("dataset " + c.name + ": test_images and test_labels go together");
      std::vector<int64_t> test_shape;
      HANSE_ASSIGN_OR_RETURN(test_raw, LoadIdxRaw(c.test_images, c.test_labels, &test_shape));
      if (test_shape != d.sample_shape)
        return Status::InvalidArgument(c.test_images.string() + ": image size differs from " +
                                       c.train_images.string());
      separate_test = true;
    }
  } else if (c.format == "csv") {
    if (c.path.empty()) return Status::InvalidArgument("dataset " + c.name + ": csv needs path");
    HANSE_ASSIGN_OR_RETURN(train_raw, LoadCsvRaw(c));
    d.sample_shape = {train_raw.feature_count};
  } else {
    return Status::InvalidArgument("dataset " + c.name + ": unknown format '" + c.format + "' (idx, csv)");
  }
  d.feature_count = train_raw.feature_count;
  d.num_classes = NumClasses(train_raw.labels, test_raw.labels);

  std::vector<uint64_t> train_rows, test_rows;
  if (separate_test) {
    train_rows = AllRows(train_raw.size());
    test_rows = AllRows(test_raw.size());
  } else {
    if (c.test_fraction < 0 || c.test_fraction >= 1)
      return Status::InvalidArgument("dataset " + c.name + ": test_fraction must be in [0, 1)");
    // The holdout depends on the file only (fixed stream), so every site that
    // shares a file agrees on which rows are test rows.
    auto rows = AllRows(train_raw.size());
    std::mt19937_64 rng(Mix(kHoldoutStream, train_raw.size()));
    Shuffle(rows, rng);
    const auto n_test = static_cast<size_t>(std::llround(c.test_fraction * static_cast<double>(rows.size())));
    test_rows.assign(rows.begin(), rows.begin() + static_cast<std::ptrdiff_t>(n_test));
    train_rows.assign(rows.begin() + static_cast<std::ptrdiff_t>(n_test), rows.end());
    std::sort(test_rows.begin(), test_rows.end());
    std::sort(train_rows.begin(), train_rows.end());
  }
  const RawTable& test_src = separate_test ? test_raw : train_raw;
  train_rows = Partition(train_raw, train_rows, c.partition, d.num_classes, 1);
  test_rows = Partition(test_src, test_rows, c.partition, d.num_classes, 2);
  train_rows = Cap(std::move(train_rows), c.max_train_examples, 1);
  test_rows = Cap(std::move(test_rows), c.max_test_examples, 2);
  d.train = Gather(train_raw, train_rows);
  d.test = Gather(test_src, test_rows);
  return d;
}

}  // namespace hanse::site
