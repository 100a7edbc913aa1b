// Local datasets by logical name: IDX image files (raw or gzip) and CSV tables,
// split into train/test and optionally partitioned (label subset or Dirichlet
// over labels) so one file can serve several sites with non-IID shares.
// Samples stay in this process: nothing here is ever put on the wire.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/status.h"

namespace hanse::site {

// Dense float features (row-major, N x feature_count) and int64 labels.
struct Split {
  std::vector<float> features;
  std::vector<int64_t> labels;
  uint64_t size() const { return labels.size(); }
};

struct Dataset {
  std::string name;
  std::vector<int64_t> sample_shape;  // e.g. {1, 28, 28} for images, {F} for tables
  int64_t feature_count = 0;          // product of sample_shape
  int64_t num_classes = 0;
  Split train;
  Split test;
};

// Loads and partitions a dataset as configured. Errors name the file (and the
// line for CSV) and the problem: truncated IDX, wrong magic, count mismatch, ...
Result<Dataset> LoadDataset(const DatasetConfig& config);

// Lower-level loaders (used by LoadDataset and `hanse-worker evaluate`).
Result<Split> LoadIdx(const std::filesystem::path& images, const std::filesystem::path& labels,
                      std::vector<int64_t>* sample_shape);

}  // namespace hanse::site
