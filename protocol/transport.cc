// CURVE transport over ZeroMQ: ROUTER server with a ZAP handler, DEALER clients.
//
// Why a ZAP handler: libzmq 4.3.4 admits any CURVE client key when no handler
// listens on inproc://zeromq.zap.01, so the handler is bound before the server
// socket (fail closed) and admits only the configured keys; the User-Id it
// returns (the key's Z85 text) comes back as metadata on every message, and the
// principal is looked up from it, never from anything the peer says.
#include "protocol/transport.h"

#include <spdlog/spdlog.h>
#include <zmq.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <zmq.hpp>

#include "protocol/codec.h"

namespace hanse::proto {

const char* RoleName(Role r) {
  switch (r) {
    case Role::kSite: return "site";
    case Role::kLead: return "lead";
    case Role::kAdmin: return "admin";
  }
  return "unknown";
}

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr const char* kZapEndpoint = "inproc://zeromq.zap.01";

std::string ZmqError(const char* what) { return std::string(what) + ": " + zmq_strerror(zmq_errno()); }

// 32 raw bytes of a Z85 key, or empty when it is not a valid key.
std::string DecodeZ85Key(const std::string& z85) {
  if (z85.size() != 40) return {};
  uint8_t raw[32];
  if (!zmq_z85_decode(raw, z85.c_str())) return {};
  return std::string(reinterpret_cast<const char*>(raw), 32);
}
std::string EncodeZ85Key(const std::string& raw) {
  char z85[41] = {};
  if (raw.size() != 32 || !zmq_z85_encode(z85, reinterpret_cast<const uint8_t*>(raw.data()), 32)) return "<invalid>";
  return z85;
}

PeerEvent Event(PeerEvent::Kind kind, std::string detail) {
  PeerEvent e{kind, std::move(detail), {}, {}};
  return e;
}

// Buffers of frames libzmq has finished sending, kept for the next frames: a
// chunk frame is MiBs, and fresh pages cost ~13 us each on first touch. Shared
// with libzmq's I/O thread (which returns buffers), hence the lock. Holds at most
// kKeep buffers, so it never exceeds what was in flight at once.
class FramePool {
 public:
  std::string Take() {
    std::lock_guard lock(mu_);
    if (free_.empty()) return {};
    std::string s = std::move(free_.back());
    free_.pop_back();
    return s;
  }
  void Give(std::string s) {
    std::lock_guard lock(mu_);
    if (free_.size() < kKeep && s.capacity() >= kMinBytes) free_.push_back(std::move(s));
  }

 private:
  static constexpr size_t kKeep = 4;
  static constexpr size_t kMinBytes = 64 << 10;
  std::mutex mu_;
  std::vector<std::string> free_;  // guarded by mu_
};

struct PooledFrame {
  std::shared_ptr<FramePool> pool;  // keeps the pool alive until libzmq is done
  std::string bytes;
};

// Encodes into a pooled buffer and gives it to libzmq without copying; libzmq
// hands it back through the callback once sent (or dropped).
void EncodeInto(zmq_msg_t* msg, const std::shared_ptr<FramePool>& pool, const Envelope& envelope) {
  auto frame = std::make_unique<PooledFrame>(PooledFrame{pool, pool->Take()});
  EncodeTo(envelope, frame->bytes);
  zmq_msg_init_data(
      msg, frame->bytes.data(), frame->bytes.size(),
      [](void*, void* hint) {
        std::unique_ptr<PooledFrame> sent(static_cast<PooledFrame*>(hint));
        sent->pool->Give(std::move(sent->bytes));
      },
      frame.get());
  frame.release();  // now owned by the zmq message
}

int Ms(milliseconds m) { return static_cast<int>(std::max<int64_t>(0, m.count())); }

void SetCommonOptions(zmq::socket_t& s, const TransportTuning& t) {
  s.set(zmq::sockopt::linger, 200);
  s.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(t.max_chunk_bytes + t.envelope_overhead));
  s.set(zmq::sockopt::heartbeat_ivl, Ms(t.heartbeat_interval));
  s.set(zmq::sockopt::heartbeat_timeout, Ms(t.heartbeat_timeout));
  // TTL tells the peer when to drop us if our heartbeats stop (100 ms units in libzmq).
  s.set(zmq::sockopt::heartbeat_ttl, Ms(t.heartbeat_timeout));
  s.set(zmq::sockopt::handshake_ivl, Ms(t.handshake_timeout));
  s.set(zmq::sockopt::sndtimeo, Ms(t.handshake_timeout));
}

