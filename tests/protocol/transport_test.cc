// Transport over real CURVE sockets on 127.0.0.1: who gets in, what they can
// claim, and how bad frames are refused while the server keeps serving.
#include "protocol/transport.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <zmq.h>

#include <mutex>
#include <sstream>
#include <zmq.hpp>

#include "protocol/codec.h"
#include "test_net.h"
#include "test_util.h"

namespace hanse::proto {
namespace {

using std::chrono::milliseconds;
using testing::kRssMeaningful;
using testing::WaitFor;
using Keys = testing::CurveKeys;
using testing::NewCurveKeys;

long RssKb() { return testing::ProcStatusKb("VmRSS:"); }

// Captures everything logged through spdlog's default logger during a test.
class LogCapture {
 public:
  LogCapture() {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out_);
    previous_ = spdlog::default_logger();
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("test", sink));
  }
  ~LogCapture() { spdlog::set_default_logger(previous_); }
  std::string Text() {
    spdlog::default_logger()->flush();
    return out_.str();
  }

 private:
  std::ostringstream out_;
  std::shared_ptr<spdlog::logger> previous_;
};

class TransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_keys_ = NewCurveKeys();
    site_ = NewCurveKeys();
    lead_ = NewCurveKeys();
    ServerOptions o = testing::CurveServerOptions(
        server_keys_, {Principal{"paris", Role::kSite, site_.pub}, Principal{"alice", Role::kLead, lead_.pub}});
    o.tuning.max_chunk_bytes = 64 << 10;
    o.tuning.envelope_overhead = 16 << 10;
    auto s = Server::Bind(o);
    ASSERT_OK(s.status());
    server_ = std::move(s).value();
  }

  std::unique_ptr<Client> Connect(const Keys& own, const std::string& server_pub) {
    ClientOptions o = testing::CurveClientOptions(server_->endpoint(), server_pub, own);
    o.tuning.max_chunk_bytes = 64 << 10;
    o.tuning.envelope_overhead = 16 << 10;
    auto c = Client::Connect(o);
    EXPECT_OK(c.status());
    return c.ok() ? std::move(c).value() : nullptr;
  }

  // Receives until a message arrives or `timeout` passes.
  std::optional<Incoming> ServerReceive(milliseconds timeout = milliseconds(3000)) {
    auto r = server_->Receive(timeout);
    EXPECT_OK(r.status());
    return r.ok() ? std::move(r).value() : std::nullopt;
  }

  Keys server_keys_, site_, lead_;
  std::unique_ptr<Server> server_;
};

Envelope Env(Message m, uint64_t id = 1) {
  Envelope e;
  e.message_id = id;
  e.message = std::move(m);
  return e;
}

// A raw DEALER, for what hanse's Client would never send.
struct RawPeer {
  RawPeer(const std::string& endpoint, const Keys* own, const std::string& server_pub,
          const std::string& routing_id = "") {
    s = zmq::socket_t(ctx, zmq::socket_type::dealer);
    s.set(zmq::sockopt::linger, 0);
    s.set(zmq::sockopt::reconnect_ivl, 100);
    if (!routing_id.empty()) s.set(zmq::sockopt::routing_id, routing_id);
    if (own) {
      s.set(zmq::sockopt::curve_serverkey, server_pub);
      s.set(zmq::sockopt::curve_publickey, own->pub);
      s.set(zmq::sockopt::curve_secretkey, own->sec);
    }
    s.connect(endpoint);
  }
  void Send(const std::string& bytes) { s.send(zmq::buffer(bytes), zmq::send_flags::dontwait); }
  std::optional<std::string> Receive(milliseconds timeout) {
    zmq_pollitem_t item{s.handle(), 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, timeout.count()) <= 0) return std::nullopt;
    zmq::message_t m;
    if (!s.recv(m, zmq::recv_flags::dontwait)) return std::nullopt;
    return m.to_string();
  }
  zmq::context_t ctx{1};
  zmq::socket_t s;
};

