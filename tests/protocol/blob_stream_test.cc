// Blob streaming: credit window, resume, hash verification; in memory and across
// processes over CURVE sockets (the receiver killed and restarted).
#include "protocol/blob_stream.h"

#include <gtest/gtest.h>
#include <zmq.h>

#include <deque>
#include <fstream>
#include <map>
#include <random>
#include <set>

#include "protocol/blob_client.h"
#include "protocol/transport.h"
#include "test_util.h"

namespace hanse::proto {
namespace {

using std::chrono::milliseconds;

std::string RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (size_t i = 0; i + 8 <= n; i += 8) {
    uint64_t v = rng();
    std::memcpy(&s[i], &v, 8);
  }
  for (size_t i = n - n % 8; i < n; ++i) s[i] = static_cast<char>(rng());
  return s;
}

struct Stores {
  testing::TempDir dir;
  std::unique_ptr<BlobStore> src, dst;
  Stores() {
    auto a = BlobStore::Open(dir / "src");
    auto b = BlobStore::Open(dir / "dst");
    if (!a.ok() || !b.ok()) throw std::runtime_error("cannot open stores");
    src = std::move(a).value();
    dst = std::move(b).value();
  }
};

// Runs sender and receiver against an in-memory queue, checking the window.
// `tamper` may change a chunk in flight. Stops after `stop_after` chunks (0 = never).
struct Loop {
  BlobSender& sender;
  BlobReceiver& receiver;
  uint32_t window;
  uint64_t bytes_served = 0;
  size_t max_in_flight = 0;
  std::function<void(BlobChunk&)> tamper;