// A monitor event: libzmq 4.3 sends [uint16 event + uint32 value][endpoint].
struct MonitorEvent {
  uint16_t event = 0;
  uint32_t value = 0;
  std::string address;
};

// Reads one event without blocking; nullopt when none is queued.
std::optional<MonitorEvent> ReadMonitorEvent(zmq::socket_t& mon) {
  zmq::message_t head;
  auto r = mon.recv(head, zmq::recv_flags::dontwait);
  if (!r) return std::nullopt;
  MonitorEvent e;
  if (head.size() >= 6) {
    std::memcpy(&e.event, head.data(), 2);
    std::memcpy(&e.value, static_cast<const char*>(head.data()) + 2, 4);
  }
  if (head.more()) {
    zmq::message_t addr;
    if (mon.recv(addr, zmq::recv_flags::none)) e.address = addr.to_string();
  }
  return e;
}

const char* ProtocolErrorName(uint32_t v) {
  switch (v) {
    case ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: return "security mechanism mismatch (a peer without CURVE?)";
    case ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: return "cryptographic error (wrong server key?)";
    case ZMQ_PROTOCOL_ERROR_ZMTP_UNEXPECTED_COMMAND: return "unexpected command";
    case ZMQ_PROTOCOL_ERROR_ZMTP_MALFORMED_COMMAND_HELLO: return "malformed HELLO";
    case ZMQ_PROTOCOL_ERROR_ZMTP_MALFORMED_COMMAND_INITIATE: return "malformed INITIATE";
    case ZMQ_PROTOCOL_ERROR_ZMTP_INVALID_METADATA: return "invalid metadata";
    case ZMQ_PROTOCOL_ERROR_ZAP_UNSPECIFIED: return "ZAP error";
    default: return "protocol error";
  }
}

// Polls the given sockets, retrying on EINTR. Returns false on a real error.
bool Poll(zmq_pollitem_t* items, int n, milliseconds timeout) {
  auto end = Clock::now() + timeout;
  while (true) {
    auto left = std::chrono::duration_cast<milliseconds>(end - Clock::now());
    int rc = zmq_poll(items, n, std::max<long>(0, left.count()));
    if (rc >= 0) return true;
    if (zmq_errno() != EINTR) return false;
  }
}

// ---------------------------------------------------------------- ZAP handler

// Answers ZAP requests on its own thread. Shares only an immutable key table
// (built before the thread starts) and a locked event list with the owner.
class ZapHandler {
 public:
  ZapHandler(zmq::context_t& ctx, std::map<std::string, std::string> raw_to_z85)
      : ctx_(ctx), keys_(std::move(raw_to_z85)) {}
  ~ZapHandler() { Stop(); }

  // Binds in the caller's thread so that the bind happens before the server binds.
  Status Start() {
    try {
      rep_ = zmq::socket_t(ctx_, zmq::socket_type::rep);
      rep_.set(zmq::sockopt::linger, 0);
      rep_.bind(kZapEndpoint);
      ctl_endpoint_ = "inproc://hanse-zap-ctl-" + std::to_string(reinterpret_cast<uintptr_t>(this));
      ctl_ = zmq::socket_t(ctx_, zmq::socket_type::pair);
      ctl_.set(zmq::sockopt::linger, 0);
      ctl_.bind(ctl_endpoint_);
    } catch (const zmq::error_t& e) {
      return Status::Internal(std::string("cannot start the ZAP handler on ") + kZapEndpoint + ": " + e.what());
    }
    thread_ = std::thread([this] { Loop(); });
    return Status::Ok();
  }

