// Credit-based, resumable blob transfer (see blob_stream.h).
//
// Chunk offsets: every chunk but the last has exactly the sender's chunk size C,
// so a request {offset, credits} covers [offset, offset + credits*C). The
// receiver learns C from the first full chunk it gets; before that it has one
// outstanding request of `window` credits, and afterwards it grants one credit
// (one chunk) per chunk written, keeping at most `window` chunks in flight.
#include "protocol/blob_stream.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>

namespace hanse::proto {

// ---------------------------------------------------------------- sender

BlobSender::BlobSender(BlobStore& store, StreamOptions options) : store_(store), options_(options) {}

Status BlobSender::Serve(const BlobRequest& request, const std::function<Status(const BlobChunk&)>& emit) {
  return Serve(request, 0, [&](const Envelope& e) { return emit(std::get<BlobChunk>(e.message)); });
}

Status BlobSender::Serve(const BlobRequest& request, uint64_t in_reply_to,
                         const std::function<Status(const Envelope&)>& emit) {
  if (!IsValidHash(request.hash)) return Status::InvalidArgument("blob request: invalid hash");
  auto size = store_.Size(request.hash);
  if (!size.ok()) {
    if (size.status().code() == Code::kNotFound) return Status::NotFound("blob " + request.hash + " not found");
    return size.status();
  }
  if (request.offset > *size) {
    return Status::InvalidArgument("blob request for " + request.hash + " at offset " +
                                   std::to_string(request.offset) + " beyond its size " + std::to_string(*size));
  }
  // Never more than our own window in flight, whatever the peer asks for: the
  // socket's queue would otherwise hold credits x chunk bytes.
  uint32_t credits = std::min(request.credits, options_.window);
  if (!std::holds_alternative<BlobChunk>(scratch_.message)) scratch_.message = BlobChunk{};
  scratch_.in_reply_to = in_reply_to;
  auto& chunk = std::get<BlobChunk>(scratch_.message);  // one buffer for all requests
  chunk.hash = request.hash;
  chunk.total_size = *size;
  uint64_t offset = request.offset;
  for (uint32_t i = 0; i < credits; ++i) {
    uint64_t n = std::min<uint64_t>(options_.chunk_bytes, *size - offset);
    chunk.offset = offset;
    chunk.bytes.resize(n);
    if (n > 0) {
      auto got = store_.ReadAt(request.hash, offset, std::as_writable_bytes(std::span<char>(chunk.bytes.data(), n)));
      if (!got.ok()) return got.status();
      if (*got != n) return Status::Io("blob " + request.hash + " shrank while being read");
    }
    chunk.last = offset + n == *size;
    HANSE_RETURN_IF_ERROR(emit(scratch_));
    offset += n;
    if (chunk.last) break;
  }
  return Status::Ok();
}

// ---------------------------------------------------------------- receiver

struct BlobReceiver::Impl {
  struct Transfer {
    uint64_t size = 0;
    uint64_t received = 0;        // bytes written to the partial blob
    uint64_t requested_end = 0;   // end of everything asked for (valid once chunk_size is known)
    uint64_t window_start = 0;    // offset of the current unsized request
    uint64_t chunk_size = 0;      // learned from the first full chunk; 0 = unknown
  };
  BlobStore& store;
  StreamOptions options;
  std::map<std::string, Transfer> active;
  std::map<std::string, bool> complete;

  Impl(BlobStore& s, StreamOptions o) : store(s), options(o) {}

  BlobRequest FirstRequest(const std::string& hash, Transfer& t) {
    t.chunk_size = 0;
    t.window_start = t.received;
    return BlobRequest{hash, t.received, options.window};
  }

