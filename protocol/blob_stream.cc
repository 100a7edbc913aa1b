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
#include <deque>
#include <map>
#include <utility>

namespace hanse::proto {

// ---------------------------------------------------------------- sender

namespace {

// The size of a blob a request may be served from: kNotFound when absent,
// kInvalidArgument when the request starts beyond its end.
Result<uint64_t> ServableSize(BlobStore& store, const BlobRequest& request) {
  auto size = store.Size(request.hash);
  if (!size.ok()) {
    if (size.status().code() == Code::kNotFound) return Status::NotFound("blob " + request.hash + " not found");
    return size.status();
  }
  if (request.offset > *size) {
    return Status::InvalidArgument("blob request for " + request.hash + " at offset " +
                                   std::to_string(request.offset) + " beyond its size " + std::to_string(*size));
  }
  return *size;
}

}  // namespace


BlobSender::BlobSender(BlobStore& store, StreamOptions options) : store_(store), options_(options) {}

Status BlobSender::Serve(const BlobRequest& request, const std::function<Status(const BlobChunk&)>& emit) {
  return Serve(request, 0, [&](const Envelope& e) { return emit(std::get<BlobChunk>(e.message)); });
}

Status BlobSender::Serve(const BlobRequest& request, uint64_t in_reply_to,
                         const std::function<Status(const Envelope&)>& emit) {
  if (!IsValidHash(request.hash)) return Status::InvalidArgument("blob request: invalid hash");
  if (request.credits == 0) return Status::Ok();  // an acknowledgement only
  HANSE_ASSIGN_OR_RETURN(uint64_t size, ServableSize(store_, request));
  // Never more than our own window in flight, whatever the peer asks for: the
  // socket's queue would otherwise hold credits x chunk bytes.
  uint32_t credits = std::min(request.credits, options_.window);
  if (!std::holds_alternative<BlobChunk>(scratch_.message)) scratch_.message = BlobChunk{};
  scratch_.in_reply_to = in_reply_to;
  auto& chunk = std::get<BlobChunk>(scratch_.message);  // one buffer for all requests
  chunk.hash = request.hash;
  chunk.total_size = size;
  uint64_t offset = request.offset;
  for (uint32_t i = 0; i < credits; ++i) {
    uint64_t n = std::min<uint64_t>(options_.chunk_bytes, size - offset);
    chunk.offset = offset;
    chunk.bytes.resize(n);
    if (n > 0) {
      auto got = store_.ReadAt(request.hash, offset, std::as_writable_bytes(std::span<char>(chunk.bytes.data(), n)));
      if (!got.ok()) return got.status();
      if (*got != n) return Status::Io("blob " + request.hash + " shrank while being read");
    }
    chunk.last = offset + n == size;
    HANSE_RETURN_IF_ERROR(emit(scratch_));
    offset += n;
    if (chunk.last) break;
  }
  return Status::Ok();
}

// ---------------------------------------------------------------- paced sender

struct PacedSender::Impl {
  using Key = std::pair<std::string, std::string>;  // peer, hash
  struct Range {
    uint64_t offset;
    uint32_t credits;
    uint64_t in_reply_to;
  };
  struct Transfer {
    uint64_t size = 0;
    uint64_t sent_end = 0;  // end of the bytes sent since the last reset
    uint64_t received = 0;  // what the peer last said it holds
    std::deque<Range> want;
    bool queued = false;
    bool stalled = false;  // silent while owing acknowledgements: not served until it speaks
    Clock::time_point last_heard{};
    uint64_t InFlight() const { return sent_end > received ? sent_end - received : 0; }
  };

  BlobStore& store;
  StreamOptions options;
  uint64_t budget;
  Clock::duration stall;
  std::map<Key, Transfer> transfers;
  std::deque<Key> ready;  // round-robin order of transfers with chunks to send
  uint64_t in_flight = 0;
  Envelope scratch;  // the one chunk being sent

  Impl(BlobStore& s, StreamOptions o, uint64_t b, Clock::duration st) : store(s), options(o), budget(b), stall(st) {}