  void Stop() {
    if (!thread_.joinable()) return;
    try {
      zmq::socket_t stop(ctx_, zmq::socket_type::pair);
      stop.set(zmq::sockopt::linger, 0);
      stop.connect(ctl_endpoint_);
      stop.send(zmq::str_buffer("stop"), zmq::send_flags::none);
      thread_.join();
    } catch (const zmq::error_t& e) {
      spdlog::error("ZAP handler: stop failed: {}", e.what());
      if (thread_.joinable()) thread_.detach();
    }
  }

  std::vector<PeerEvent> TakeEvents() {
    std::lock_guard lock(mu_);
    return std::exchange(events_, {});
  }

 private:
  void Loop() {
    try {
      while (true) {
        zmq_pollitem_t items[] = {{rep_.handle(), 0, ZMQ_POLLIN, 0}, {ctl_.handle(), 0, ZMQ_POLLIN, 0}};
        if (!Poll(items, 2, milliseconds(3600 * 1000))) {
          spdlog::error("ZAP handler: {}", ZmqError("poll"));
          break;
        }
        if (items[1].revents & ZMQ_POLLIN) break;
        if (items[0].revents & ZMQ_POLLIN) Answer();
      }
    } catch (const zmq::error_t& e) {
      spdlog::error("ZAP handler stopped: {}", e.what());
    }
    rep_.close();
    ctl_.close();
  }

  void Answer() {
    std::vector<zmq::message_t> req;
    while (true) {
      zmq::message_t m;
      if (!rep_.recv(m, zmq::recv_flags::none)) return;
      bool more = m.more();
      req.push_back(std::move(m));
      if (!more) break;
    }
    // [version, request id, domain, address, routing id, mechanism, credentials...]
    std::string request_id = req.size() > 1 ? req[1].to_string() : "";
    std::string address = req.size() > 3 ? req[3].to_string() : "?";
    std::string mechanism = req.size() > 5 ? req[5].to_string() : "";
    std::string status = "400", text = "key not admitted", user_id;
    if (req.size() < 7 || req[0].to_string() != "1.0" || mechanism != "CURVE" || req[6].size() != 32) {
      text = "unsupported ZAP request";
      spdlog::warn("refused connection from {}: mechanism '{}' is not CURVE", address, mechanism);
      Record(Event(PeerEvent::Kind::kAuthRefused, "mechanism " + mechanism + " from " + address));
    } else {
      std::string raw = req[6].to_string();
      auto it = keys_.find(raw);
      if (it != keys_.end()) {
        status = "200";
        text = "OK";
        user_id = it->second;
      } else {
        std::string z85 = EncodeZ85Key(raw);
        spdlog::warn("refused CURVE key {} from {}: not in the configured principals", z85, address);
        Record(Event(PeerEvent::Kind::kAuthRefused, "key " + z85 + " from " + address));
      }
    }
    rep_.send(zmq::str_buffer("1.0"), zmq::send_flags::sndmore);
    rep_.send(zmq::buffer(request_id), zmq::send_flags::sndmore);
    rep_.send(zmq::buffer(status), zmq::send_flags::sndmore);
    rep_.send(zmq::buffer(text), zmq::send_flags::sndmore);
    rep_.send(zmq::buffer(user_id), zmq::send_flags::sndmore);
    rep_.send(zmq::message_t(), zmq::send_flags::none);
  }

  void Record(PeerEvent e) {
    std::lock_guard lock(mu_);
    if (events_.size() < 10000) events_.push_back(std::move(e));  // bounded against floods
  }

