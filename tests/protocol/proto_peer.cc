// Test helper process for the multi-process protocol tests.
//
//   proto_peer client --endpoint E --server-key K --public P --secret S
//       connects, sends Hello, prints "connected", then idles for up to 60 s.
//   proto_peer pull --endpoint E --server-key K --public P --secret S --store DIR
//                   --hash H --size N [--window W] [--chunk C] [--delay-ms D]
//       pulls blob H into the store DIR (resuming a partial), sleeping D ms after
//       each chunk written; prints "complete", "corrupt: ..." or "error: ...",
//       and "peak_rss_kb N". Exit: 0 complete, 3 corrupt, 1 other error.
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <thread>

#include "core/blob_store.h"
#include "protocol/blob_stream.h"
#include "protocol/transport.h"

using namespace hanse;
using namespace hanse::proto;
using std::chrono::milliseconds;

namespace {

long PeakRssKb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

Envelope Wrap(Message m) {
  Envelope e;
  e.message = std::move(m);
  return e;
}

int Pull(Client& client, std::map<std::string, std::string>& a) {
  auto store = BlobStore::Open(a["--store"]);
  if (!store.ok()) {
    std::printf("error: %s\n", store.status().ToString().c_str());
    return 1;
  }
  StreamOptions so;
  if (a.count("--window")) so.window = static_cast<uint32_t>(std::stoul(a["--window"]));
  if (a.count("--chunk")) so.chunk_bytes = std::stoull(a["--chunk"]);
  int delay_ms = a.count("--delay-ms") ? std::stoi(a["--delay-ms"]) : 0;
  std::string hash = a["--hash"];
  BlobReceiver receiver(**store, so);
  auto first = receiver.Start(hash, std::stoull(a["--size"]));
  if (!first.ok()) {
    std::printf("error: %s\n", first.status().ToString().c_str());
    return 1;
  }
  std::printf("start_offset %llu\n", static_cast<unsigned long long>((**store).PartialSize(hash)));
  std::fflush(stdout);
  for (const auto& r : *first) (void)client.Send(Wrap(r));
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!receiver.IsComplete(hash) && std::chrono::steady_clock::now() < deadline) {
    auto got = client.Receive(milliseconds(500));
    if (!got.ok() || !got->has_value()) continue;
    const auto* chunk = std::get_if<BlobChunk>(&(**got).message);
    if (!chunk) continue;
    auto next = receiver.OnChunk(*chunk);
    if (!next.ok()) {
      bool corrupt = next.status().code() == Code::kCorruption;
      std::printf("%s: %s\n", corrupt ? "corrupt" : "error", next.status().ToString().c_str());
      std::printf("peak_rss_kb %ld\n", PeakRssKb());
      return corrupt ? 3 : 1;
    }
    if (delay_ms > 0) std::this_thread::sleep_for(milliseconds(delay_ms));
    for (const auto& r : *next) (void)client.Send(Wrap(r));
  }
  std::printf("%s\npeak_rss_kb %ld\n", receiver.IsComplete(hash) ? "complete" : "error: timed out", PeakRssKb());
  return receiver.IsComplete(hash) ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  std::string mode = argv[1];
  std::map<std::string, std::string> a;
  for (int i = 2; i + 1 < argc; i += 2) a[argv[i]] = argv[i + 1];
  setvbuf(stdout, nullptr, _IOLBF, 0);
  ClientOptions o;
  o.endpoint = a["--endpoint"];
  o.server_public_key = a["--server-key"];
  o.public_key = a["--public"];
  o.secret_key = a["--secret"];
  if (a.count("--chunk")) o.tuning.max_chunk_bytes = std::stoull(a["--chunk"]);
  auto client = Client::Connect(o);
  if (!client.ok()) {
    std::printf("error: %s\n", client.status().ToString().c_str());
    return 1;
  }
  Status st = (*client)->WaitConnected(milliseconds(10000));
  if (!st.ok()) {
    std::printf("error: %s\n", st.ToString().c_str());
    return 1;
  }
  if (mode == "client") {
    (void)(*client)->Send(Wrap(Hello{"proto_peer", {}, {}}));
    std::printf("connected\n");
    auto end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < end) (void)(*client)->Receive(milliseconds(500));
    return 0;
  }
  if (mode == "pull") return Pull(**client, a);
  return 2;
}
