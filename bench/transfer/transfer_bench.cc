// bench/transfer: moves one blob over loopback three ways, in one run:
//   hanse  : hanse blob streaming (CURVE + ZAP, credit window, each chunk appended
//            and fsynced into the receiver's blob store, SHA-256 verified at commit)
//   curve  : plain libzmq CURVE DEALER -> ROUTER stream, same message size, the
//            receiver write()s to a file and fsyncs once at the end
//   plain  : the same without CURVE (plain TCP ZeroMQ)
// Prints MB/s for each, hanse / curve (goal >= 0.75) and the peak RSS of the
// sending and receiving processes (goal: a few times window x chunk).
//
//   transfer_bench [--size BYTES (default 1 GiB)] [--chunk BYTES (4 MiB)]
//                  [--window N (4)] [--dir DIR (a fresh folder under $TMPDIR)]
// Each side runs as its own process (this binary re-executed with --role).
#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <zmq.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "core/blob_store.h"
#include "protocol/blob_client.h"
#include "protocol/blob_stream.h"
#include "protocol/transport.h"

extern char** environ;

namespace {

using namespace hanse;
using namespace hanse::proto;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

double CpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

long PeakRssKb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "transfer_bench: %s\n", what.c_str());
  std::exit(1);
}

using Args = std::map<std::string, std::string>;
uint64_t U(const Args& a, const std::string& k) { return std::stoull(a.at(k)); }

// ---- hanse roles ----

int HanseSend(Args& a) {
  auto store = BlobStore::Open(a["--dir"] + "/src");
  if (!store.ok()) Die(store.status().ToString());
  ServerOptions o;
  o.endpoint = "tcp://127.0.0.1:0";
  o.secret_key = a["--server-secret"];
  o.public_key = a["--server-public"];
  o.principals = {Principal{"bench", Role::kSite, a["--client-public"]}};
  o.tuning.max_chunk_bytes = U(a, "--chunk");
  auto server = Server::Bind(o);
  if (!server.ok()) Die(server.status().ToString());
  std::printf("%s\n", (*server)->endpoint().c_str());
  std::fflush(stdout);
  BlobSender sender(**store, StreamOptions{U(a, "--chunk"), static_cast<uint32_t>(U(a, "--window"))});
  auto idle_since = Clock::now();
  while (Clock::now() - idle_since < std::chrono::seconds(10)) {
    auto r = (*server)->Receive(std::chrono::milliseconds(200));
    if (!r.ok() || !r->has_value()) continue;
    idle_since = Clock::now();
    const auto& in = **r;
    if (!in.envelope.ok()) continue;
    if (std::holds_alternative<Ack>(in.envelope->message)) break;  // receiver is done
    if (const auto* req = std::get_if<BlobRequest>(&in.envelope->message)) {
      Status st = AnswerBlobRequest(**server, in.peer, sender, *req, in.envelope->message_id);
      if (!st.ok()) Die(st.ToString());
    }
  }
  std::printf("peak_rss_kb %ld\ncpu_s %.3f\n", PeakRssKb(), CpuSeconds());
  return 0;
}