  zmq::context_t& ctx_;
  const std::map<std::string, std::string> keys_;  // raw 32-byte key -> Z85 text
  zmq::socket_t rep_;
  zmq::socket_t ctl_;
  std::string ctl_endpoint_;
  std::thread thread_;
  std::mutex mu_;
  std::vector<PeerEvent> events_;  // guarded by mu_
};

// ---------------------------------------------------------------- server

class ServerImpl final : public Server {
 public:
  static Result<std::unique_ptr<Server>> Make(const ServerOptions& options) {
    if (DecodeZ85Key(options.secret_key).empty()) return Status::InvalidArgument("server secret key is not a Z85 CURVE key");
    std::map<std::string, std::string> raw_to_z85;
    std::map<std::string, Principal> by_key;
    for (const auto& p : options.principals) {
      std::string raw = DecodeZ85Key(p.public_key);
      if (raw.empty()) return Status::InvalidArgument("principal " + p.name + ": public key is not a Z85 CURVE key");
      if (by_key.count(p.public_key)) {
        return Status::InvalidArgument("principals " + by_key[p.public_key].name + " and " + p.name +
                                       " share one public key");
      }
      raw_to_z85[raw] = p.public_key;
      by_key[p.public_key] = p;
    }
    auto s = std::unique_ptr<ServerImpl>(new ServerImpl(options, std::move(by_key)));
    s->zap_ = std::make_unique<ZapHandler>(s->ctx_, std::move(raw_to_z85));
    // Fail closed: without a running ZAP handler we never bind.
    HANSE_RETURN_IF_ERROR(s->zap_->Start());
    try {
      s->router_ = zmq::socket_t(s->ctx_, zmq::socket_type::router);
      SetCommonOptions(s->router_, options.tuning);
      s->router_.set(zmq::sockopt::curve_server, true);
      s->router_.set(zmq::sockopt::curve_secretkey, options.secret_key);
      s->router_.set(zmq::sockopt::zap_domain, "hanse");
      s->router_.set(zmq::sockopt::router_mandatory, true);
      std::string mon = "inproc://hanse-server-mon-" + std::to_string(reinterpret_cast<uintptr_t>(s.get()));
      if (zmq_socket_monitor(s->router_.handle(), mon.c_str(),
                             ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                                 ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) != 0) {
        return Status::Internal(ZmqError("zmq_socket_monitor"));
      }
      s->monitor_ = zmq::socket_t(s->ctx_, zmq::socket_type::pair);
      s->monitor_.set(zmq::sockopt::linger, 0);
      s->monitor_.connect(mon);
      std::string endpoint = options.endpoint;
      // libzmq spells "any free port" as '*'.
      if (endpoint.size() > 2 && endpoint.compare(endpoint.size() - 2, 2, ":0") == 0) {
        endpoint.replace(endpoint.size() - 1, 1, "*");
      }
      s->router_.bind(endpoint);
      s->endpoint_ = s->router_.get(zmq::sockopt::last_endpoint);
    } catch (const zmq::error_t& e) {
      return Status::InvalidArgument("cannot bind " + options.endpoint + ": " + e.what());
    }
    spdlog::info("listening on {} (CURVE, {} admitted keys)", s->endpoint_, options.principals.size());
    return std::unique_ptr<Server>(std::move(s));
  }

  ~ServerImpl() override {
    if (router_) zmq_socket_monitor(router_.handle(), nullptr, 0);
    monitor_.close();
    router_.close();
    if (zap_) zap_->Stop();
  }

  std::string endpoint() const override { return endpoint_; }

