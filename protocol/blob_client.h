// Blocking helpers around BlobSender / BlobReceiver for simple loops (CLI,
// worker): pull one blob through a Client, answer BlobRequests from a store.
//
// Not thread-safe; call from the thread that owns the Client / Server.
#pragma once

#include <chrono>
#include <functional>
#include <string>

#include "core/status.h"
#include "protocol/blob_stream.h"
#include "protocol/transport.h"

namespace hanse::proto {

struct PullOptions {
  // Give up when no chunk arrived for this long (after `max_resumes` re-requests).
  std::chrono::milliseconds idle_timeout{10000};
  // Re-requests from the bytes held when a chunk is overdue (a reconnect lost it).
  int max_resumes = 3;
};

// Pulls `hash` (`size` bytes) from the peer behind `client` into the receiver's
// store; returns once it is committed (hash verified). Resumes from a partial
// blob left by an earlier attempt. Messages that are not about this blob are
// handed to `other` (when set) so the caller's protocol keeps flowing; a
// BlobRequest from the peer is among them.
// Errors: kNotFound (peer has no such blob: Reject kBlobNotFound), kCorruption
// (hash mismatch: the partial is discarded and the peer is told with Reject
// kBlobCorrupt), kDeadlineExceeded (no progress), kDisconnected, kIo.
Status PullBlob(Client& client, BlobReceiver& receiver, const std::string& hash, uint64_t size,
                const PullOptions& options = {}, const std::function<void(const Envelope&)>& other = {});

// Answers one BlobRequest from `sender`'s store: the chunks, or a Reject
// (kBlobNotFound / kMalformed) whose ref is the hash. `in_reply_to` is the
// request's message id. Returns the send error, if any.
Status AnswerBlobRequest(Client& client, BlobSender& sender, const BlobRequest& request, uint64_t in_reply_to);
Status AnswerBlobRequest(Server& server, const PeerId& peer, BlobSender& sender, const BlobRequest& request,
                         uint64_t in_reply_to);

}  // namespace hanse::proto