TEST_F(TransportTest, KnownKeyTalksAndPrincipalComesFromKey) {
  auto client = Connect(site_, server_keys_.pub);
  ASSERT_TRUE(client);
  ASSERT_OK(client->WaitConnected(milliseconds(5000)));
  EXPECT_TRUE(client->connected());
  ASSERT_OK(client->Send(Env(Hello{"0.1", {}, {}}, 11)));
  auto in = ServerReceive();
  ASSERT_TRUE(in.has_value());
  ASSERT_OK(in->envelope.status());
  EXPECT_EQ(in->principal.name, "paris");
  EXPECT_EQ(in->principal.role, Role::kSite);
  EXPECT_EQ(in->envelope->message_id, 11u);
  Envelope reply = Env(Welcome{"0.1", in->principal.name, 1000}, 1);
  reply.in_reply_to = 11;
  ASSERT_OK(server_->Send(in->peer, reply));
  auto got = client->Receive(milliseconds(3000));
  ASSERT_OK(got.status());
  ASSERT_TRUE(got->has_value());
  EXPECT_EQ((*got)->in_reply_to, 11u);
  EXPECT_EQ(std::get<Welcome>((*got)->message).principal, "paris");
}

TEST_F(TransportTest, UnknownKeyGetsNothingThroughAndIsLogged) {
  LogCapture log;
  Keys stranger = NewCurveKeys();
  auto client = Connect(stranger, server_keys_.pub);
  ASSERT_TRUE(client);
  Status st = client->WaitConnected(milliseconds(5000));
  EXPECT_EQ(st.code(), Code::kPermissionDenied) << st.ToString();
  (void)client->Send(Env(Hello{}));
  auto in = server_->Receive(milliseconds(1000));
  ASSERT_OK(in.status());
  EXPECT_FALSE(in->has_value());
  auto events = server_->TakeEvents();
  bool refused = false;
  for (const auto& e : events) {
    refused |= e.kind == PeerEvent::Kind::kAuthRefused && e.detail.find(stranger.pub) != std::string::npos;
  }
  EXPECT_TRUE(refused);
  EXPECT_NE(log.Text().find("refused CURVE key " + stranger.pub), std::string::npos) << log.Text();
}

TEST_F(TransportTest, ClientWithoutCurveGetsNothingThroughAndIsLogged) {
  LogCapture log;
  RawPeer plain(server_->endpoint(), nullptr, "");
  plain.Send(Encode(Env(Hello{})));
  auto in = server_->Receive(milliseconds(1500));
  ASSERT_OK(in.status());
  EXPECT_FALSE(in->has_value());
  ASSERT_TRUE(WaitFor(
      [&] {
        (void)server_->Receive(milliseconds(50));
        return log.Text().find("refused a connection") != std::string::npos;
      },
      milliseconds(3000)))
      << log.Text();
  bool refused = false;
  for (const auto& e : server_->TakeEvents()) refused |= e.kind == PeerEvent::Kind::kAuthRefused;
  EXPECT_TRUE(refused);
}

TEST_F(TransportTest, WrongServerKeyIsReportedAsDeadline) {
  Keys other = NewCurveKeys();
  auto client = Connect(site_, other.pub);
  ASSERT_TRUE(client);
  Status st = client->WaitConnected(milliseconds(1500));
  EXPECT_EQ(st.code(), Code::kDeadlineExceeded) << st.ToString();
  EXPECT_NE(st.message().find("wrong coordinator public key"), std::string::npos) << st.message();
  auto in = server_->Receive(milliseconds(200));
  ASSERT_OK(in.status());
  EXPECT_FALSE(in->has_value());
}

TEST_F(TransportTest, NothingListeningIsReportedAsDeadline) {
  ClientOptions o = testing::CurveClientOptions(testing::LocalEndpoint(), server_keys_.pub, site_);
  auto c = Client::Connect(o);
  ASSERT_OK(c.status());
  Status st = (*c)->WaitConnected(milliseconds(500));
  EXPECT_EQ(st.code(), Code::kDeadlineExceeded);
  EXPECT_NE(st.message().find("no TCP connection"), std::string::npos) << st.message();
}