  Result<std::optional<Incoming>> Receive(milliseconds timeout) override {
    auto end = Clock::now() + timeout;
    while (true) {
      DrainMonitor();
      auto left = std::chrono::duration_cast<milliseconds>(end - Clock::now());
      zmq_pollitem_t items[] = {{router_.handle(), 0, ZMQ_POLLIN, 0}, {monitor_.handle(), 0, ZMQ_POLLIN, 0}};
      if (!Poll(items, 2, std::max(left, milliseconds(0)))) return Status::Internal(ZmqError("poll"));
      if (items[0].revents & ZMQ_POLLIN) {
        auto in = ReadOne();
        if (in) return std::optional<Incoming>(std::move(*in));
        // dropped (logged); keep waiting, but a flood must not stretch the timeout
      }
      if (Clock::now() >= end) return std::optional<Incoming>();
    }
  }

  Status Send(const PeerId& to, const Envelope& envelope) override {
    return SendRaw(to, envelope, KindName(envelope.message));
  }

  std::vector<PeerEvent> TakeEvents() override {
    DrainMonitor();
    auto zap = zap_->TakeEvents();
    for (auto& e : zap) events_.push_back(std::move(e));
    return std::exchange(events_, {});
  }

 private:
  ServerImpl(const ServerOptions& o, std::map<std::string, Principal> by_key)
      : options_(o), principals_(std::move(by_key)) {}

  Status SendRaw(const PeerId& to, const Envelope& envelope, const char* kind) {
    zmq_msg_t id;
    zmq_msg_init_size(&id, to.routing_id.size());
    std::memcpy(zmq_msg_data(&id), to.routing_id.data(), to.routing_id.size());
    if (zmq_msg_send(&id, router_.handle(), ZMQ_SNDMORE) < 0) {
      int err = zmq_errno();
      zmq_msg_close(&id);
      return SendFailed(to, kind, err);
    }
    zmq_msg_t body;
    EncodeInto(&body, pool_, envelope);
    if (zmq_msg_send(&body, router_.handle(), 0) < 0) {
      int err = zmq_errno();
      zmq_msg_close(&body);
      return SendFailed(to, kind, err);
    }
    return Status::Ok();
  }

  Status SendFailed(const PeerId& to, const char* kind, int err) {
    std::string who = Describe(to);
    spdlog::warn("send of {} to {} failed: {}", kind, who, zmq_strerror(err));
    if (err == EHOSTUNREACH) return Status::Disconnected("peer " + who + " is not connected");
    if (err == EAGAIN) return Status::Overloaded("peer " + who + " is not reading (send queue full)");
    return Status::Disconnected("send to " + who + ": " + zmq_strerror(err));
  }

  std::string Describe(const PeerId& p) const {
    auto it = peers_.find(p);
    std::string hex;
    static const char* kHex = "0123456789abcdef";
    for (unsigned char c : p.routing_id) {
      hex += kHex[c >> 4];
      hex += kHex[c & 15];
    }
    if (it != peers_.end()) return it->second.principal + " (" + hex + ")";
    return hex;
  }

