// Resumable, credit-based blob transfer over the Envelope protocol.
//
// Pull model: the side that needs a blob (receiver) sends BlobRequest{hash,
// offset, credits}; the side that holds it (sender) answers each request with at
// most `credits` BlobChunks. The receiver keeps at most `window` chunks in flight,
// writes each chunk into a partial blob in the store as it arrives, and on
// reconnect resumes from the bytes it already holds. The SHA-256 is verified
// before the blob is admitted. Memory on both sides: O(window x chunk).
//
// A process pulling from, or serving to, many peers at once (the coordinator)
// shares one budget among all its transfers instead: BlobReceiver with
// StreamOptions::budget, and PacedSender. Its memory is then O(budget x chunk)
// whatever the number of peers.
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
  uint32_t window = 4;  // credits in flight per transfer
  // Receiver: credits in flight across all transfers; 0 = only `window` per
  // transfer (one peer at a time).
  uint32_t budget = 0;
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

// Serves BlobRequests from many peers with one budget of bytes in flight (sent
// but not yet reported `received` by the peer): requests are queued and served
// one chunk at a time, round-robin over transfers, while the budget allows.
// Peers are opaque keys (the caller's routing ids). Not thread-safe.
class PacedSender {
 public:
  using Clock = std::chrono::steady_clock;
  using Emit = std::function<Status(const std::string& peer, const Envelope& chunk)>;
  // `stall` releases the bytes of a transfer whose peer reported nothing for that
  // long (it is gone or stopped; the connection's heartbeat drops it soon).
  PacedSender(BlobStore& store, StreamOptions options, uint64_t budget_bytes, Clock::duration stall);
  ~PacedSender();
  // Queues a request. Errors (bad hash, unknown blob, offset beyond the end) are
  // for the caller to answer with a Reject; nothing is queued then.
  Status OnRequest(const std::string& peer, const BlobRequest& request, uint64_t in_reply_to, Clock::time_point now);
  // Sends queued chunks while the budget allows. A failed emit drops that peer's
  // transfers (it is gone) and is not an error of the pump.
  void Pump(const Emit& emit, Clock::time_point now);
  void Forget(const std::string& peer);  // peer gone: drop its transfers, release their bytes
  uint64_t in_flight() const;
  size_t transfers() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Tracks blobs this side is pulling.
class BlobReceiver {
 public:
  BlobReceiver(BlobStore& store, StreamOptions options);
  ~BlobReceiver();

  // Starts (or resumes from the partial blob's size) pulling `hash` of `size`
  // bytes. Returns the BlobRequests to send now. A blob already in the store
  // completes at once (IsComplete() is true, no requests). With a budget, every
  // call may return requests for any active transfer: route each by its hash.
  Result<std::vector<BlobRequest>> Start(const std::string& hash, uint64_t size);
  // Feeds a received chunk. Returns the next requests to send (credits given
  // back, and an acknowledgement; a late copy of a chunk of a blob already
  // complete gets just the acknowledgement). When the last byte arrives the hash is verified: kCorruption (the
  // partial is discarded) on mismatch.
  Result<std::vector<BlobRequest>> OnChunk(const BlobChunk& chunk);
  // Same, but hands the next requests to `grant` as soon as the chunk is checked,
  // before it is written and fsynced, so the sender works meanwhile; returns
  // what remains to send (nothing on success). Memory: (window + 1) x chunk.
  Result<std::vector<BlobRequest>> OnChunk(const BlobChunk& chunk,
                                           const std::function<void(const std::vector<BlobRequest>&)>& grant);
  // After a reconnect: requests that resume every active transfer from the bytes held.
  std::vector<BlobRequest> Resume();
  // Same for one transfer (others keep going).
  std::vector<BlobRequest> Resume(const std::string& hash);
  // Its peer is gone: gives back the transfer's credits to the others; Resume(hash) later.
  std::vector<BlobRequest> Pause(const std::string& hash);
  uint32_t in_flight() const;  // credits granted and not yet answered, all transfers
  bool IsActive(const std::string& hash) const;
  bool IsComplete(const std::string& hash) const;
  // Stops pulling; keeps the partial for a later resume. Returns the requests its
  // freed credits allow for other transfers (budget only).
  std::vector<BlobRequest> Abandon(const std::string& hash);
  // Requests that credits freed by a failed OnChunk/Start allow (budget only).
  std::vector<BlobRequest> TakeRequests();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace hanse::proto