  Status Run(std::vector<BlobRequest> requests, size_t stop_after = 0) {
    std::deque<BlobChunk> wire;
    size_t consumed = 0;
    while (true) {
      for (const auto& r : requests) {
        HANSE_RETURN_IF_ERROR(sender.Serve(r, [&](const BlobChunk& c) {
          wire.push_back(c);
          bytes_served += c.bytes.size();
          return Status::Ok();
        }));
      }
      max_in_flight = std::max(max_in_flight, wire.size());
      if (wire.empty()) return Status::Ok();
      if (stop_after && consumed == stop_after) return Status::Ok();
      BlobChunk c = std::move(wire.front());
      wire.pop_front();
      if (tamper) tamper(c);
      ++consumed;
      auto next = receiver.OnChunk(c);
      if (!next.ok()) return next.status();
      requests = std::move(next).value();
    }
  }
};

TEST(BlobStream, TransfersWithinTheCreditWindow) {
  Stores s;
  std::string data = RandomBytes((10 << 20) + 123, 1);
  auto hash = s.src->Put(data);
  ASSERT_OK(hash.status());
  StreamOptions o{64 << 10, 4};
  BlobSender sender(*s.src, o);
  BlobReceiver receiver(*s.dst, o);
  auto first = receiver.Start(*hash, data.size());
  ASSERT_OK(first.status());
  ASSERT_EQ(first->size(), 1u);
  EXPECT_EQ((*first)[0].credits, 4u);
  Loop loop{sender, receiver, 4, 0, 0, {}};
  ASSERT_OK(loop.Run(*first));
  EXPECT_TRUE(receiver.IsComplete(*hash));
  EXPECT_FALSE(receiver.IsActive(*hash));
  EXPECT_LE(loop.max_in_flight, 4u);
  EXPECT_EQ(loop.bytes_served, data.size());
  auto got = s.dst->Get(*hash);
  ASSERT_OK(got.status());
  EXPECT_TRUE(*got == data);
}

TEST(BlobStream, SenderNeverExceedsItsWindowWhateverTheRequest) {
  Stores s;
  auto hash = s.src->Put(RandomBytes(1 << 20, 2));
  BlobSender sender(*s.src, StreamOptions{1024, 3});
  int n = 0;
  ASSERT_OK(sender.Serve(BlobRequest{*hash, 0, 1000000}, [&](const BlobChunk& c) {
    EXPECT_EQ(c.bytes.size(), 1024u);
    ++n;
    return Status::Ok();
  }));
  EXPECT_EQ(n, 3);
}

TEST(BlobStream, MissingBlobIsNotFound) {
  Stores s;
  BlobSender sender(*s.src, StreamOptions{});
  Status st = sender.Serve(BlobRequest{std::string(64, 'a'), 0, 1}, [](const BlobChunk&) { return Status::Ok(); });
  EXPECT_EQ(st.code(), Code::kNotFound);
}

TEST(BlobStream, ResumesFromPartialWithoutResending) {
  Stores s;
  std::string data = RandomBytes(1 << 20, 3);
  auto hash = s.src->Put(data);
  StreamOptions o{32 << 10, 4};
  BlobSender sender(*s.src, o);
  {
    BlobReceiver receiver(*s.dst, o);
    auto first = receiver.Start(*hash, data.size());
    Loop loop{sender, receiver, 4, 0, 0, {}};
    ASSERT_OK(loop.Run(*first, /*stop_after=*/10));  // then the process "dies"
  }
  uint64_t held = s.dst->PartialSize(*hash);
  EXPECT_EQ(held, 10u * (32 << 10));
  BlobReceiver receiver(*s.dst, o);
  auto first = receiver.Start(*hash, data.size());
  ASSERT_OK(first.status());
  ASSERT_EQ(first->size(), 1u);
  EXPECT_EQ((*first)[0].offset, held);
  Loop loop{sender, receiver, 4, 0, 0, {}};
  ASSERT_OK(loop.Run(*first));
  EXPECT_TRUE(receiver.IsComplete(*hash));
  EXPECT_EQ(loop.bytes_served, data.size() - held);
  EXPECT_OK(s.dst->Verify(*hash));
}

TEST(BlobStream, CorruptedChunkIsDetectedAndBlobNotAdmitted) {
  Stores s;
  std::string data = RandomBytes(300000, 4);
  auto hash = s.src->Put(data);
  StreamOptions o{16 << 10, 4};
  BlobSender sender(*s.src, o);
  BlobReceiver receiver(*s.dst, o);
  auto first = receiver.Start(*hash, data.size());
  Loop loop{sender, receiver, 4, 0, 0, {}};
  loop.tamper = [](BlobChunk& c) {
    if (c.offset == 5 * (16 << 10)) c.bytes[100] ^= 1;
  };
  Status st = loop.Run(*first);
  EXPECT_EQ(st.code(), Code::kCorruption) << st.ToString();
  EXPECT_NE(st.message().find(*hash), std::string::npos);
  EXPECT_FALSE(s.dst->Contains(*hash));
  EXPECT_EQ(s.dst->PartialSize(*hash), 0u);
  EXPECT_FALSE(receiver.IsActive(*hash));
  EXPECT_FALSE(receiver.IsComplete(*hash));
}

TEST(BlobStream, WrongTotalSizeIsCorruption) {
  Stores s;
  auto hash = s.src->Put(RandomBytes(5000, 5));
  BlobReceiver receiver(*s.dst, StreamOptions{1024, 2});
  ASSERT_OK(receiver.Start(*hash, 5000).status());
  auto r = receiver.OnChunk(BlobChunk{*hash, 0, 9999, std::string(1024, 'x'), false});
  EXPECT_EQ(r.status().code(), Code::kCorruption);
  auto unknown = receiver.OnChunk(BlobChunk{std::string(64, 'b'), 0, 1, "x", true});
  EXPECT_EQ(unknown.status().code(), Code::kFailedPrecondition);
}

TEST(BlobStream, PresentAndEmptyBlobsCompleteAtOnce) {
  Stores s;
  auto hash = s.dst->Put(std::string("already here"));
  BlobReceiver receiver(*s.dst, StreamOptions{});
  auto r = receiver.Start(*hash, 12);
  ASSERT_OK(r.status());
  EXPECT_TRUE(r->empty());
  EXPECT_TRUE(receiver.IsComplete(*hash));
  const std::string kEmpty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
  auto e = receiver.Start(kEmpty, 0);
  ASSERT_OK(e.status());
  EXPECT_TRUE(e->empty());
  EXPECT_TRUE(receiver.IsComplete(kEmpty));
  EXPECT_TRUE(s.dst->Contains(kEmpty));
}

// ---------------------------------------------------------------- over sockets

struct Keys {
  std::string pub, sec;
};
Keys NewKeys() {
  char pub[41], sec[41];
  EXPECT_EQ(zmq_curve_keypair(pub, sec), 0);
  return Keys{pub, sec};
}

class SocketTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_keys_ = NewKeys();
    site_ = NewKeys();
    ServerOptions o;
    o.endpoint = "tcp://127.0.0.1:0";
    o.secret_key = server_keys_.sec;
    o.public_key = server_keys_.pub;
    o.principals = {Principal{"paris", Role::kSite, site_.pub}};
    o.tuning.heartbeat_interval = milliseconds(1000);
    o.tuning.heartbeat_timeout = milliseconds(3000);
    auto s = Server::Bind(o);
    ASSERT_OK(s.status());
    server_ = std::move(s).value();
  }
  std::vector<std::string> PeerArgs(const std::string& mode) {
    return {(testing::BinDir() / "proto_peer").string(),
            mode,
            "--endpoint",
            server_->endpoint(),
            "--server-key",
            server_keys_.pub,
            "--public",
            site_.pub,
            "--secret",
            site_.sec};
  }
  Keys server_keys_, site_;
  std::unique_ptr<Server> server_;
};