  // Reads one multipart message; nullopt when it was dropped.
  std::optional<Incoming> ReadOne() {
    std::vector<zmq::message_t> parts;
    while (true) {
      zmq::message_t m;
      auto r = router_.recv(m, zmq::recv_flags::dontwait);
      if (!r) break;
      bool more = m.more();
      parts.push_back(std::move(m));
      if (!more) break;
    }
    if (parts.size() < 2) return std::nullopt;
    Incoming in;
    in.peer.routing_id = parts[0].to_string();
    zmq::message_t& payload = parts[1];
    // The principal comes from the key ZAP authenticated for this connection.
    const char* user_id = zmq_msg_gets(payload.handle(), "User-Id");
    auto it = user_id ? principals_.find(user_id) : principals_.end();
    if (it == principals_.end()) {
      // Cannot happen while ZAP admits only configured keys; drop, never trust.
      spdlog::error("dropped a message without an admitted User-Id from routing id of {} bytes",
                    in.peer.routing_id.size());
      return std::nullopt;
    }
    in.principal = it->second;
    int fd = zmq_msg_get(payload.handle(), ZMQ_SRCFD);
    auto& known = peers_[in.peer];
    known.principal = in.principal.name;
    if (fd >= 0 && known.fd != fd) {
      known.fd = fd;
      fd_to_peer_[fd] = in.peer;
    }
    if (parts.size() != 2) {
      in.envelope = Status::Corruption("message has " + std::to_string(parts.size() - 1) + " frames, expected 1");
    } else {
      DecodeLimits limits;
      limits.max_frame_bytes = options_.tuning.max_chunk_bytes + options_.tuning.envelope_overhead;
      limits.max_control_bytes = options_.tuning.envelope_overhead;
      limits.nesting = options_.tuning.decode_nesting;
      in.envelope = Decode(std::span<const std::byte>(static_cast<const std::byte*>(payload.data()), payload.size()),
                           limits);
    }
    if (!in.envelope.ok()) {
      const Status& st = in.envelope.status();
      Reject reject;
      reject.code = st.code() == Code::kFailedPrecondition ? Reason::kIncompatibleVersion : Reason::kMalformed;
      reject.text = st.message();
      spdlog::warn("refused a message from {}: {}", Describe(in.peer), st.ToString());
      Envelope answer;
      answer.message = std::move(reject);
      (void)Send(in.peer, answer);  // failure already logged
    }
    return in;
  }

  void DrainMonitor() {
    while (auto e = ReadMonitorEvent(monitor_)) {
      switch (e->event) {
        case ZMQ_EVENT_DISCONNECTED: {
          PeerEvent pe = Event(PeerEvent::Kind::kDisconnected, e->address);
          auto it = fd_to_peer_.find(static_cast<int>(e->value));
          if (it != fd_to_peer_.end()) {
            pe.peer = it->second;
            auto p = peers_.find(it->second);
            if (p != peers_.end()) {
              pe.principal = p->second.principal;
              pe.detail = p->second.principal + " disconnected";
              peers_.erase(p);
            }
            fd_to_peer_.erase(it);
          }
          spdlog::info("peer {} disconnected", pe.principal.empty() ? "(before any message)" : pe.principal);
          events_.push_back(std::move(pe));
          break;
        }
        case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
          spdlog::warn("refused a connection: CURVE handshake failed: {}", ProtocolErrorName(e->value));
          events_.push_back(Event(PeerEvent::Kind::kAuthRefused,
                                      std::string("handshake failed: ") + ProtocolErrorName(e->value)));
          break;
        case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
          // libzmq 4.3.4 reports a peer without CURVE (mechanism mismatch) this way.
          spdlog::warn("refused a connection: handshake failed ({}): a peer without CURVE, or not speaking ZMTP?",
                       zmq_strerror(static_cast<int>(e->value)));
          events_.push_back(Event(PeerEvent::Kind::kAuthRefused, "handshake failed (no CURVE?)"));
          break;
        case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
          // The ZAP handler logged the key and recorded the event.
          break;
        default:
          break;
      }
    }
    if (events_.size() > 10000) events_.erase(events_.begin(), events_.begin() + (events_.size() - 10000));
  }

  struct PeerState {
    std::string principal;
    int fd = -1;
  };

  ServerOptions options_;
  const std::map<std::string, Principal> principals_;  // Z85 key -> principal; immutable
  std::shared_ptr<FramePool> pool_ = std::make_shared<FramePool>();
  zmq::context_t ctx_{1};
  std::unique_ptr<ZapHandler> zap_;
  zmq::socket_t router_;
  zmq::socket_t monitor_;
  std::string endpoint_;
  std::map<PeerId, PeerState> peers_;
  std::map<int, PeerId> fd_to_peer_;
  std::vector<PeerEvent> events_;
};

// ---------------------------------------------------------------- client