  // Applies `change` to a transfer, keeping the total in flight exact.
  template <class F>
  void Change(Transfer& t, F&& change) {
    in_flight -= t.InFlight();
    change();
    in_flight += t.InFlight();
  }
  void MaybeQueue(const Key& key, Transfer& t) {
    if (!t.want.empty() && !t.queued) {
      ready.push_back(key);
      t.queued = true;
    }
  }
  void Erase(std::map<Key, Transfer>::iterator it) {
    in_flight -= it->second.InFlight();
    transfers.erase(it);
  }
};

PacedSender::PacedSender(BlobStore& store, StreamOptions options, uint64_t budget_bytes, Clock::duration stall)
    : impl_(std::make_unique<Impl>(store, options, std::max(budget_bytes, options.chunk_bytes), stall)) {}
PacedSender::~PacedSender() = default;

Status PacedSender::OnRequest(const std::string& peer, const BlobRequest& request, uint64_t in_reply_to,
                              Clock::time_point now) {
  auto& im = *impl_;
  if (!IsValidHash(request.hash)) return Status::InvalidArgument("blob request: invalid hash");
  Impl::Key key{peer, request.hash};
  auto it = im.transfers.find(key);
  if (it == im.transfers.end()) {
    if (request.credits == 0) return Status::Ok();  // acknowledges a transfer already done or forgotten
    HANSE_ASSIGN_OR_RETURN(uint64_t size, ServableSize(im.store, request));
    it = im.transfers.emplace(key, Impl::Transfer{}).first;
    it->second.size = size;
  }
  auto& t = it->second;
  if (request.offset > t.size) {
    return Status::InvalidArgument("blob request for " + request.hash + " at offset " +
                                   std::to_string(request.offset) + " beyond its size " + std::to_string(t.size));
  }
  t.last_heard = now;
  t.stalled = false;
  im.Change(t, [&] {
    if (request.offset == request.received) {
      // The receiver asks from what it holds (a start or a resume): anything
      // asked or sent before is void.
      t.want.clear();
      t.sent_end = request.offset;
    }
    t.received = std::min(request.received, t.size);
  });
  if (request.credits > 0 && request.offset < t.size) {
    t.want.push_back({request.offset, std::min(request.credits, im.options.window), in_reply_to});
  } else if (request.credits > 0) {
    t.want.push_back({request.offset, 1, in_reply_to});  // an empty blob: one empty last chunk
  }
  if (t.want.empty() && t.InFlight() == 0) {
    im.Erase(it);  // the peer holds everything it asked for
    return Status::Ok();
  }
  im.MaybeQueue(key, t);
  return Status::Ok();
}

void PacedSender::Pump(const Emit& emit, Clock::time_point now) {
  auto& im = *impl_;
  // Release what stalled peers hold, so one stopped peer cannot starve the rest.
  for (auto& [key, t] : im.transfers) {
    if (t.InFlight() > 0 && now - t.last_heard > im.stall) {
      spdlog::warn("blob {}: peer silent for {} ms with {} bytes unacknowledged; releasing them",
                   key.second.substr(0, 12),
                   std::chrono::duration_cast<std::chrono::milliseconds>(now - t.last_heard).count(), t.InFlight());
      im.Change(t, [&] { t.received = t.sent_end; });
      t.stalled = true;
    }
  }
  if (!std::holds_alternative<BlobChunk>(im.scratch.message)) im.scratch.message = BlobChunk{};
  auto& chunk = std::get<BlobChunk>(im.scratch.message);
  while (!im.ready.empty()) {
    if (im.in_flight > 0 && im.in_flight + im.options.chunk_bytes > im.budget) return;
    Impl::Key key = im.ready.front();
    im.ready.pop_front();
    auto it = im.transfers.find(key);
    if (it == im.transfers.end()) continue;
    auto& t = it->second;
    t.queued = false;
    if (t.want.empty()) continue;
    // A peer that went silent while owing acknowledgements gets nothing more
    // until it speaks (OnRequest queues it again).
    if (t.stalled) continue;
    auto& range = t.want.front();
    const uint64_t n = std::min<uint64_t>(im.options.chunk_bytes, t.size - range.offset);
    chunk.hash = key.second;
    chunk.total_size = t.size;
    chunk.offset = range.offset;
    chunk.bytes.resize(n);
    if (n > 0) {
      auto got = im.store.ReadAt(key.second, range.offset,
                                 std::as_writable_bytes(std::span<char>(chunk.bytes.data(), n)));
      if (!got.ok() || *got != n) {
        spdlog::warn("blob {}: cannot read {} bytes at {} for a peer: {}", key.second.substr(0, 12), n, range.offset,
                     got.ok() ? "blob shrank" : got.status().ToString());
        im.Erase(it);  // the peer re-requests after its idle timeout and gets a Reject then
        continue;
      }
    }
    chunk.last = range.offset + n == t.size;
    im.scratch.in_reply_to = range.in_reply_to;
    if (Status s = emit(key.first, im.scratch); !s.ok()) {
      spdlog::debug("blob {}: send failed ({}); dropping the peer's transfers", key.second.substr(0, 12),
                    s.ToString());
      Forget(key.first);
      continue;
    }
    im.Change(t, [&] { t.sent_end = std::max(t.sent_end, range.offset + n); });
    range.offset += n;
    if (chunk.last) {
      t.want.clear();
    } else if (--range.credits == 0) {
      t.want.pop_front();
    }
    im.MaybeQueue(key, t);
  }
}

void PacedSender::Forget(const std::string& peer) {
  auto& im = *impl_;
  for (auto it = im.transfers.lower_bound({peer, ""}); it != im.transfers.end() && it->first.first == peer;) {
    auto next = std::next(it);
    im.Erase(it);
    it = next;
  }
}

uint64_t PacedSender::in_flight() const { return impl_->in_flight; }
size_t PacedSender::transfers() const { return impl_->transfers.size(); }

// ---------------------------------------------------------------- receiver

struct BlobReceiver::Impl {
  struct Transfer {
    uint64_t size = 0;
    uint64_t received = 0;        // bytes written to the partial blob
    uint64_t requested_end = 0;   // end of everything asked for (valid once chunk_size is known)
    uint64_t window_start = 0;    // offset of the current unsized request
    uint32_t first_credits = 0;   // credits of that request
    uint64_t chunk_size = 0;      // learned from the first full chunk; 0 = unknown
    uint32_t outstanding = 0;     // credits granted and not yet answered by a chunk
    bool paused = false;
    bool queued = false;
  };
  BlobStore& store;
  StreamOptions options;
  std::map<std::string, Transfer> active;
  std::map<std::string, bool> complete;
  uint32_t in_flight = 0;             // sum of outstanding
  std::deque<std::string> ready;      // transfers that may want credits, round-robin
  std::vector<BlobRequest> pending;   // requests made, not yet handed out

