// Resumable, credit-based blob transfer over the Envelope protocol.
//
// Pull model: the side that needs a blob (receiver) sends BlobRequest{hash,
// offset, credits}; the side that holds it (sender) answers each request with at
// most `credits` BlobChunks. The receiver keeps at most `window` chunks in flight,
// writes each chunk into a partial blob in the store as it arrives, and on
// reconnect resumes from the bytes it already holds. The SHA-256 is verified
// before the blob is admitted. Memory on both sides: O(window x chunk).
//
// Neither class owns a socket: they produce messages for the caller's I/O loop
// and consume the ones it receives. Not thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/blob_store.h"
#include "core/status.h"
#include "protocol/messages.h"

namespace hanse::proto {

struct StreamOptions {
  uint64_t chunk_bytes = 4ull << 20;
  uint32_t window = 4;  // credits in flight
};

// Answers BlobRequests from a blob store.
class BlobSender {
 public:
  BlobSender(BlobStore& store, StreamOptions options);
  // Chunks to send for this request (at most request.credits, each <= chunk_bytes),
  // or a Reject (kBlobNotFound) when the blob is absent. Reads the chunks from disk
  // one at a time through `emit`, so at most one chunk is held here.
  Status Serve(const BlobRequest& request, const std::function<Status(const BlobChunk&)>& emit);
  // Same, each chunk already wrapped in an Envelope (in_reply_to set) whose
  // buffer is reused from call to call: no per-chunk copy or allocation.
  Status Serve(const BlobRequest& request, uint64_t in_reply_to, const std::function<Status(const Envelope&)>& emit);

 private:
  BlobStore& store_;
  StreamOptions options_;
  Envelope scratch_;  // holds the one chunk being sent
};

// Tracks blobs this side is pulling.
class BlobReceiver {
 public:
  BlobReceiver(BlobStore& store, StreamOptions options);
  ~BlobReceiver();

  // Starts (or resumes from the partial blob's size) pulling `hash` of `size`
  // bytes. Returns the BlobRequests to send now. A blob already in the store
  // completes at once (IsComplete() is true, no requests).
  Result<std::vector<BlobRequest>> Start(const std::string& hash, uint64_t size);
  // Feeds a received chunk. Returns the next requests to send (credits given
  // back). When the last byte arrives the hash is verified: kCorruption (the
  // partial is discarded) on mismatch.
  Result<std::vector<BlobRequest>> OnChunk(const BlobChunk& chunk);
  // Same, but hands the next requests to `grant` as soon as the chunk is checked,
  // before it is written and fsynced, so the sender works meanwhile; returns
  // what remains to send (nothing on success). Memory: (window + 1) x chunk.
  Result<std::vector<BlobRequest>> OnChunk(const BlobChunk& chunk,
                                           const std::function<void(const std::vector<BlobRequest>&)>& grant);
  // After a reconnect: requests that resume every active transfer from the bytes held.
  std::vector<BlobRequest> Resume();
  bool IsActive(const std::string& hash) const;
  bool IsComplete(const std::string& hash) const;
  void Abandon(const std::string& hash);  // keeps the partial for a later resume

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace hanse::proto
