// Internal: the engine behind Aggregate, AggregateToFiles and AggregateFiles.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>

#include "aggregation/aggregate.h"

namespace hanse::agg {

struct EngineMode {
  // Read the tensor layout (and the tensors copied unchanged) from this file
  // instead of request.global_model (offline runs over models without a base).
  std::optional<std::filesystem::path> layout;
  bool global_is_zero = false;     // the "global" values are 0: new = rule(inputs)
  bool inputs_are_models = false;  // delta = input - global
  bool fail_on_reject = false;     // a rejected input fails the call before anything is written
};

using WriterFactory = std::function<Result<std::unique_ptr<BlobStore::Writer>>()>;

Result<AggregateResult> RunEngine(const AggregateRequest& request, const EngineMode& mode,
                                  const WriterFactory& make_model_writer, const WriterFactory& make_state_writer);

// Writes a file atomically (temp, fsync, rename, fsync dir); Finish returns its SHA-256.
Result<std::unique_ptr<BlobStore::Writer>> NewFileWriter(const std::filesystem::path& target);

}  // namespace hanse::agg