TEST_F(SocketTest, PeerStoppedWithSigstopIsDetectedAsDead) {
  testing::TempDir tmp;
  auto child = testing::Child::Start(PeerArgs("client"), tmp / "peer.log");
  std::optional<Incoming> hello;
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        auto r = server_->Receive(milliseconds(100));
        if (r.ok() && r->has_value()) hello = std::move(**r);
        return hello.has_value();
      },
      milliseconds(15000)))
      << child.Log();
  EXPECT_EQ(hello->principal.name, "paris");
  (void)server_->TakeEvents();
  child.Signal(SIGSTOP);
  auto stopped = std::chrono::steady_clock::now();
  bool dead = false;
  while (!dead && std::chrono::steady_clock::now() - stopped < std::chrono::seconds(15)) {
    (void)server_->Receive(milliseconds(100));
    for (const auto& e : server_->TakeEvents()) {
      dead |= e.kind == PeerEvent::Kind::kDisconnected && e.peer == hello->peer && e.principal == "paris";
    }
  }
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - stopped).count();
  std::printf("stopped peer detected as dead after %.2f s (heartbeat 1 s, timeout 3 s)\n", seconds);
  child.Signal(SIGCONT);
  EXPECT_TRUE(dead);
  // Replies to the dead peer fail loudly instead of vanishing.
  EXPECT_EQ(server_->Send(hello->peer, Envelope{}).code(), Code::kDisconnected);
}

// Serves blob requests until the child exits; counts the bytes sent.
struct ServeResult {
  std::optional<int> exit_code;
  uint64_t bytes_sent = 0;
  std::vector<uint64_t> request_offsets;
};
ServeResult ServeUntilExit(Server& server, BlobSender& sender, testing::Child& child, milliseconds limit,
                           const std::function<bool()>& stop = {}) {
  ServeResult out;
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    auto r = server.Receive(milliseconds(50));
    if (r.ok() && r->has_value() && (**r).envelope.ok()) {
      const auto& in = **r;
      if (const auto* req = std::get_if<BlobRequest>(&in.envelope->message)) {
        out.request_offsets.push_back(req->offset);
        (void)sender.Serve(*req, [&](const BlobChunk& c) {
          Envelope e;
          e.message = c;
          Status st = server.Send(in.peer, e);
          if (st.ok()) out.bytes_sent += c.bytes.size();
          return st;
        });
      }
    }
    if (stop && stop()) return out;
    if (auto code = child.WaitExitCode(milliseconds(0))) {
      out.exit_code = code;
      return out;
    }
  }
  return out;
}

