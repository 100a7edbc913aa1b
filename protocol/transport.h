// CURVE-encrypted ZeroMQ transport: a ROUTER server (coordinator) and DEALER
// clients (workers, CLI). There is no plain-TCP mode.
//
// Threading: each Server / Client owns its socket(s); call all methods from the
// one thread that created it (the process's I/O loop). The ZAP handler runs on
// its own internal thread and shares only an immutable key table.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "protocol/messages.h"

namespace hanse::proto {

enum class Role : uint8_t { kSite = 0, kLead = 1, kAdmin = 2 };
const char* RoleName(Role r);

// A key the server admits, and who it is.
struct Principal {
  std::string name;
  Role role = Role::kSite;
  std::string public_key;   // Z85, 40 chars
};

struct TransportTuning {
  std::chrono::milliseconds heartbeat_interval{1000};
  std::chrono::milliseconds heartbeat_timeout{3000};
  std::chrono::milliseconds handshake_timeout{5000};
  std::chrono::milliseconds reconnect_min{100};
  std::chrono::milliseconds reconnect_max{5000};
  // ZMQ_MAXMSGSIZE is set to max_chunk_bytes + this; larger frames are dropped by libzmq.
  uint64_t max_chunk_bytes = 4ull << 20;
  uint64_t envelope_overhead = 1ull << 20;
  // Cap'n Proto nesting limit for received frames (the schema needs 6 levels).
  int decode_nesting = 16;
};

struct ServerOptions {
  std::string endpoint;        // "tcp://127.0.0.1:7700"; port 0 picks a free one
  std::string secret_key;      // Z85 CURVE secret key of the server
  std::string public_key;      // Z85 CURVE public key of the server
  std::vector<Principal> principals;
  TransportTuning tuning;
};

// Opaque per-connection id (the ROUTER routing id). Replies go to it.
struct PeerId {
  std::string routing_id;
  friend bool operator==(const PeerId&, const PeerId&) = default;
  friend auto operator<=>(const PeerId&, const PeerId&) = default;
};

struct Incoming {
  PeerId peer;
  Principal principal;          // from the authenticated key (ZMQ User-Id), never from the payload
  // The decoded envelope, or why the frame was refused (the server has already
  // answered the peer with a Reject carrying that reason).
  Result<Envelope> envelope = Status::Internal("unset");
};

// Connection-level events the server observes (from the socket monitor / heartbeat).
struct PeerEvent {
  enum class Kind : uint8_t { kDisconnected, kAuthRefused } kind;
  std::string detail;           // remote address, key
  // Set for kDisconnected when the connection had sent at least one message.
  PeerId peer;
  std::string principal;
};

class Server {
 public:
  // Starts the ZAP handler, then binds (fails closed: no bind without ZAP).
  static Result<std::unique_ptr<Server>> Bind(const ServerOptions& options);
  virtual ~Server() = default;

  // The endpoint actually bound (resolves port 0).
  virtual std::string endpoint() const = 0;
  // Waits up to `timeout` for one message. nullopt on timeout.
  virtual Result<std::optional<Incoming>> Receive(std::chrono::milliseconds timeout) = 0;
  // Sends; a peer that is gone gives kDisconnected (ROUTER_MANDATORY) and is logged.
  virtual Status Send(const PeerId& to, const Envelope& envelope) = 0;
  // Events since the last call (disconnects, refused keys).
  virtual std::vector<PeerEvent> TakeEvents() = 0;
};

struct ClientOptions {
  std::string endpoint;          // "tcp://127.0.0.1:7700"
  std::string server_public_key; // Z85
  std::string secret_key;        // Z85, our own
  std::string public_key;        // Z85, our own
  TransportTuning tuning;
};

class Client {
 public:
  // Connects; returns at once (ZeroMQ connects in the background and reconnects
  // with backoff). Use WaitConnected() to learn whether the CURVE handshake passed.
  static Result<std::unique_ptr<Client>> Connect(const ClientOptions& options);
  virtual ~Client() = default;

  // Waits for a completed CURVE handshake. kPermissionDenied when the server refused
  // our key or we have the wrong server key; kDeadlineExceeded when nothing answered.
  virtual Status WaitConnected(std::chrono::milliseconds timeout) = 0;
  virtual Status Send(const Envelope& envelope) = 0;
  // nullopt on timeout. A frame that does not decode gives a non-ok Result.
  virtual Result<std::optional<Envelope>> Receive(std::chrono::milliseconds timeout) = 0;
  // true while the handshake is done and the heartbeat is alive.
  virtual bool connected() const = 0;
};

}  // namespace hanse::proto