int HanseRecv(Args& a) {
  auto store = BlobStore::Open(a["--dir"] + "/dst");
  if (!store.ok()) Die(store.status().ToString());
  ClientOptions o;
  o.endpoint = a["--endpoint"];
  o.server_public_key = a["--server-public"];
  o.public_key = a["--client-public"];
  o.secret_key = a["--client-secret"];
  o.tuning.max_chunk_bytes = U(a, "--chunk");
  auto client = Client::Connect(o);
  if (!client.ok()) Die(client.status().ToString());
  Status st = (*client)->WaitConnected(std::chrono::seconds(10));
  if (!st.ok()) Die(st.ToString());
  BlobReceiver receiver(**store, StreamOptions{U(a, "--chunk"), static_cast<uint32_t>(U(a, "--window"))});
  auto t0 = Clock::now();
  if (std::getenv("HANSE_BENCH_PROFILE")) {
    // Where the receiver's time goes (diagnostics only).
    double t_recv = 0, t_chunk = 0;
    std::string hash = a["--hash"];
    auto first = receiver.Start(hash, U(a, "--size"));
    for (auto& r : *first) { Envelope e; e.message = r; (void)(*client)->Send(e); }
    while (!receiver.IsComplete(hash)) {
      auto c0 = Clock::now();
      auto got = (*client)->Receive(std::chrono::milliseconds(1000));
      auto c1 = Clock::now();
      t_recv += std::chrono::duration<double>(c1 - c0).count();
      if (!got.ok() || !got->has_value()) continue;
      auto next = receiver.OnChunk(std::get<BlobChunk>((**got).message));
      if (!next.ok()) Die(next.status().ToString());
      for (auto& r : *next) { Envelope e; e.message = r; (void)(*client)->Send(e); }
      double dt = std::chrono::duration<double>(Clock::now() - c1).count();
      t_chunk += dt;
      std::fprintf(stderr, "chunk %.1f ms (wait %.1f ms)\n", dt * 1e3, std::chrono::duration<double>(c1 - c0).count() * 1e3);
    }
    std::fprintf(stderr, "receive wait %.3f s, OnChunk %.3f s\n", t_recv, t_chunk);
  } else {
    st = PullBlob(**client, receiver, a["--hash"], U(a, "--size"));
  }
  double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  if (!st.ok()) Die(st.ToString());
  Envelope done;
  done.message = Ack{"bench", "done"};
  (void)(*client)->Send(done);
  std::printf("seconds %.6f\npeak_rss_kb %ld\ncpu_s %.3f\n", secs, PeakRssKb(), CpuSeconds());
  return 0;
}

// ---- plain ZeroMQ roles (reference) ----

void SetCurveServer(zmq::socket_t& s, Args& a) {
  s.set(zmq::sockopt::curve_server, true);
  s.set(zmq::sockopt::curve_secretkey, a["--server-secret"]);
}

int PlainRecv(Args& a, bool curve) {
  zmq::context_t ctx(1);
  zmq::socket_t router(ctx, zmq::socket_type::router);
  if (curve) SetCurveServer(router, a);
  router.set(zmq::sockopt::rcvhwm, static_cast<int>(U(a, "--window")));
  router.bind("tcp://127.0.0.1:*");
  std::printf("%s\n", router.get(zmq::sockopt::last_endpoint).c_str());
  std::fflush(stdout);
  std::string path = a["--dir"] + (curve ? "/curve.out" : "/plain.out");
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) Die("open " + path);
  uint64_t size = U(a, "--size"), got = 0;
  // The sender waits for "go", as hanse's sender waits for the first request:
  // both clocks start when the receiver asks.
  zmq::message_t peer, hello;
  if (!router.recv(peer) || !router.recv(hello)) Die("recv");
  Clock::time_point t0 = Clock::now();
  router.send(peer, zmq::send_flags::sndmore);
  router.send(zmq::str_buffer("go"));
  while (got < size) {
    zmq::message_t id, body;
    if (!router.recv(id)) Die("recv");
    if (!router.recv(body)) Die("recv");
    size_t off = 0;
    while (off < body.size()) {
      ssize_t n = ::write(fd, static_cast<const char*>(body.data()) + off, body.size() - off);
      if (n < 0) Die("write");
      off += static_cast<size_t>(n);
    }
    got += body.size();
  }
  ::fsync(fd);
  ::close(fd);
  double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  std::printf("seconds %.6f\npeak_rss_kb %ld\ncpu_s %.3f\n", secs, PeakRssKb(), CpuSeconds());
  return 0;
}