TEST_F(SocketTest, ReceiverKilledMidTransferResumesFromItsLastChunk) {
  testing::TempDir tmp;
  auto src = BlobStore::Open(tmp / "src");
  ASSERT_OK(src.status());
  std::string data = RandomBytes(8 << 20, 6);
  auto hash = src.value()->Put(data);
  ASSERT_OK(hash.status());
  StreamOptions so{128 << 10, 4};
  BlobSender sender(**src, so);
  auto args = PeerArgs("pull");
  std::vector<std::string> extra = {"--store", (tmp / "dst").string(), "--hash", *hash, "--size",
                                    std::to_string(data.size()), "--chunk", std::to_string(so.chunk_bytes),
                                    "--window", "4", "--delay-ms", "20"};
  args.insert(args.end(), extra.begin(), extra.end());
  auto dst_view = BlobStore::Open(tmp / "dst");
  ASSERT_OK(dst_view.status());
  // Run 1: killed once it holds at least 1 MiB.
  auto first = testing::Child::Start(args, tmp / "pull1.log");
  auto run1 = ServeUntilExit(*server_, sender, first, milliseconds(60000),
                             [&] { return (*dst_view)->PartialSize(*hash) >= (1u << 20); });
  first.Signal(SIGKILL);
  first.Wait(milliseconds(5000));
  // Requests the dead receiver sent before it died are still queued here: drop
  // them, so that run 2's figures count only what run 2 asked for.
  bool gone = false;
  auto drain_end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < drain_end) {
    auto r = server_->Receive(milliseconds(300));
    for (const auto& e : server_->TakeEvents()) gone |= e.kind == PeerEvent::Kind::kDisconnected;
    if (gone && r.ok() && !r->has_value()) break;
  }
  EXPECT_TRUE(gone);
  uint64_t held = (*dst_view)->PartialSize(*hash);
  ASSERT_GE(held, 1u << 20) << first.Log();
  ASSERT_LT(held, data.size());
  EXPECT_EQ(held % so.chunk_bytes, 0u);
  // Run 2 resumes.
  auto second = testing::Child::Start(args, tmp / "pull2.log");
  auto run2 = ServeUntilExit(*server_, sender, second, milliseconds(90000));
  ASSERT_EQ(run2.exit_code, 0) << second.Log();
  EXPECT_NE(second.Log().find("start_offset " + std::to_string(held)), std::string::npos) << second.Log();
  ASSERT_FALSE(run2.request_offsets.empty());
  EXPECT_EQ(run2.request_offsets.front(), held);
  EXPECT_EQ(run2.bytes_sent, data.size() - held);
  std::printf("run 1 sent %llu bytes, receiver held %llu; run 2 sent %llu of %zu\n",
              static_cast<unsigned long long>(run1.bytes_sent), static_cast<unsigned long long>(held),
              static_cast<unsigned long long>(run2.bytes_sent), data.size());
  EXPECT_OK((*dst_view)->Verify(*hash));
}