TEST_F(TransportTest, StolenRoutingIdGainsNothing) {
  RawPeer victim(server_->endpoint(), &site_, server_keys_.pub, "victim");
  victim.Send(Encode(Env(Hello{"victim", {}, {}})));
  auto first = ServerReceive();
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->principal.name, "paris");
  EXPECT_EQ(first->peer.routing_id, "victim");

  // Another admitted key claims the same routing id.
  RawPeer thief(server_->endpoint(), &lead_, server_keys_.pub, "victim");
  thief.Send(Encode(Env(Hello{"thief", {}, {}})));
  auto second = server_->Receive(milliseconds(1500));
  ASSERT_OK(second.status());
  if (second->has_value()) {
    // If it came through at all it is attributed to the thief's own key.
    EXPECT_EQ((*second)->principal.name, "alice");
    EXPECT_NE((*second)->peer.routing_id, "victim");
  }
  // Replies to the victim's routing id reach the victim only.
  ASSERT_OK(server_->Send(first->peer, Env(Welcome{"0.1", "paris", 1000})));
  EXPECT_TRUE(victim.Receive(milliseconds(2000)).has_value());
  EXPECT_FALSE(thief.Receive(milliseconds(500)).has_value());
}

TEST_F(TransportTest, BadFramesAreRefusedWithReasonAndServerKeepsServing) {
  RawPeer peer(server_->endpoint(), &site_, server_keys_.pub);
  std::string valid = Encode(Env(Hello{"0.1", {}, {}}));
  Envelope other_version = Env(Hello{});
  other_version.version = 9;
  std::string wrong_version = Encode(other_version);
  std::string garbage(64, '\x5a');
  std::string truncated = valid.substr(0, valid.size() - 8);
  std::string odd = valid.substr(0, valid.size() - 3);
  struct Case {
    const std::string* frame;
    Reason reason;
  };
  std::vector<Case> cases = {{&garbage, Reason::kMalformed},
                             {&truncated, Reason::kMalformed},
                             {&odd, Reason::kMalformed},
                             {&wrong_version, Reason::kIncompatibleVersion}};
  long rss_before = 0;
  for (int round = 0; round < 100; ++round) {
    if (round == 10) rss_before = RssKb();  // after allocator warm-up
    for (const auto& c : cases) {
      peer.Send(*c.frame);
      auto in = ServerReceive();
      ASSERT_TRUE(in.has_value());
      ASSERT_FALSE(in->envelope.ok());
      EXPECT_EQ(in->principal.name, "paris");
      auto answer = peer.Receive(milliseconds(3000));
      ASSERT_TRUE(answer.has_value());
      auto reject = Decode(*answer);
      ASSERT_OK(reject.status());
      const auto& r = std::get<Reject>(reject->message);
      EXPECT_EQ(r.code, c.reason) << r.text;
      EXPECT_FALSE(r.text.empty());
      if (c.reason == Reason::kIncompatibleVersion) {
        EXPECT_NE(r.text.find("incompatible protocol version 9"), std::string::npos) << r.text;
      }
    }
  }
  long growth = RssKb() - rss_before;
  std::printf("RSS growth over 90 rounds of 4 bad frames: %ld KiB\n", growth);
  if (kRssMeaningful) {
    EXPECT_LT(growth, 8 * 1024);
  }
  // Still serving.
  peer.Send(valid);
  auto in = ServerReceive();
  ASSERT_TRUE(in.has_value());
  EXPECT_OK(in->envelope.status());
}