int PlainSend(Args& a, bool curve) {
  zmq::context_t ctx(1);
  zmq::socket_t dealer(ctx, zmq::socket_type::dealer);
  if (curve) {
    dealer.set(zmq::sockopt::curve_serverkey, a["--server-public"]);
    dealer.set(zmq::sockopt::curve_publickey, a["--client-public"]);
    dealer.set(zmq::sockopt::curve_secretkey, a["--client-secret"]);
  }
  dealer.set(zmq::sockopt::sndhwm, static_cast<int>(U(a, "--window")));
  dealer.set(zmq::sockopt::linger, -1);
  dealer.connect(a["--endpoint"]);
  dealer.send(zmq::str_buffer("hello"));
  zmq::message_t go;
  if (!dealer.recv(go)) Die("recv go");
  std::string path = a["--dir"] + "/src/blobs/" + a["--hash"].substr(0, 2) + "/" + a["--hash"];
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) Die("open " + path);
  uint64_t chunk = U(a, "--chunk"), size = U(a, "--size");
  std::vector<char> buf(chunk);
  for (uint64_t off = 0; off < size; off += chunk) {
    size_t n = static_cast<size_t>(std::min(chunk, size - off));
    if (::pread(fd, buf.data(), n, static_cast<off_t>(off)) != static_cast<ssize_t>(n)) Die("read");
    dealer.send(zmq::buffer(buf.data(), n));
  }
  ::close(fd);
  dealer.close();
  ctx.close();  // waits (linger -1) until everything was handed to the kernel
  std::printf("peak_rss_kb %ld\ncpu_s %.3f\n", PeakRssKb(), CpuSeconds());
  return 0;
}

// ---- driver ----

struct Proc {
  pid_t pid = -1;
  FILE* out = nullptr;
};

Proc Spawn(const std::vector<std::string>& argv) {
  int fds[2];
  if (pipe(fds) != 0) Die("pipe");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  std::vector<char*> args;
  for (const auto& s : argv) args.push_back(const_cast<char*>(s.c_str()));
  args.push_back(nullptr);
  Proc p;
  if (posix_spawn(&p.pid, "/proc/self/exe", &fa, nullptr, args.data(), environ) != 0) Die("spawn");
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  p.out = fdopen(fds[0], "r");
  return p;
}