TEST_F(SocketTest, CorruptedChunkOverTheWireIsNotAdmitted) {
  testing::TempDir tmp;
  auto src = BlobStore::Open(tmp / "src");
  std::string data = RandomBytes(1 << 20, 7);
  auto hash = (*src)->Put(data);
  StreamOptions so{64 << 10, 4};
  BlobSender sender(**src, so);
  auto args = PeerArgs("pull");
  std::vector<std::string> extra = {"--store", (tmp / "dst").string(), "--hash", *hash, "--size",
                                    std::to_string(data.size()), "--chunk", std::to_string(so.chunk_bytes)};
  args.insert(args.end(), extra.begin(), extra.end());
  auto child = testing::Child::Start(args, tmp / "pull.log");
  std::optional<int> code;
  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!code && std::chrono::steady_clock::now() < end) {
    auto r = server_->Receive(milliseconds(50));
    if (r.ok() && r->has_value() && (**r).envelope.ok()) {
      const auto& in = **r;
      if (const auto* req = std::get_if<BlobRequest>(&in.envelope->message)) {
        (void)sender.Serve(*req, [&](const BlobChunk& c) {
          Envelope e;
          e.message = c;
          auto& chunk = std::get<BlobChunk>(e.message);
          if (chunk.offset == 3 * so.chunk_bytes) chunk.bytes[7] ^= 0x40;  // bit flip in transit
          return server_->Send(in.peer, e);
        });
      }
    }
    code = child.WaitExitCode(milliseconds(0));
  }
  ASSERT_EQ(code, 3) << child.Log();
  EXPECT_NE(child.Log().find("corrupt"), std::string::npos);
  auto dst = BlobStore::Open(tmp / "dst");
  EXPECT_FALSE((*dst)->Contains(*hash));
  EXPECT_EQ((*dst)->PartialSize(*hash), 0u);
}

// ---------------------------------------------------------------- shared budgets

// One receiver pulling N blobs from N senders at once (the coordinator
// collecting updates): the credits in flight never exceed the budget, every
// blob arrives intact, and each request is routed by its hash.
TEST(BlobStreamBudget, ReceiverSharesOneBudgetAmongAllTransfers) {
  testing::TempDir dir;
  constexpr int kPeers = 6;
  StreamOptions o{16 << 10, 4, 5};
  auto dst = BlobStore::Open(dir / "dst");
  ASSERT_OK(dst.status());
  BlobReceiver receiver(**dst, o);
  std::vector<std::unique_ptr<BlobStore>> srcs;
  std::vector<std::unique_ptr<BlobSender>> senders;
  std::map<std::string, int> owner;  // hash -> peer
  std::vector<std::string> data;
  std::deque<std::pair<int, BlobRequest>> to_senders;
  std::deque<BlobChunk> wire;
  auto route = [&](const std::vector<BlobRequest>& reqs) {
    for (const auto& r : reqs) {
      ASSERT_TRUE(owner.count(r.hash)) << "request for an unknown blob";
      to_senders.push_back({owner[r.hash], r});
    }
  };
  for (int i = 0; i < kPeers; ++i) {
    auto st = BlobStore::Open(dir / ("src" + std::to_string(i)));
    ASSERT_OK(st.status());
    srcs.push_back(std::move(*st));
    senders.push_back(std::make_unique<BlobSender>(*srcs.back(), o));
    data.push_back(RandomBytes((200 << 10) + 17 * i, 100 + i));
    auto h = srcs.back()->Put(data.back());
    ASSERT_OK(h.status());
    owner[*h] = i;
    auto first = receiver.Start(*h, data.back().size());
    ASSERT_OK(first.status());
    route(*first);
    EXPECT_LE(receiver.in_flight(), o.budget);
  }
  size_t max_credits = 0, max_wire = 0;
  std::set<int> moved_before_first_done;
  bool any_done = false;
  for (int steps = 0; steps < 100000 && (!to_senders.empty() || !wire.empty()); ++steps) {
    while (!to_senders.empty()) {
      auto [peer, r] = to_senders.front();
      to_senders.pop_front();
      ASSERT_OK(senders[peer]->Serve(r, [&](const BlobChunk& c) {
        wire.push_back(c);
        return Status::Ok();
      }));
    }
    max_wire = std::max(max_wire, wire.size());
    max_credits = std::max<size_t>(max_credits, receiver.in_flight());
    if (wire.empty()) break;
    BlobChunk c = std::move(wire.front());
    wire.pop_front();
    if (!any_done) moved_before_first_done.insert(owner[c.hash]);
    auto next = receiver.OnChunk(c);
    ASSERT_OK(next.status());
    route(*next);
    if (receiver.IsComplete(c.hash)) any_done = true;
  }
  EXPECT_LE(max_credits, o.budget);
  EXPECT_LE(max_wire, o.budget);  // chunks in flight: what memory holds
  EXPECT_EQ(moved_before_first_done.size(), static_cast<size_t>(kPeers)) << "round-robin: every transfer moves";
  EXPECT_EQ(receiver.in_flight(), 0u);
  for (const auto& [hash, peer] : owner) {
    EXPECT_TRUE(receiver.IsComplete(hash));
    auto got = (*dst)->Get(hash);
    ASSERT_OK(got.status());
    EXPECT_TRUE(*got == data[peer]);
  }
}

