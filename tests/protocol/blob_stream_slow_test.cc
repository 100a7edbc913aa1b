// A 1 GiB blob through the real transport: memory on both sides stays bounded
// by window x chunk, whatever the blob size. Labelled `slow`.
#include <gtest/gtest.h>

#include "protocol/blob_client.h"
#include "protocol/blob_stream.h"
#include "protocol/transport.h"
#include "test_net.h"
#include "test_util.h"

namespace hanse::proto {
namespace {

using std::chrono::milliseconds;
using testing::kRssMeaningful;
using testing::ProcStatusKb;

TEST(BlobStreamSlow, OneGibBlobKeepsMemoryBoundedOnBothSides) {
  const uint64_t kSize = 1ull << 30;
  const StreamOptions so{4ull << 20, 4};
  testing::TempDir tmp;
  auto src = BlobStore::Open(tmp / "src");
  ASSERT_OK(src.status());
  // Write the blob in pieces so this process never holds it.
  auto writer = (*src)->NewWriter();
  ASSERT_OK(writer.status());
  std::vector<uint64_t> piece(so.chunk_bytes / 8);
  uint64_t x = 88172645463325252ull;
  for (uint64_t off = 0; off < kSize; off += so.chunk_bytes) {
    for (auto& v : piece) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      v = x;
    }
    ASSERT_OK((*writer)->Write(std::as_bytes(std::span<const uint64_t>(piece))));
  }
  auto hash = (*writer)->Finish();
  ASSERT_OK(hash.status());
  piece = {};

  const testing::CurveKeys server_keys = testing::NewCurveKeys(), site = testing::NewCurveKeys();
  ASSERT_FALSE(::testing::Test::HasFailure()) << "zmq_curve_keypair failed";
  auto server = Server::Bind(testing::CurveServerOptions(server_keys, {Principal{"paris", Role::kSite, site.pub}}));
  ASSERT_OK(server.status());
  BlobSender sender(**src, so);

  long rss_before = ProcStatusKb("VmRSS:");
  long rss_peak = rss_before;
  std::vector<std::string> args = {(testing::BinDir() / "proto_peer").string(),
                                   "pull", "--endpoint", (*server)->endpoint(), "--server-key", server_keys.pub,
                                   "--public", site.pub, "--secret", site.sec, "--store", (tmp / "dst").string(),
                                   "--hash", *hash, "--size", std::to_string(kSize),
                                   "--chunk", std::to_string(so.chunk_bytes), "--window", "4"};
  auto child = testing::Child::Start(args, tmp / "pull.log");
  std::optional<int> code;
  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(400);
  while (!code && std::chrono::steady_clock::now() < end) {
    auto r = (*server)->Receive(milliseconds(50));
    if (r.ok() && r->has_value() && (**r).envelope.ok()) {
      const auto& in = **r;
      if (const auto* req = std::get_if<BlobRequest>(&in.envelope->message)) {
        ASSERT_OK(AnswerBlobRequest(**server, in.peer, sender, *req, in.envelope->message_id));
      }
    }
    rss_peak = std::max(rss_peak, ProcStatusKb("VmRSS:"));
    code = child.WaitExitCode(milliseconds(0));
  }
  ASSERT_EQ(code, 0) << child.Log();
  std::string log = child.Log();
  auto at = log.find("peak_rss_kb ");
  ASSERT_NE(at, std::string::npos) << log;
  long receiver_peak_kb = std::stol(log.substr(at + 12));
  long sender_growth_kb = rss_peak - rss_before;
  const long kWindowKb = static_cast<long>(so.window * so.chunk_bytes / 1024);
  std::printf("1 GiB blob: receiver peak RSS %ld KiB, sender RSS growth %ld KiB (window x chunk = %ld KiB)\n",
              receiver_peak_kb, sender_growth_kb, kWindowKb);
  // "A few times" window x chunk: the socket queues, the decoded chunk and the
  // encode buffers each hold at most a window's worth.
  if (kRssMeaningful) {
    EXPECT_LT(receiver_peak_kb, 6 * kWindowKb);
    EXPECT_LT(sender_growth_kb, 6 * kWindowKb);
  }
  auto dst = BlobStore::Open(tmp / "dst");
  EXPECT_TRUE((*dst)->Contains(*hash));
}

}  // namespace
}  // namespace hanse::proto