class ClientImpl final : public Client {
 public:
  static Result<std::unique_ptr<Client>> Make(const ClientOptions& options) {
    if (DecodeZ85Key(options.server_public_key).empty()) {
      return Status::InvalidArgument("coordinator public key is not a Z85 CURVE key");
    }
    if (DecodeZ85Key(options.secret_key).empty() || DecodeZ85Key(options.public_key).empty()) {
      return Status::InvalidArgument("own key pair is not a pair of Z85 CURVE keys");
    }
    auto c = std::unique_ptr<ClientImpl>(new ClientImpl(options));
    try {
      c->dealer_ = zmq::socket_t(c->ctx_, zmq::socket_type::dealer);
      SetCommonOptions(c->dealer_, options.tuning);
      c->dealer_.set(zmq::sockopt::curve_serverkey, options.server_public_key);
      c->dealer_.set(zmq::sockopt::curve_publickey, options.public_key);
      c->dealer_.set(zmq::sockopt::curve_secretkey, options.secret_key);
      c->dealer_.set(zmq::sockopt::reconnect_ivl, Ms(options.tuning.reconnect_min));
      c->dealer_.set(zmq::sockopt::reconnect_ivl_max, Ms(options.tuning.reconnect_max));
      std::string mon = "inproc://hanse-client-mon-" + std::to_string(reinterpret_cast<uintptr_t>(c.get()));
      if (zmq_socket_monitor(c->dealer_.handle(), mon.c_str(),
                             ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_HANDSHAKE_SUCCEEDED |
                                 ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                                 ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) != 0) {
        return Status::Internal(ZmqError("zmq_socket_monitor"));
      }
      c->monitor_ = zmq::socket_t(c->ctx_, zmq::socket_type::pair);
      c->monitor_.set(zmq::sockopt::linger, 0);
      c->monitor_.connect(mon);
      c->dealer_.connect(options.endpoint);
    } catch (const zmq::error_t& e) {
      return Status::InvalidArgument("cannot connect to " + options.endpoint + ": " + e.what());
    }
    return std::unique_ptr<Client>(std::move(c));
  }

  ~ClientImpl() override {
    if (dealer_) zmq_socket_monitor(dealer_.handle(), nullptr, 0);
    monitor_.close();
    dealer_.close();
  }

  Status WaitConnected(milliseconds timeout) override {
    auto end = Clock::now() + timeout;
    while (true) {
      DrainMonitor();
      if (connected_) return Status::Ok();
      if (auth_refused_) {
        return Status::PermissionDenied("the coordinator at " + options_.endpoint +
                                        " refused our key (is our public key in its config?)");
      }
      if (Clock::now() >= end) break;
      zmq_pollitem_t items[] = {{monitor_.handle(), 0, ZMQ_POLLIN, 0}};
      if (!Poll(items, 1, std::chrono::duration_cast<milliseconds>(end - Clock::now()))) {
        return Status::Internal(ZmqError("poll"));
      }
    }
    std::string why;
    if (tcp_connects_ == 0) {
      why = "no TCP connection could be made (is the coordinator running at this endpoint?)";
    } else if (protocol_failures_ > 0 || drops_before_handshake_ > 0) {
      why = "the TCP connection was made " + std::to_string(tcp_connects_) +
            " time(s) but the CURVE handshake never completed: wrong coordinator public key, or not a hanse "
            "coordinator" + (last_failure_.empty() ? "" : " (" + last_failure_ + ")");
    } else {
      why = "the TCP connection was made but the CURVE handshake did not complete: wrong coordinator public "
            "key or endpoint?";
    }
    return Status::DeadlineExceeded("no CURVE handshake with " + options_.endpoint + " within " +
                                    std::to_string(timeout.count()) + " ms: " + why);
  }

  Status Send(const Envelope& envelope) override {
    zmq_msg_t body;
    EncodeInto(&body, pool_, envelope);
    if (zmq_msg_send(&body, dealer_.handle(), 0) < 0) {
      int err = zmq_errno();
      zmq_msg_close(&body);
      spdlog::warn("send of {} to {} failed: {}", KindName(envelope.message), options_.endpoint, zmq_strerror(err));
      if (err == EAGAIN) return Status::Disconnected("not connected to " + options_.endpoint + " (send timed out)");
      return Status::Disconnected(std::string("send: ") + zmq_strerror(err));
    }
    return Status::Ok();
  }