TEST(BlobStreamBudget, EveryChunkIsAcknowledgedAndTheLastOneClosesTheTransfer) {
  Stores s;
  std::string data = RandomBytes(10 * 1024 + 5, 7);
  auto hash = s.src->Put(data);
  ASSERT_OK(hash.status());
  BlobReceiver receiver(*s.dst, StreamOptions{1024, 4});
  ASSERT_OK(receiver.Start(*hash, data.size()).status());
  for (uint64_t off = 0; off < data.size(); off += 1024) {
    BlobChunk c{*hash, off, data.size(), data.substr(off, 1024), off + 1024 >= data.size()};
    auto next = receiver.OnChunk(c);
    ASSERT_OK(next.status());
    ASSERT_FALSE(next->empty()) << "chunk at " << off << " not acknowledged";
    for (const auto& r : *next) EXPECT_EQ(r.received, std::min<uint64_t>(off + 1024, data.size()));
    if (c.last) {
      ASSERT_EQ(next->size(), 1u);
      EXPECT_EQ((*next)[0].credits, 0u);
      EXPECT_EQ((*next)[0].offset, data.size());
    }
  }
  EXPECT_TRUE(receiver.IsComplete(*hash));
}

TEST(BlobStreamBudget, PausedTransferGivesItsCreditsToTheOthers) {
  testing::TempDir dir;
  auto src = BlobStore::Open(dir / "src");
  auto dst = BlobStore::Open(dir / "dst");
  ASSERT_OK(src.status());
  ASSERT_OK(dst.status());
  auto a = (*src)->Put(RandomBytes(64 << 10, 1));
  auto b = (*src)->Put(RandomBytes(64 << 10, 2));
  BlobReceiver receiver(**dst, StreamOptions{4096, 4, 1});
  auto ra = receiver.Start(*a, 64 << 10);
  auto rb = receiver.Start(*b, 64 << 10);
  ASSERT_OK(ra.status());
  ASSERT_OK(rb.status());
  ASSERT_EQ(ra->size(), 1u);  // a holds the only credit
  EXPECT_TRUE(rb->empty());
  auto after = receiver.Pause(*a);
  ASSERT_EQ(after.size(), 1u);
  EXPECT_EQ(after[0].hash, *b);
  EXPECT_EQ(receiver.in_flight(), 1u);
  // b's only credit goes back to a once it resumes and b is abandoned.
  auto resumed = receiver.Resume(*a);
  EXPECT_TRUE(resumed.empty());
  auto given = receiver.Abandon(*b);
  ASSERT_EQ(given.size(), 1u);
  EXPECT_EQ(given[0].hash, *a);
  EXPECT_EQ(given[0].offset, 0u);
}

struct PacedPeers {
  testing::TempDir dir;
  std::unique_ptr<BlobStore> src;
  std::vector<std::unique_ptr<BlobStore>> dst;
  std::vector<std::unique_ptr<BlobReceiver>> receivers;
  std::string hash, data;
  PacedPeers(int n, size_t bytes, StreamOptions o) {
    auto st = BlobStore::Open(dir / "src");
    if (!st.ok()) throw std::runtime_error("store");
    src = std::move(*st);
    data = RandomBytes(bytes, 42);
    hash = src->Put(data).value();
    for (int i = 0; i < n; ++i) {
      auto d = BlobStore::Open(dir / ("dst" + std::to_string(i)));
      if (!d.ok()) throw std::runtime_error("store");
      dst.push_back(std::move(*d));
      receivers.push_back(std::make_unique<BlobReceiver>(*dst.back(), o));
    }
  }
};

