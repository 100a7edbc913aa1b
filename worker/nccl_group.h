// Gradient all-reduce across the GPUs of one site (data-parallel training),
// over NCCL. Torch-free: raw device pointers and CUDA streams (as void*), so it
// compiles wherever CUDA and NCCL headers exist, GPU or not.
// Built only with HANSE_WITH_NCCL (or the compile-check target).
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "core/status.h"

namespace hanse::train {

// One communicator per local GPU, created together (ncclCommInitAll); a single
// host thread drives all of them with grouped calls. Not thread-safe.
class NcclGroup {
 public:
  static Result<std::unique_ptr<NcclGroup>> Create(const std::vector<int>& devices);
  ~NcclGroup();
  NcclGroup(const NcclGroup&) = delete;
  NcclGroup& operator=(const NcclGroup&) = delete;

  struct Buffer {
    float* data = nullptr;  // device memory of that rank's GPU
    size_t count = 0;       // elements; the same for a given index on every rank
  };
  // In-place sum: after it, buffers[r][k] holds the sum over ranks of buffers[*][k].
  // streams[r] is the cudaStream_t of rank r; the reduce is ordered after the work
  // already queued there (no host sync). Errors: kInternal with NCCL's message.
  Status AllReduceSum(const std::vector<std::vector<Buffer>>& buffers, const std::vector<void*>& streams);
  int size() const;

 private:
  NcclGroup() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace hanse::train
