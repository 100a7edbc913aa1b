// A small synchronous client for the coordinator's admin API, as the CLI uses it:
// connect (with a bounded wait for the CURVE handshake), request/reply matched by
// message id with a timeout, blob upload (answering the coordinator's
// BlobRequests from a local store) and blob download (pulling into it).
//
// Not thread-safe: one thread owns it, as it owns the socket inside.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "core/blob_store.h"
#include "core/config.h"
#include "core/status.h"
#include "protocol/messages.h"

namespace hanse::proto {
class Client;
}

namespace hanse::cli {

struct AdminClientOptions {
  std::chrono::milliseconds connect_timeout{5000};
  // Local blob store for uploads (submit) and downloads (fetch); resumable.
  std::filesystem::path blob_cache;
  uint64_t upload_chunk_bytes = 1ull << 20;  // below any coordinator's chunk limit
  uint32_t window = 4;
};

// The folder used for blob_cache when none is given: $XDG_CACHE_HOME/hanse,
// else $HOME/.cache/hanse, else <temp>/hanse-cache.
std::filesystem::path DefaultBlobCache();

// The three CURVE keys a client needs (Z85).
struct ClientKeys {
  std::string secret_key;
  std::string public_key;
  std::string server_public_key;
};
// Reads the keys the client config names. Errors name the file (kNotFound,
// kPermissionDenied for a secret key readable by others, kInvalidArgument).
Result<ClientKeys> LoadClientKeys(const ClientConfig& config);

class AdminClient {
 public:
  // Connects to `endpoint` and waits for the handshake. Every error is about the
  // connection: kDeadlineExceeded "cannot reach the coordinator at X within 5 s
  // (...)", kPermissionDenied when the coordinator refused our key.
  static Result<std::unique_ptr<AdminClient>> Connect(const std::string& endpoint, const ClientKeys& keys,
                                                      const AdminClientOptions& options);
  ~AdminClient();
  AdminClient(const AdminClient&) = delete;
  AdminClient& operator=(const AdminClient&) = delete;

  const std::string& endpoint() const { return endpoint_; }

  // Sends `request` and waits up to `timeout` for the reply to it. A Reject from the
  // coordinator is returned as a value (the caller decides what it means); transport
  // failures and timeouts are errors (kDeadlineExceeded, kDisconnected, kCorruption).
  // BlobRequests that arrive meanwhile are answered from the local store.
  Result<proto::Message> Call(proto::Message request, std::chrono::milliseconds timeout);

  // Sends without waiting; returns the message id.
  Result<uint64_t> Send(proto::Message message);
  // The next message that is not a heartbeat or a BlobRequest (those are handled
  // here). nullopt on timeout.
  Result<std::optional<proto::Envelope>> Next(std::chrono::milliseconds timeout);

  // Puts a file into the local store so that the coordinator can pull it. Returns
  // its hash and size.
  Result<std::pair<std::string, uint64_t>> Offer(const std::filesystem::path& file);
  // True once the last chunk of `hash` was sent to the coordinator.
  bool Uploaded(const std::string& hash) const { return uploaded_.count(hash) > 0; }
  // True once the coordinator asked for any part of `hash`.
  bool Requested(const std::string& hash) const { return requested_.count(hash) > 0; }
  // Keeps answering BlobRequests until every byte of `hash` was sent or nothing
  // came for `idle_timeout`.
  Status FinishUpload(const std::string& hash, std::chrono::milliseconds idle_timeout);

  // Pulls blob `hash` of `size` bytes from the coordinator into the local store,
  // resuming a partial download; returns its path there.
  // Errors: kDeadlineExceeded when no chunk came for `idle_timeout` (after
  // re-requests), kCorruption on a hash mismatch, kNotFound when the coordinator
  // has no such blob, kFailedPrecondition for another refusal.
  Result<std::filesystem::path> Pull(const std::string& hash, uint64_t size, std::chrono::milliseconds idle_timeout);

 private:
  AdminClient() = default;
  Status OpenStore();
  Status HandleBlobRequest(const proto::Envelope& env);

  std::string endpoint_;
  AdminClientOptions options_;
  std::unique_ptr<proto::Client> client_;
  std::unique_ptr<BlobStore> store_;
  uint64_t next_id_ = 1;
  std::set<std::string> uploaded_;
  std::set<std::string> requested_;
  // Messages that arrived during Call() but were not its reply; Next() returns them first.
  std::deque<proto::Envelope> pending_;
};

}  // namespace hanse::cli