  Impl(BlobStore& s, StreamOptions o) : store(s), options(o) {}

  uint32_t Available() const {
    if (options.budget == 0) return UINT32_MAX;
    return options.budget > in_flight ? options.budget - in_flight : 0;
  }
  bool Wants(const Transfer& t) const {
    if (t.paused || t.received >= t.size) return false;
    if (t.chunk_size == 0) return t.outstanding == 0;  // one unsized request at a time
    return t.requested_end < t.size && t.outstanding < options.window;
  }
  void Queue(const std::string& hash) {
    auto& t = active.at(hash);
    if (!t.queued && Wants(t)) {
      ready.push_back(hash);
      t.queued = true;
    }
  }
  void Release(Transfer& t) {
    in_flight -= t.outstanding;
    t.outstanding = 0;
  }
  void Drop(const std::string& hash) {
    auto it = active.find(hash);
    if (it == active.end()) return;
    Release(it->second);
    active.erase(it);
  }
  // Starts a transfer over from the bytes written (a start or a resume).
  void Reset(const std::string& hash, Transfer& t) {
    Release(t);
    t.chunk_size = 0;
    t.paused = false;
    Queue(hash);
  }
  void Grant(const std::string& hash, Transfer& t, uint32_t credits) {
    if (t.chunk_size == 0) {
      t.window_start = t.received;
      t.first_credits = credits;
      t.outstanding += credits;
      in_flight += credits;
      pending.push_back(BlobRequest{hash, t.received, credits, t.received});
      return;
    }
    const uint64_t left = (t.size - t.requested_end + t.chunk_size - 1) / t.chunk_size;
    credits = static_cast<uint32_t>(std::min<uint64_t>(credits, left));
    const uint64_t offset = t.requested_end;
    t.requested_end = std::min(t.size, offset + uint64_t{credits} * t.chunk_size);
    t.outstanding += credits;
    in_flight += credits;
    if (!pending.empty() && pending.back().hash == hash &&
        pending.back().offset + uint64_t{pending.back().credits} * t.chunk_size == offset) {
      pending.back().credits += credits;  // one message for consecutive grants
      return;
    }
    pending.push_back(BlobRequest{hash, offset, credits, t.received});
  }
  // Hands free credits out: with a budget one at a time round-robin, so every
  // transfer moves; without one, each transfer refills its own window.
  void Distribute() {
    // Ends: every grant takes a credit from the budget or fills a window.
    while (!ready.empty() && Available() > 0) {
      std::string hash = std::move(ready.front());
      ready.pop_front();
      auto it = active.find(hash);
      if (it == active.end()) continue;
      auto& t = it->second;
      t.queued = false;
      if (!Wants(t)) continue;
      const uint32_t credits = options.budget != 0 ? 1 : options.window - std::min(options.window, t.outstanding);
      Grant(hash, t, std::max<uint32_t>(credits, 1));
      Queue(hash);
    }
  }
  std::vector<BlobRequest> Take() {
    Distribute();
    return std::exchange(pending, {});
  }