  Result<std::optional<Envelope>> Receive(milliseconds timeout) override {
    auto end = Clock::now() + timeout;
    while (true) {
      DrainMonitor();
      auto left = std::chrono::duration_cast<milliseconds>(end - Clock::now());
      zmq_pollitem_t items[] = {{dealer_.handle(), 0, ZMQ_POLLIN, 0}, {monitor_.handle(), 0, ZMQ_POLLIN, 0}};
      if (!Poll(items, 2, std::max(left, milliseconds(0)))) return Status::Internal(ZmqError("poll"));
      if (items[0].revents & ZMQ_POLLIN) {
        zmq::message_t m;
        if (dealer_.recv(m, zmq::recv_flags::dontwait)) {
          if (m.more()) {
            // Our server sends one frame per message; drain the rest and refuse it.
            zmq::message_t rest;
            do {
              if (!dealer_.recv(rest, zmq::recv_flags::dontwait)) break;
            } while (rest.more());
            return Status::Corruption("unexpected multipart message from the coordinator");
          }
          DecodeLimits limits;
          limits.max_frame_bytes = options_.tuning.max_chunk_bytes + options_.tuning.envelope_overhead;
          limits.max_control_bytes = options_.tuning.envelope_overhead;
          limits.nesting = options_.tuning.decode_nesting;
      limits.nesting = options_.tuning.decode_nesting;
          auto env = Decode(std::span<const std::byte>(static_cast<const std::byte*>(m.data()), m.size()), limits);
          if (!env.ok()) return env.status();
          return std::optional<Envelope>(std::move(env).value());
        }
      }
      if (Clock::now() >= end) return std::optional<Envelope>();
    }
  }

  bool connected() const override { return connected_; }

 private:
  explicit ClientImpl(const ClientOptions& o) : options_(o) {}

  void DrainMonitor() {
    while (auto e = ReadMonitorEvent(monitor_)) {
      switch (e->event) {
        case ZMQ_EVENT_CONNECTED:
          ++tcp_connects_;
          break;
        case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
          if (!connected_) spdlog::info("connected to {} (CURVE)", options_.endpoint);
          connected_ = true;
          auth_refused_ = false;
          break;
        case ZMQ_EVENT_DISCONNECTED:
          if (connected_) spdlog::warn("disconnected from {}; reconnecting", options_.endpoint);
          else ++drops_before_handshake_;
          connected_ = false;
          break;
        case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
          spdlog::error("{} refused our key (ZAP status {})", options_.endpoint, e->value);
          auth_refused_ = true;
          connected_ = false;
          break;
        case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
          ++protocol_failures_;
          last_failure_ = ProtocolErrorName(e->value);
          spdlog::warn("handshake with {} failed: {}", options_.endpoint, last_failure_);
          connected_ = false;
          break;
        case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
          ++protocol_failures_;
          last_failure_ = zmq_strerror(static_cast<int>(e->value));
          connected_ = false;
          break;
        default:
          break;
      }
    }
  }

  ClientOptions options_;
  std::shared_ptr<FramePool> pool_ = std::make_shared<FramePool>();
  zmq::context_t ctx_{1};
  zmq::socket_t dealer_;
  zmq::socket_t monitor_;
  bool connected_ = false;
  bool auth_refused_ = false;
  int tcp_connects_ = 0;
  int drops_before_handshake_ = 0;
  int protocol_failures_ = 0;
  std::string last_failure_;
};

}  // namespace

Result<std::unique_ptr<Server>> Server::Bind(const ServerOptions& options) { return ServerImpl::Make(options); }
Result<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) { return ClientImpl::Make(options); }

}  // namespace hanse::proto
