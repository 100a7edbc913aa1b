#include "worker/nccl_group.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <string>

namespace hanse::train {

struct NcclGroup::Impl {
  std::vector<int> devices;
  std::vector<ncclComm_t> comms;
};

namespace {
Status NcclStatus(ncclResult_t r, const char* what) {
  if (r == ncclSuccess) return Status::Ok();
  return Status::Internal(std::string("nccl ") + what + ": " + ncclGetErrorString(r));
}
}  // namespace

Result<std::unique_ptr<NcclGroup>> NcclGroup::Create(const std::vector<int>& devices) {
  if (devices.empty()) return Status::InvalidArgument("nccl: no devices");
  std::unique_ptr<NcclGroup> g(new NcclGroup());
  g->impl_ = std::make_unique<Impl>();
  g->impl_->devices = devices;
  g->impl_->comms.resize(devices.size());
  HANSE_RETURN_IF_ERROR(NcclStatus(
      ncclCommInitAll(g->impl_->comms.data(), static_cast<int>(devices.size()), devices.data()), "init"));
  return g;
}

NcclGroup::~NcclGroup() {
  if (!impl_) return;
  for (ncclComm_t c : impl_->comms)
    if (c) ncclCommDestroy(c);
}

int NcclGroup::size() const { return static_cast<int>(impl_->devices.size()); }

Status NcclGroup::AllReduceSum(const std::vector<std::vector<Buffer>>& buffers, const std::vector<void*>& streams) {
  const size_t n = impl_->devices.size();
  if (buffers.size() != n || streams.size() != n)
    return Status::InvalidArgument("nccl: one buffer list and one stream per rank expected");
  for (size_t r = 1; r < n; ++r) {
    if (buffers[r].size() != buffers[0].size()) return Status::InvalidArgument("nccl: ranks differ in buffer count");
    for (size_t k = 0; k < buffers[r].size(); ++k)
      if (buffers[r][k].count != buffers[0][k].count)
        return Status::InvalidArgument("nccl: buffer " + std::to_string(k) + " differs in size across ranks");
  }
  HANSE_RETURN_IF_ERROR(NcclStatus(ncclGroupStart(), "group start"));
  ncclResult_t first_error = ncclSuccess;
  for (size_t r = 0; r < n; ++r) {
    for (const Buffer& b : buffers[r]) {
      ncclResult_t res = ncclAllReduce(b.data, b.data, b.count, ncclFloat32, ncclSum, impl_->comms[r],
                                       static_cast<cudaStream_t>(streams[r]));
      if (res != ncclSuccess && first_error == ncclSuccess) first_error = res;
    }
  }
  // ncclGroupEnd must run even after an error, to leave the group state clean.
  ncclResult_t end = ncclGroupEnd();
  HANSE_RETURN_IF_ERROR(NcclStatus(first_error, "all-reduce"));
  return NcclStatus(end, "group end");
}

}  // namespace hanse::train