  // Verifies and admits a fully received blob.
  Status Commit(const std::string& hash) {
    Status st = store.CommitPartial(hash);
    active.erase(hash);
    if (!st.ok()) {
      spdlog::error("blob {}: {}", hash, st.ToString());
      return st;
    }
    complete[hash] = true;
    return Status::Ok();
  }
};

BlobReceiver::BlobReceiver(BlobStore& store, StreamOptions options)
    : impl_(std::make_unique<Impl>(store, options)) {}
BlobReceiver::~BlobReceiver() = default;

Result<std::vector<BlobRequest>> BlobReceiver::Start(const std::string& hash, uint64_t size) {
  if (!IsValidHash(hash)) return Status::InvalidArgument("cannot pull blob: invalid hash '" + hash + "'");
  auto& im = *impl_;
  if (im.store.Contains(hash)) {
    im.complete[hash] = true;
    im.active.erase(hash);
    return std::vector<BlobRequest>{};
  }
  im.complete.erase(hash);
  Impl::Transfer t;
  t.size = size;
  t.received = im.store.PartialSize(hash);
  if (t.received > size) {
    spdlog::warn("blob {}: partial of {} bytes is larger than the blob ({} bytes); starting over", hash, t.received,
                 size);
    HANSE_RETURN_IF_ERROR(im.store.DiscardPartial(hash));
    t.received = 0;
  }
  if (t.received > 0) spdlog::info("blob {}: resuming at byte {} of {}", hash, t.received, size);
  if (size == 0) {
    HANSE_RETURN_IF_ERROR(im.store.AppendPartial(hash, 0, {}));
    im.active[hash] = t;
    HANSE_RETURN_IF_ERROR(im.Commit(hash));
    return std::vector<BlobRequest>{};
  }
  if (t.received == size) {
    // Crashed after the last append but before the commit.
    im.active[hash] = t;
    HANSE_RETURN_IF_ERROR(im.Commit(hash));
    return std::vector<BlobRequest>{};
  }
  auto& slot = im.active[hash] = t;
  return std::vector<BlobRequest>{im.FirstRequest(hash, slot)};
}

Result<std::vector<BlobRequest>> BlobReceiver::OnChunk(const BlobChunk& chunk) { return OnChunk(chunk, {}); }

Result<std::vector<BlobRequest>> BlobReceiver::OnChunk(
    const BlobChunk& chunk, const std::function<void(const std::vector<BlobRequest>&)>& grant) {
  auto& im = *impl_;
  auto it = im.active.find(chunk.hash);
  if (it == im.active.end()) {
    return Status::FailedPrecondition("unexpected chunk of blob " + chunk.hash + ": not being pulled");
  }
  auto& t = it->second;
  if (chunk.total_size != t.size) {
    Status st = Status::Corruption("blob " + chunk.hash + ": sender says " + std::to_string(chunk.total_size) +
                                   " bytes, expected " + std::to_string(t.size));
    im.active.erase(it);
    return st;
  }
  if (chunk.offset != t.received) {
    // A duplicate or a chunk from before a Resume(): already handled or re-requested.
    spdlog::debug("blob {}: ignoring chunk at {} (holding {})", chunk.hash, chunk.offset, t.received);
    return std::vector<BlobRequest>{};
  }
  uint64_t n = chunk.bytes.size();
  bool ends = chunk.offset + n == t.size;
  if (chunk.last != ends || (n == 0 && !ends)) {
    Status st = Status::Corruption("blob " + chunk.hash + ": chunk at " + std::to_string(chunk.offset) + " of " +
                                   std::to_string(n) + " bytes is inconsistent with its last flag");
    im.active.erase(it);
    return st;
  }
  // One credit back per chunk taken off the wire.
  std::vector<BlobRequest> out;
  if (!ends) {
    if (t.chunk_size == 0) {
      // First full chunk of this request: now we know where the window ends.
      t.chunk_size = n;
      t.requested_end = std::min(t.size, t.window_start + uint64_t{im.options.window} * n);
    }
    if (t.requested_end < t.size) {
      out.push_back(BlobRequest{chunk.hash, t.requested_end, 1});
      t.requested_end = std::min(t.size, t.requested_end + t.chunk_size);
    }
  }
  if (grant && !out.empty()) {
    grant(out);
    out.clear();
  }
  Status st = im.store.AppendPartial(chunk.hash, chunk.offset,
                                     std::as_bytes(std::span<const char>(chunk.bytes.data(), chunk.bytes.size())));
  if (!st.ok()) {
    im.active.erase(chunk.hash);  // a later Start() resumes from what was fsynced
    return st;
  }
  t.received += n;
  if (ends) HANSE_RETURN_IF_ERROR(im.Commit(chunk.hash));
  return out;
}

std::vector<BlobRequest> BlobReceiver::Resume() {
  auto& im = *impl_;
  std::vector<BlobRequest> out;
  for (auto& [hash, t] : im.active) {
    t.received = im.store.PartialSize(hash);
    out.push_back(im.FirstRequest(hash, t));
  }
  return out;
}

bool BlobReceiver::IsActive(const std::string& hash) const { return impl_->active.count(hash) > 0; }

bool BlobReceiver::IsComplete(const std::string& hash) const {
  auto it = impl_->complete.find(hash);
  return it != impl_->complete.end() && it->second;
}

void BlobReceiver::Abandon(const std::string& hash) { impl_->active.erase(hash); }

}  // namespace hanse::proto