// N peers pull the same model at once (the coordinator distributing a round):
// bytes sent and not yet acknowledged stay within the budget, whatever N.
TEST(PacedSender, ServesManyPeersWithinOneBudget) {
  constexpr int kPeers = 8;
  StreamOptions o{8 << 10, 4};
  const uint64_t budget = 3 * o.chunk_bytes;
  PacedPeers p(kPeers, (300 << 10) + 3, o);
  PacedSender sender(*p.src, o, budget, std::chrono::seconds(60));
  auto now = PacedSender::Clock::now();
  std::vector<std::deque<Envelope>> wire(kPeers);
  for (int i = 0; i < kPeers; ++i) {
    auto first = p.receivers[i]->Start(p.hash, p.data.size());
    ASSERT_OK(first.status());
    for (const auto& r : *first) ASSERT_OK(sender.OnRequest(std::to_string(i), r, 0, now));
  }
  auto emit = [&](const std::string& peer, const Envelope& e) {
    wire[std::stoi(peer)].push_back(e);
    return Status::Ok();
  };
  uint64_t max_unacked = 0;
  for (int rounds = 0; rounds < 100000; ++rounds) {
    sender.Pump(emit, now);
    max_unacked = std::max(max_unacked, sender.in_flight());
    uint64_t on_wire = 0;
    for (const auto& w : wire)
      for (const auto& e : w) on_wire += std::get<BlobChunk>(e.message).bytes.size();
    ASSERT_LE(on_wire, budget);
    bool any = false;
    for (int i = 0; i < kPeers; ++i) {  // every peer takes one chunk per turn
      if (wire[i].empty()) continue;
      any = true;
      auto next = p.receivers[i]->OnChunk(std::get<BlobChunk>(wire[i].front().message));
      wire[i].pop_front();
      ASSERT_OK(next.status());
      for (const auto& r : *next) ASSERT_OK(sender.OnRequest(std::to_string(i), r, 0, now));
    }
    if (!any) break;
  }
  EXPECT_LE(max_unacked, budget);
  EXPECT_EQ(sender.in_flight(), 0u);
  EXPECT_EQ(sender.transfers(), 0u) << "acknowledged transfers are forgotten";
  for (int i = 0; i < kPeers; ++i) {
    EXPECT_TRUE(p.receivers[i]->IsComplete(p.hash)) << "peer " << i;
    auto got = p.dst[i]->Get(p.hash);
    ASSERT_OK(got.status());
    EXPECT_TRUE(*got == p.data);
  }
}

TEST(PacedSender, SilentOrGonePeerReleasesTheBudget) {
  StreamOptions o{4096, 4};
  PacedPeers p(2, 64 << 10, o);
  PacedSender sender(*p.src, o, 2 * o.chunk_bytes, std::chrono::seconds(5));
  auto t0 = PacedSender::Clock::now();
  int sent_to_1 = 0;
  auto emit = [&](const std::string& peer, const Envelope&) {
    sent_to_1 += peer == "1";
    return Status::Ok();
  };
  ASSERT_OK(sender.OnRequest("0", BlobRequest{p.hash, 0, 4, 0}, 0, t0));  // never acknowledges
  sender.Pump(emit, t0);
  EXPECT_EQ(sender.in_flight(), 2 * o.chunk_bytes);
  ASSERT_OK(sender.OnRequest("1", BlobRequest{p.hash, 0, 4, 0}, 0, t0));
  sender.Pump(emit, t0 + std::chrono::seconds(1));
  EXPECT_EQ(sent_to_1, 0) << "budget held by peer 0";
  ASSERT_OK(sender.OnRequest("1", BlobRequest{p.hash, 0, 4, 0}, 0, t0 + std::chrono::seconds(6)));
  sender.Pump(emit, t0 + std::chrono::seconds(6));  // peer 0 silent past the stall timeout
  EXPECT_EQ(sent_to_1, 2) << "peer 1 gets the whole budget; silent peer 0 gets nothing more";
  sender.Forget("1");
  EXPECT_EQ(sender.transfers(), 1u);
  EXPECT_LE(sender.in_flight(), 2 * o.chunk_bytes);
}