  // Verifies and admits a fully received blob.
  Status Commit(const std::string& hash) {
    Status st = store.CommitPartial(hash);
    Drop(hash);
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
    im.Drop(hash);
    return im.Take();
  }
  im.complete.erase(hash);
  im.Drop(hash);
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
    return im.Take();
  }
  if (t.received == size) {
    // Crashed after the last append but before the commit.
    im.active[hash] = t;
    HANSE_RETURN_IF_ERROR(im.Commit(hash));
    return im.Take();
  }
  im.active[hash] = t;
  im.Queue(hash);
  return im.Take();
}

Result<std::vector<BlobRequest>> BlobReceiver::OnChunk(const BlobChunk& chunk) { return OnChunk(chunk, {}); }

Result<std::vector<BlobRequest>> BlobReceiver::OnChunk(
    const BlobChunk& chunk, const std::function<void(const std::vector<BlobRequest>&)>& grant) {
  auto& im = *impl_;
  auto it = im.active.find(chunk.hash);
  if (it == im.active.end()) {
    if (im.store.Contains(chunk.hash)) {
      // A resent chunk of a blob we hold: acknowledge all of it, so the sender
      // does not count it in flight.
      return std::vector<BlobRequest>{BlobRequest{chunk.hash, chunk.total_size, 0, chunk.total_size}};
    }
    return Status::FailedPrecondition("unexpected chunk of blob " + chunk.hash + ": not being pulled");
  }
  auto& t = it->second;
  if (chunk.total_size != t.size) {
    Status st = Status::Corruption("blob " + chunk.hash + ": sender says " + std::to_string(chunk.total_size) +
                                   " bytes, expected " + std::to_string(t.size));
    im.Drop(chunk.hash);
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
    im.Drop(chunk.hash);
    return st;
  }
  // One credit back per chunk taken off the wire.
  if (t.outstanding > 0) {
    --t.outstanding;
    --im.in_flight;
  }
  if (ends) {
    im.Release(t);
  } else if (t.chunk_size == 0) {
    // First full chunk of this request: now we know where the window ends.
    t.chunk_size = n;
    t.requested_end = std::min(t.size, t.window_start + uint64_t{t.first_credits} * n);
  }
  // Requests carry the bytes taken so far: the sender's count of what is in flight.
  const uint64_t taken = chunk.offset + n;
  const uint64_t written = t.received;
  t.received = taken;
  im.Queue(chunk.hash);
  std::vector<BlobRequest> out = im.Take();
  t.received = written;
  bool acknowledged = false;
  for (auto& r : out) {
    if (r.hash != chunk.hash) continue;
    r.received = taken;
    acknowledged = true;
  }
  if (!acknowledged) out.push_back(BlobRequest{chunk.hash, ends ? t.size : t.requested_end, 0, taken});
  if (grant) {
    grant(out);
    out.clear();
  }
  Status st = im.store.AppendPartial(chunk.hash, chunk.offset,
                                     std::as_bytes(std::span<const char>(chunk.bytes.data(), chunk.bytes.size())));
  if (!st.ok()) {
    im.Drop(chunk.hash);  // a later Start() resumes from what was fsynced
    return st;
  }
  t.received += n;
  if (ends) HANSE_RETURN_IF_ERROR(im.Commit(chunk.hash));
  return out;
}

std::vector<BlobRequest> BlobReceiver::Resume() {
  auto& im = *impl_;
  for (auto& [hash, t] : im.active) {
    t.received = im.store.PartialSize(hash);
    im.Reset(hash, t);
  }
  return im.Take();
}

std::vector<BlobRequest> BlobReceiver::Resume(const std::string& hash) {
  auto& im = *impl_;
  auto it = im.active.find(hash);
  if (it != im.active.end()) {
    it->second.received = im.store.PartialSize(hash);
    im.Reset(hash, it->second);
  }
  return im.Take();
}

std::vector<BlobRequest> BlobReceiver::Pause(const std::string& hash) {
  auto& im = *impl_;
  auto it = im.active.find(hash);
  if (it != im.active.end()) {
    im.Release(it->second);
    it->second.paused = true;
  }
  return im.Take();
}

uint32_t BlobReceiver::in_flight() const { return impl_->in_flight; }

bool BlobReceiver::IsActive(const std::string& hash) const { return impl_->active.count(hash) > 0; }

bool BlobReceiver::IsComplete(const std::string& hash) const {
  auto it = impl_->complete.find(hash);
  return it != impl_->complete.end() && it->second;
}

std::vector<BlobRequest> BlobReceiver::Abandon(const std::string& hash) {
  impl_->Drop(hash);
  return impl_->Take();
}

std::vector<BlobRequest> BlobReceiver::TakeRequests() { return impl_->Take(); }

}  // namespace hanse::proto