std::string Line(Proc& p) {
  char buf[512];
  if (!fgets(buf, sizeof buf, p.out)) return "";
  std::string s(buf);
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

// Reads "key value" lines until EOF, then reaps the process.
std::map<std::string, double> Finish(Proc& p) {
  std::map<std::string, double> kv;
  while (true) {
    std::string l = Line(p);
    if (l.empty()) break;
    auto sp = l.find(' ');
    if (sp != std::string::npos) kv[l.substr(0, sp)] = std::stod(l.substr(sp + 1));
  }
  fclose(p.out);
  int st = 0;
  waitpid(p.pid, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) Die("a bench process failed");
  return kv;
}

struct Figures {
  double mbps = 0, send_rss_mb = 0, recv_rss_mb = 0, send_cpu = 0, recv_cpu = 0;
};

Figures RunPair(const std::string& send_role, const std::string& recv_role, bool receiver_binds,
                const std::vector<std::string>& common, uint64_t size) {
  auto with = [&](const std::string& role, const std::string& endpoint) {
    std::vector<std::string> v = {"transfer_bench", "--role", role};
    v.insert(v.end(), common.begin(), common.end());
    if (!endpoint.empty()) {
      v.push_back("--endpoint");
      v.push_back(endpoint);
    }
    return v;
  };
  Proc first = Spawn(with(receiver_binds ? recv_role : send_role, ""));
  std::string endpoint = Line(first);
  if (endpoint.empty()) Die("no endpoint from " + (receiver_binds ? recv_role : send_role));
  Proc second = Spawn(with(receiver_binds ? send_role : recv_role, endpoint));
  auto a = Finish(second);
  auto b = Finish(first);
  auto& recv = receiver_binds ? b : a;
  auto& send = receiver_binds ? a : b;
  Figures f;
  f.mbps = static_cast<double>(size) / 1e6 / recv["seconds"];
  f.send_rss_mb = send["peak_rss_kb"] / 1024.0;
  f.recv_rss_mb = recv["peak_rss_kb"] / 1024.0;
  f.send_cpu = send["cpu_s"];
  f.recv_cpu = recv["cpu_s"];
  return f;
}

int Driver(Args& a) {
  uint64_t size = a.count("--size") ? std::stoull(a["--size"]) : (1ull << 30);
  uint64_t chunk = a.count("--chunk") ? std::stoull(a["--chunk"]) : (4ull << 20);
  uint64_t window = a.count("--window") ? std::stoull(a["--window"]) : 4;
  std::string dir = a.count("--dir") ? a["--dir"] : "";
  bool own_dir = dir.empty();
  if (own_dir) {
    std::string tmpl = (fs::temp_directory_path() / "hanse-transfer-XXXXXX").string();
    if (!mkdtemp(tmpl.data())) Die("mkdtemp");
    dir = tmpl;
  }
  // The blob: pseudo-random bytes written through the store in chunk-sized pieces.
  auto store = BlobStore::Open(dir + "/src");
  if (!store.ok()) Die(store.status().ToString());
  auto writer = (*store)->NewWriter();
  if (!writer.ok()) Die(writer.status().ToString());
  std::vector<uint64_t> buf(chunk / 8 + 1);
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (uint64_t off = 0; off < size; off += chunk) {
    for (auto& v : buf) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      v = x;
    }
    size_t n = static_cast<size_t>(std::min(chunk, size - off));
    Status st = (*writer)->Write(std::as_bytes(std::span<const uint64_t>(buf.data(), buf.size())).first(n));
    if (!st.ok()) Die(st.ToString());
  }
  auto hash = (*writer)->Finish();
  if (!hash.ok()) Die(hash.status().ToString());
  buf = {};

  char spub[41], ssec[41], cpub[41], csec[41];
  zmq_curve_keypair(spub, ssec);
  zmq_curve_keypair(cpub, csec);
  std::vector<std::string> common = {"--dir", dir, "--size", std::to_string(size), "--chunk", std::to_string(chunk),
                                     "--window", std::to_string(window), "--hash", *hash, "--server-public", spub,
                                     "--server-secret", ssec, "--client-public", cpub, "--client-secret", csec};
  std::printf("transfer_bench: %.1f MiB blob, %.1f MiB chunks, window %llu, loopback (each side its own process)\n",
              size / 1048576.0, chunk / 1048576.0, static_cast<unsigned long long>(window));
  Figures hanse = RunPair("hanse-send", "hanse-recv", false, common, size);
  Figures curve = RunPair("curve-send", "curve-recv", true, common, size);
  Figures plain = RunPair("plain-send", "plain-recv", true, common, size);
  auto row = [](const char* name, const Figures& f) {
    std::printf("%-36s %7.1f MB/s  peak RSS sender %6.1f MiB, receiver %6.1f MiB  cpu s/r %5.2f/%5.2f s\n", name,
                f.mbps, f.send_rss_mb, f.recv_rss_mb, f.send_cpu, f.recv_cpu);
  };
  row("hanse (CURVE, store, fsync, hash)", hanse);
  row("plain libzmq CURVE -> file", curve);
  row("plain libzmq TCP (no CURVE) -> file", plain);
  std::printf("ratio hanse / plain CURVE: %.2f (goal >= 0.75)\n", hanse.mbps / curve.mbps);
  std::printf("window x chunk = %.1f MiB\n", window * chunk / 1048576.0);
  if (own_dir) fs::remove_all(dir);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // stdout carries the role processes' results; logs go to stderr.
  spdlog::set_default_logger(spdlog::stderr_color_mt("transfer_bench"));
  spdlog::set_level(spdlog::level::warn);
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) a[argv[i]] = argv[i + 1];
  if (!a.count("--role")) return Driver(a);
  std::string role = a["--role"];
  if (role == "hanse-send") return HanseSend(a);
  if (role == "hanse-recv") return HanseRecv(a);
  if (role == "curve-recv") return PlainRecv(a, true);
  if (role == "curve-send") return PlainSend(a, true);
  if (role == "plain-recv") return PlainRecv(a, false);
  if (role == "plain-send") return PlainSend(a, false);
  Die("unknown role " + role);
}
