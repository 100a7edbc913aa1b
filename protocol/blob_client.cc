#include "protocol/blob_client.h"

#include <spdlog/spdlog.h>

namespace hanse::proto {
namespace {

using Clock = std::chrono::steady_clock;

Envelope Wrap(Message m, uint64_t in_reply_to = 0) {
  Envelope e;
  e.in_reply_to = in_reply_to;
  e.message = std::move(m);
  return e;
}

Status SendRequests(Client& client, const std::vector<BlobRequest>& requests) {
  for (const auto& r : requests) HANSE_RETURN_IF_ERROR(client.Send(Wrap(r)));
  return Status::Ok();
}

template <class SendFn>
Status Answer(BlobSender& sender, const BlobRequest& request, uint64_t in_reply_to, SendFn send) {
  Status st = sender.Serve(request, in_reply_to, [&](const Envelope& e) { return send(e); });
  if (st.ok() || st.code() == Code::kDisconnected || st.code() == Code::kOverloaded) return st;
  Reject reject;
  reject.code = st.code() == Code::kNotFound ? Reason::kBlobNotFound : Reason::kMalformed;
  reject.text = st.message();
  reject.ref = request.hash;
  return send(Wrap(std::move(reject), in_reply_to));
}

}  // namespace

Status PullBlob(Client& client, BlobReceiver& receiver, const std::string& hash, uint64_t size,
                const PullOptions& options, const std::function<void(const Envelope&)>& other) {
  HANSE_ASSIGN_OR_RETURN(auto first, receiver.Start(hash, size));
  if (receiver.IsComplete(hash)) return Status::Ok();
  HANSE_RETURN_IF_ERROR(SendRequests(client, first));
  int resumes = 0;
  auto last_progress = Clock::now();
  while (!receiver.IsComplete(hash)) {
    auto got = client.Receive(std::chrono::milliseconds(200));
    if (!got.ok()) {
      spdlog::warn("while pulling blob {}: {}", hash, got.status().ToString());
      continue;  // a bad frame from the peer; keep going
    }
    if (!got->has_value()) {
      if (Clock::now() - last_progress < options.idle_timeout) continue;
      if (resumes >= options.max_resumes) {
        receiver.Abandon(hash);
        return Status::DeadlineExceeded("blob " + hash + ": no data for " +
                                        std::to_string(options.idle_timeout.count()) + " ms after " +
                                        std::to_string(resumes) + " re-requests");
      }
      ++resumes;
      spdlog::info("blob {}: no chunk for {} ms; re-requesting from the bytes held", hash,
                   options.idle_timeout.count());
      std::vector<BlobRequest> again;
      for (auto& r : receiver.Resume()) {
        if (r.hash == hash) again.push_back(r);
      }
      HANSE_RETURN_IF_ERROR(SendRequests(client, again));
      last_progress = Clock::now();
      continue;
    }
    const Envelope& e = **got;
    if (const auto* chunk = std::get_if<BlobChunk>(&e.message); chunk && chunk->hash == hash) {
      Status grant_status;
      auto next = receiver.OnChunk(*chunk, [&](const std::vector<BlobRequest>& requests) {
        grant_status = SendRequests(client, requests);
      });
      HANSE_RETURN_IF_ERROR(grant_status);
      if (!next.ok()) {
        if (next.status().code() == Code::kCorruption) {
          (void)client.Send(Wrap(Reject{Reason::kBlobCorrupt, next.status().message(), hash}));
        }
        return next.status();
      }
      last_progress = Clock::now();
      HANSE_RETURN_IF_ERROR(SendRequests(client, *next));
      continue;
    }
    if (const auto* reject = std::get_if<Reject>(&e.message); reject && reject->ref == hash) {
      receiver.Abandon(hash);
      if (reject->code == Reason::kBlobNotFound) return Status::NotFound("peer has no blob " + hash + ": " + reject->text);
      return Status::FailedPrecondition(std::string("peer refused blob ") + hash + " (" + ReasonName(reject->code) +
                                        "): " + reject->text);
    }
    if (other) {
      other(e);
    } else {
      spdlog::debug("while pulling blob {}: ignored a {} message", hash, KindName(e.message));
    }
  }
  return Status::Ok();
}

Status AnswerBlobRequest(Client& client, BlobSender& sender, const BlobRequest& request, uint64_t in_reply_to) {
  return Answer(sender, request, in_reply_to, [&](const Envelope& e) { return client.Send(e); });
}

Status AnswerBlobRequest(Server& server, const PeerId& peer, BlobSender& sender, const BlobRequest& request,
                         uint64_t in_reply_to) {
  return Answer(sender, request, in_reply_to, [&](const Envelope& e) { return server.Send(peer, e); });
}

}  // namespace hanse::proto