// A transfer that waits for the budget longer than the stall timeout is not
// "silent": it owes nothing, and is served as soon as the budget frees.
TEST(PacedSender, WaitingForTheBudgetIsNotStalling) {
  StreamOptions o{4096, 4};
  PacedPeers p(1, 64 << 10, o);
  PacedSender sender(*p.src, o, o.chunk_bytes, std::chrono::seconds(5));
  auto t0 = PacedSender::Clock::now();
  std::map<std::string, int> sent;
  auto emit = [&](const std::string& peer, const Envelope&) {
    ++sent[peer];
    return Status::Ok();
  };
  ASSERT_OK(sender.OnRequest("a", BlobRequest{p.hash, 0, 1, 0}, 0, t0));
  ASSERT_OK(sender.OnRequest("b", BlobRequest{p.hash, 0, 1, 0}, 0, t0));
  sender.Pump(emit, t0);
  EXPECT_EQ(sent["a"], 1);
  EXPECT_EQ(sent["b"], 0);
  // a acknowledges late, after b waited past the stall timeout.
  auto t1 = t0 + std::chrono::seconds(4);
  ASSERT_OK(sender.OnRequest("a", BlobRequest{p.hash, 4096, 0, 4096}, 0, t1));
  sender.Pump(emit, t0 + std::chrono::seconds(20));
  EXPECT_EQ(sent["b"], 1) << "b owed nothing: it must be served";
}

TEST(BlobStreamBudget, LateCopyOfAHeldBlobIsAcknowledged) {
  Stores s;
  std::string data = RandomBytes(3000, 9);
  auto hash = s.src->Put(data);
  ASSERT_OK(hash.status());
  BlobReceiver receiver(*s.dst, StreamOptions{4096, 4});
  ASSERT_OK(receiver.Start(*hash, data.size()).status());
  BlobChunk c{*hash, 0, data.size(), data, true};
  ASSERT_OK(receiver.OnChunk(c).status());
  ASSERT_TRUE(receiver.IsComplete(*hash));
  auto again = receiver.OnChunk(c);  // the sender resent it after a reconnect
  ASSERT_OK(again.status());
  ASSERT_EQ(again->size(), 1u);
  EXPECT_EQ((*again)[0].credits, 0u);
  EXPECT_EQ((*again)[0].received, data.size());
  BlobChunk stranger{std::string(64, 'c'), 0, 10, "0123456789", true};
  EXPECT_FALSE(receiver.OnChunk(stranger).ok());
}

TEST(PacedSender, RefusesWhatItCannotServe) {
  StreamOptions o{4096, 4};
  PacedPeers p(1, 10000, o);
  PacedSender sender(*p.src, o, 4 * o.chunk_bytes, std::chrono::seconds(5));
  auto now = PacedSender::Clock::now();
  EXPECT_EQ(sender.OnRequest("x", BlobRequest{std::string(64, 'a'), 0, 1, 0}, 0, now).code(), Code::kNotFound);
  EXPECT_EQ(sender.OnRequest("x", BlobRequest{"nothex", 0, 1, 0}, 0, now).code(), Code::kInvalidArgument);
  EXPECT_EQ(sender.OnRequest("x", BlobRequest{p.hash, 10001, 1, 0}, 0, now).code(), Code::kInvalidArgument);
  EXPECT_OK(sender.OnRequest("x", BlobRequest{std::string(64, 'b'), 0, 0, 0}, 0, now));  // a stray ack
  EXPECT_EQ(sender.transfers(), 0u);
}

}  // namespace
}  // namespace hanse::proto