TEST(TransportNesting, TooDeepFrameIsRefusedWithReason) {
  Keys server = NewCurveKeys(), site = NewCurveKeys();
  ServerOptions o = testing::CurveServerOptions(server, {Principal{"paris", Role::kSite, site.pub}});
  o.tuning.decode_nesting = 3;  // JobStatus -> rounds -> RoundInfo -> sites is deeper
  auto s = Server::Bind(o);
  ASSERT_OK(s.status());
  RawPeer peer((*s)->endpoint(), &site, server.pub);
  JobStatus deep;
  deep.rounds.push_back(RoundInfo{});
  deep.rounds[0].sites.push_back(SiteRoundInfo{});
  for (int i = 0; i < 100; ++i) {
    peer.Send(Encode(Env(deep)));
    auto in = (*s)->Receive(milliseconds(3000));
    ASSERT_OK(in.status());
    ASSERT_TRUE(in->has_value());
    EXPECT_FALSE((*in)->envelope.ok());
    auto answer = peer.Receive(milliseconds(3000));
    ASSERT_TRUE(answer.has_value());
    auto reject = Decode(*answer);
    ASSERT_OK(reject.status());
    EXPECT_EQ(std::get<Reject>(reject->message).code, Reason::kMalformed);
    EXPECT_NE(std::get<Reject>(reject->message).text.find("nesting"), std::string::npos);
  }
  peer.Send(Encode(Env(Heartbeat{})));
  auto ok = (*s)->Receive(milliseconds(3000));
  ASSERT_OK(ok.status());
  ASSERT_TRUE(ok->has_value());
  EXPECT_OK((*ok)->envelope.status());
}

TEST_F(TransportTest, OversizeFrameDisconnectsThePeerAndServerKeepsServing) {
  auto client = Connect(site_, server_keys_.pub);
  ASSERT_OK(client->WaitConnected(milliseconds(5000)));
  RawPeer big(server_->endpoint(), &lead_, server_keys_.pub);
  long rss_before = 0;
  for (int i = 0; i < 100; ++i) {
    if (i == 10) rss_before = RssKb();
    // Above ZMQ_MAXMSGSIZE (64 KiB chunk + 16 KiB overhead): libzmq drops the connection.
    big.Send(std::string(200 << 10, 'x'));
    auto in = server_->Receive(milliseconds(20));
    ASSERT_OK(in.status());
    EXPECT_FALSE(in->has_value());
  }
  long growth = RssKb() - rss_before;
  std::printf("RSS growth over 90 oversize frames: %ld KiB\n", growth);
  if (kRssMeaningful) {
    EXPECT_LT(growth, 16 * 1024);
  }
  // The well-behaved client is still served.
  ASSERT_OK(client->Send(Env(Heartbeat{})));
  std::optional<Incoming> in;
  ASSERT_TRUE(WaitFor(
      [&] {
        in = ServerReceive(milliseconds(100));
        return in.has_value();
      },
      milliseconds(5000)));
  EXPECT_EQ(in->principal.name, "paris");
  EXPECT_OK(in->envelope.status());
}

TEST_F(TransportTest, SendToUnknownPeerIsDisconnected) {
  LogCapture log;
  Status st = server_->Send(PeerId{"nobody"}, Env(Heartbeat{}));
  EXPECT_EQ(st.code(), Code::kDisconnected) << st.ToString();
  EXPECT_NE(log.Text().find("send of heartbeat"), std::string::npos) << log.Text();
}

TEST(TransportBind, RefusesInvalidKeys) {
  ServerOptions o;
  o.endpoint = "tcp://127.0.0.1:0";
  o.secret_key = "short";
  EXPECT_EQ(Server::Bind(o).status().code(), Code::kInvalidArgument);
  Keys k = NewCurveKeys();
  o.secret_key = k.sec;
  o.principals = {Principal{"x", Role::kSite, "not-a-key"}};
  auto s = Server::Bind(o);
  EXPECT_EQ(s.status().code(), Code::kInvalidArgument);
  EXPECT_NE(s.status().message().find("principal x"), std::string::npos);
}

}  // namespace
}  // namespace hanse::proto
