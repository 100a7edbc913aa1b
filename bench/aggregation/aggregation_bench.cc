// bench/aggregation: aggregation throughput against a plain streaming loop
// measured in the same run, and the anonymous memory each rule needs.
//
//   aggregation_bench [--params N] [--k K] [--tensors T] [--reps R] [--dir D] [--rules LIST]
//
// Creates a blob store under D (default: a fresh folder in /tmp, removed at the
// end) holding a global model of N fp32 parameters in T tensors and K fp32 (and
// K bf16) updates, then prints, as GB/s of update bytes read:
//   1. the FedAvg fold kernel over buffers in memory vs a plain acc[i] += w*x[i] loop;
//   2. FedAvg end to end (blob store -> new model in the store) vs a reference that
//      preads the same files block by block into reused buffers and runs the plain loop;
//   3. FedAdam, median, trimmed mean, Krum end to end, FedAvg with bf16 updates;
// and for each, the peak RssAnon above the level before it started (sampled every ms).
#include <fcntl.h>
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "aggregation/aggregate.h"
#include "aggregation/engine.h"  // RunEngine with a discarding writer: the breakdown line
#include "aggregation/kernels.h"
#include "core/blob_store.h"
#include "core/fsutil.h"
#include "core/safetensors.h"

namespace {

using hanse::BlobStore;
using hanse::DType;
using hanse::Status;
namespace agg = hanse::agg;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

double CpuClock(clockid_t id) {
  timespec ts{};
  clock_gettime(id, &ts);
  return static_cast<double>(ts.tv_sec) + ts.tv_nsec * 1e-9;
}

// Wall time and process CPU time (all threads but the RSS sampler). On a shared
// 2-core VM the CPU time is the steadier figure; the wall time includes waiting
// for the disk (fsync).
struct Timing {
  double wall = 1e9;
  double cpu = 1e9;
  void Best(const Timing& o) {
    wall = std::min(wall, o.wall);
    cpu = std::min(cpu, o.cpu);
  }
};

[[noreturn]] void Die(const std::string& what, const Status& s) {
  std::fprintf(stderr, "aggregation_bench: %s: %s\n", what.c_str(), s.ToString().c_str());
  std::exit(1);
}
template <class T>
T Must(hanse::Result<T> r, const std::string& what) {
  if (!r.ok()) Die(what, r.status());
  return std::move(r).value();
}
void Must(const Status& s, const std::string& what) {
  if (!s.ok()) Die(what, s);
}

long RssAnonKiB() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("RssAnon:", 0) == 0) return std::strtol(line.c_str() + 8, nullptr, 10);
  }
  return -1;
}

// Peak RssAnon above the level at Start(), sampled every millisecond.
class RssPeak {
 public:
  void Start() {
    malloc_trim(0);  // return what earlier cases freed, so the baseline is honest
    base_ = RssAnonKiB();
    peak_ = base_;
    stop_ = false;
    thread_ = std::thread([this] {
      while (!stop_) {
        long v = RssAnonKiB();
        if (v > peak_) peak_ = v;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      sampler_cpu_ = CpuClock(CLOCK_THREAD_CPUTIME_ID);
    });
  }
  double StopMiB() {
    stop_ = true;
    thread_.join();
    long v = RssAnonKiB();
    if (v > peak_) peak_ = v;
    return static_cast<double>(peak_ - base_) / 1024.0;
  }
  double sampler_cpu() const { return sampler_cpu_; }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<long> peak_{0};
  long base_ = 0;
  double sampler_cpu_ = 0;
  std::thread thread_;
};

// Deterministic cheap values (no RNG cost while writing GBs).
inline float Value(uint64_t i, uint32_t k) {
  uint32_t x = static_cast<uint32_t>(i * 2654435761u) ^ (k * 0x9e3779b9u);
  x ^= x >> 15;
  return (static_cast<float>(x & 0xffff) - 32768.0f) * (1.0f / 32768.0f) * 1e-3f;
}

// Writes a model of `tensors` tensors holding `params` values into the store, streaming.
std::string WriteModel(BlobStore& store, uint64_t params, uint32_t tensors, DType dtype, uint32_t k) {
  std::vector<hanse::TensorSpec> specs;
  std::vector<uint64_t> sizes;
  uint64_t left = params;
  for (uint32_t t = 0; t < tensors; ++t) {
    uint64_t n = t + 1 == tensors ? left : params / tensors;
    left -= n;
    specs.push_back({"layer" + std::to_string(t) + ".weight", dtype, {static_cast<int64_t>(n)}});
    sizes.push_back(n);
  }
  auto w = Must(store.NewWriter(), "new writer");
  auto sw = Must(hanse::SafetensorsWriter::Begin(specs, {}, [&](std::span<const std::byte> b) { return w->Write(b); }),
                 "safetensors writer");
  constexpr size_t kChunk = 1 << 20;
  std::vector<float> f(kChunk);
  std::vector<uint16_t> h(kChunk);
  uint64_t index = 0;
  for (uint64_t n : sizes) {
    for (uint64_t done = 0; done < n; done += kChunk) {
      size_t c = static_cast<size_t>(std::min<uint64_t>(kChunk, n - done));
      for (size_t i = 0; i < c; ++i) f[i] = (k == 0 ? 1.0f : 0.0f) + Value(index + i, k);
      index += c;
      if (dtype == DType::kF32) {
        Must(sw->Write(std::as_bytes(std::span(f).first(c))), "write");
      } else {
        agg::kernels::F32ToBF16(h.data(), f.data(), c);
        Must(sw->Write(std::as_bytes(std::span(h).first(c))), "write");
      }
    }
  }
  Must(sw->Finish(), "finish");
  return Must(w->Finish(), "commit");
}

// The reference: pread every file block by block into reused buffers, plain loops.
__attribute__((noinline)) void PlainFold(float* acc, const float* x, float w, size_t n) {
  for (size_t i = 0; i < n; ++i) acc[i] += w * x[i];
}

struct RefFile {
  std::unique_ptr<hanse::SafetensorsFile> st;
  hanse::UniqueFd fd;
};

// With `store`, the reference also writes its output (the same safetensors layout)
// through a BlobStore writer, like for like with Aggregate.
double ReferenceFedAvg(const std::filesystem::path& global, const std::vector<std::filesystem::path>& updates,
                       size_t block, float* checksum, BlobStore* store = nullptr,
                       std::string* stored_hash = nullptr) {
  auto t0 = Clock::now();
  std::vector<RefFile> files;
  for (const auto& p : updates) {
    RefFile f{Must(hanse::SafetensorsFile::Open(p), "open"), Must(hanse::OpenFd(p, O_RDONLY), "open")};
    files.push_back(std::move(f));
  }
  RefFile g{Must(hanse::SafetensorsFile::Open(global), "open"), Must(hanse::OpenFd(global, O_RDONLY), "open")};
  std::vector<float> acc(block), x(block), gb(block), out(block);
  const float w = 1.0f / static_cast<float>(updates.size());
  std::unique_ptr<BlobStore::Writer> bw;
  std::unique_ptr<hanse::SafetensorsWriter> sw;
  if (store) {
    bw = Must(store->NewWriter(), "writer");
    std::vector<hanse::TensorSpec> specs;
    for (const auto& t : g.st->tensors()) specs.push_back({t.name, t.dtype, t.shape});
    sw = Must(hanse::SafetensorsWriter::Begin(specs, g.st->metadata(),
                                              [&](std::span<const std::byte> b) { return bw->Write(b); }),
              "writer");
  }
  float sum = 0;
  for (const auto& t : g.st->tensors()) {
    const uint64_t numel = t.numel();
    for (uint64_t first = 0; first < numel; first += block) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(block, numel - first));
      auto bytes = std::as_writable_bytes(std::span(gb).first(n));
      Must(hanse::PreadFull(g.fd.get(), g.st->data_offset() + t.begin + first * 4, bytes, global).status(), "read");
      std::fill(acc.begin(), acc.begin() + static_cast<std::ptrdiff_t>(n), 0.0f);
      for (size_t k = 0; k < files.size(); ++k) {
        const hanse::TensorInfo* u = files[k].st->Find(t.name);
        auto xb = std::as_writable_bytes(std::span(x).first(n));
        Must(hanse::PreadFull(files[k].fd.get(), files[k].st->data_offset() + u->begin + first * 4, xb, updates[k])
                 .status(),
             "read");
        PlainFold(acc.data(), x.data(), w, n);
      }
      for (size_t i = 0; i < n; ++i) out[i] = gb[i] + acc[i];
      sum += out[n / 2];
      if (sw) Must(sw->Write(std::as_bytes(std::span(out).first(n))), "write");
    }
  }
  if (sw) {
    Must(sw->Finish(), "finish");
    *stored_hash = Must(bw->Finish(), "commit");
  }
  *checksum = sum;
  return Seconds(t0, Clock::now());
}

// Takes the new model's bytes and drops them: FedAvg without the storage commit.
class DiscardWriter final : public BlobStore::Writer {
 public:
  Status Write(std::span<const std::byte> b) override {
    bytes_ += b.size();
    return Status::Ok();
  }
  hanse::Result<std::string> Finish() override { return std::to_string(bytes_); }

 private:
  uint64_t bytes_ = 0;
};

struct Args {
  uint64_t params = 25'000'000;
  uint32_t k = 10;
  uint32_t tensors = 10;
  int reps = 3;
  std::string dir;
  std::string rules = "fedavg,fedavg_checked,fedadam,median,trimmed_mean,krum,fedavg_bf16";
  size_t block = size_t{1} << 16;
};

}  // namespace

int main(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", s.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (s == "--params") a.params = std::stoull(next());
    else if (s == "--k") a.k = static_cast<uint32_t>(std::stoul(next()));
    else if (s == "--tensors") a.tensors = static_cast<uint32_t>(std::stoul(next()));
    else if (s == "--reps") a.reps = std::stoi(next());
    else if (s == "--dir") a.dir = next();
    else if (s == "--rules") a.rules = next();
    else if (s == "--block") a.block = std::stoull(next());
    else {
      std::fprintf(stderr, "usage: aggregation_bench [--params N] [--k K] [--tensors T] [--reps R] [--dir D] [--rules a,b] [--block B]\n");
      return 2;
    }
  }
  bool own_dir = a.dir.empty();
  if (own_dir) {
    char tmpl[] = "/tmp/hanse-agg-bench-XXXXXX";
    if (!mkdtemp(tmpl)) return 1;
    a.dir = tmpl;
  }
  const double update_bytes = static_cast<double>(a.params) * 4.0 * a.k;  // fp32 update bytes per aggregation
  std::printf("aggregation bench: K = %u updates of %" PRIu64 " fp32 parameters (%.0f MB each) in %u tensors, block %zu elements\n",
              a.k, a.params, a.params * 4 / 1e6, a.tensors, a.block);

  auto store = Must(BlobStore::Open(a.dir), "open store");
  auto t0 = Clock::now();
  std::string global_hash = WriteModel(*store, a.params, a.tensors, DType::kF32, 0);
  std::vector<std::string> f32, bf16;
  for (uint32_t k = 1; k <= a.k; ++k) f32.push_back(WriteModel(*store, a.params, a.tensors, DType::kF32, k));
  bool want_bf16 = a.rules.find("fedavg_bf16") != std::string::npos;
  if (want_bf16) {
    for (uint32_t k = 1; k <= a.k; ++k) bf16.push_back(WriteModel(*store, a.params, a.tensors, DType::kBF16, k));
  }
  std::printf("setup: wrote the store in %.1f s\n", Seconds(t0, Clock::now()));

  std::filesystem::path global = store->PathOf(global_hash);
  std::vector<std::filesystem::path> update_paths;
  for (const auto& h : f32) update_paths.push_back(store->PathOf(h));
  auto gfile = Must(hanse::SafetensorsFile::Open(global), "open global");
  agg::ModelSchema schema = Must(agg::SchemaFromModel(*gfile), "schema");
  // Norms as measured on arrival (the coordinator validates each update as it comes in).
  std::vector<double> norms;
  for (const auto& p : update_paths) norms.push_back(Must(agg::ValidateUpdateFile(p, schema, std::nullopt), "validate").l2_norm);
  std::vector<double> norms_bf16;
  for (const auto& h : bf16) {
    norms_bf16.push_back(Must(agg::ValidateUpdateFile(store->PathOf(h), schema, std::nullopt), "validate").l2_norm);
  }

  // ---- 1. kernel over buffers in memory ----
  {
    const size_t m = static_cast<size_t>(std::min<uint64_t>(a.params, 4u << 20));  // 16 MiB per buffer: not cache resident
    std::vector<std::vector<float>> xs(a.k, std::vector<float>(m));
    for (uint32_t k = 0; k < a.k; ++k) {
      for (size_t i = 0; i < m; ++i) xs[k][i] = Value(i, k + 1);
    }
    std::vector<float> acc(m, 0.0f);
    double best_kernel = 1e9, best_plain = 1e9;
    for (int r = 0; r < std::max(3, a.reps); ++r) {
      auto s = Clock::now();
      for (uint32_t k = 0; k < a.k; ++k) agg::kernels::FoldF32(acc.data(), xs[k].data(), 0.1f, m);
      best_kernel = std::min(best_kernel, Seconds(s, Clock::now()));
      s = Clock::now();
      for (uint32_t k = 0; k < a.k; ++k) PlainFold(acc.data(), xs[k].data(), 0.1f, m);
      best_plain = std::min(best_plain, Seconds(s, Clock::now()));
    }
    const double bytes = static_cast<double>(m) * 4.0 * a.k;
    std::printf("\n1. fold kernel in memory (%u x %.0f MiB, best of %d): kernel %.2f GB/s, plain loop %.2f GB/s, ratio %.2f (acc[0]=%g)\n",
                a.k, m * 4 / 1048576.0, std::max(3, a.reps), bytes / best_kernel / 1e9, bytes / best_plain / 1e9,
                best_plain / best_kernel, acc[0]);
  }

  // ---- 2. FedAvg end to end vs reference ----
  // Runs fn once; returns its wall and CPU time and the peak RssAnon above the start.
  // Before each measured run: the previous run's output is removed and the file
  // system synced (untimed), so no run pays for the one before it.
  hanse::UniqueFd store_fd = Must(hanse::OpenFd(a.dir, O_RDONLY | O_DIRECTORY), "open store dir");
  auto measure = [&](const std::function<void()>& fn, double* mib) {
    syncfs(store_fd.get());
    RssPeak rss;
    rss.Start();
    const double c0 = CpuClock(CLOCK_PROCESS_CPUTIME_ID);
    const auto w0 = Clock::now();
    fn();
    Timing t;
    t.wall = Seconds(w0, Clock::now());
    const double c1 = CpuClock(CLOCK_PROCESS_CPUTIME_ID);
    *mib = rss.StopMiB();
    t.cpu = c1 - c0 - rss.sampler_cpu();
    return t;
  };
  auto run = [&](agg::Rule rule, const std::vector<std::string>& hashes, const std::vector<double>* n,
                 const std::function<void(agg::RuleOptions&)>& tweak, double* mib, bool discard = false) {
    agg::AggregateRequest req;
    req.global_model = global;
    req.schema = schema;
    req.options.rule = rule;
    req.options.block_elems = a.block;
    if (tweak) tweak(req.options);
    for (size_t i = 0; i < hashes.size(); ++i) {
      char site[32];
      std::snprintf(site, sizeof site, "site%02zu", i);
      std::optional<double> norm;
      if (n) norm = (*n)[i];
      req.updates.push_back({site, 100 + i, store->PathOf(hashes[i]), norm});
    }
    agg::AggregateResult res;
    Timing t = measure(
        [&] {
          if (discard) {
            auto make = []() -> hanse::Result<std::unique_ptr<BlobStore::Writer>> {
              return std::make_unique<DiscardWriter>();
            };
            res = Must(agg::RunEngine(req, agg::EngineMode{}, make, make), "aggregate (discard)");
          } else {
            res = Must(agg::Aggregate(req, *store), std::string("aggregate ") + agg::RuleName(rule));
          }
        },
        mib);
    if (!discard) {
      Must(store->Remove(res.model_hash), "remove");
      if (res.state_hash) Must(store->Remove(*res.state_hash), "remove");
    }
    return t;
  };
  auto gbs = [&](double secs) { return update_bytes / secs / 1e9; };
  const double kb = static_cast<double>(a.k) * a.block * 4 / 1048576.0;
  std::printf("   (RSS goal: < 64 MiB + K x block = %.1f MiB)\n", 64 + kb);
  std::printf("\n2. FedAvg end to end, store -> new model in the store (best of %d, interleaved, storing runs in\n"
              "   alternating order; GB/s of update bytes, by wall time and by process CPU time)\n", a.reps);
  {
    Timing ref, agg_t, discard, ref_store;
    double ref_mib = 0, agg_mib = 0, mib = 0;
    float checksum = 0;
    ReferenceFedAvg(global, update_paths, a.block, &checksum);  // untimed: warms the page cache
    for (int r = 0; r < a.reps; ++r) {
      ref.Best(measure([&] { ReferenceFedAvg(global, update_paths, a.block, &checksum); }, &mib));
      ref_mib = std::max(ref_mib, mib);
      // The two storing runs swap places every repetition (a writer that follows a
      // freshly removed 100 MB file gets its page cache pages for free).
      for (int which = 0; which < 2; ++which) {
        if ((which == 0) == (r % 2 == 0)) {
          std::string h;
          ref_store.Best(
              measure([&] { ReferenceFedAvg(global, update_paths, a.block, &checksum, store.get(), &h); }, &mib));
          Must(store->Remove(h), "remove");
        } else {
          agg_t.Best(run(agg::Rule::kFedAvg, f32, &norms, nullptr, &mib));
          agg_mib = std::max(agg_mib, mib);
        }
      }
      discard.Best(run(agg::Rule::kFedAvg, f32, &norms, nullptr, &mib, true));
    }
    std::printf("   reference (pread blocks + plain loop, no output):      wall %5.2f GB/s  cpu %5.2f GB/s  peak RssAnon +%.1f MiB\n",
                gbs(ref.wall), gbs(ref.cpu), ref_mib);
    std::printf("   hanse FedAvg (validated on arrival; new model stored): wall %5.2f GB/s  cpu %5.2f GB/s  peak RssAnon +%.1f MiB\n",
                gbs(agg_t.wall), gbs(agg_t.cpu), agg_mib);
    std::printf("   RATIO hanse / reference: wall %.2f  cpu %.2f  (goal >= 0.9)\n", ref.wall / agg_t.wall, ref.cpu / agg_t.cpu);
    std::printf("   breakdown: hanse FedAvg with the new model discarded:  wall %5.2f GB/s  cpu %5.2f GB/s  -> ratio wall %.2f  cpu %.2f\n",
                gbs(discard.wall), gbs(discard.cpu), ref.wall / discard.wall, ref.cpu / discard.cpu);
    std::printf("   like for like: reference storing its output through the same BlobStore writer:\n"
                "                                                          wall %5.2f GB/s  cpu %5.2f GB/s  -> ratio wall %.2f  cpu %.2f\n",
                gbs(ref_store.wall), gbs(ref_store.cpu), ref_store.wall / agg_t.wall, ref_store.cpu / agg_t.cpu);
  }

  // ---- 3. the other rules ----
  std::printf("\n3. other rules end to end, new model (and state) stored (one run each; GB/s of fp32 update bytes = K x %.0f MB)\n",
              a.params * 4 / 1e6);
  struct Case {
    const char* name;
    agg::Rule rule;
    bool bf;
    bool checked;
    std::function<void(agg::RuleOptions&)> tweak;
  };
  std::vector<Case> cases = {
      {"fedavg_checked", agg::Rule::kFedAvg, false, true, nullptr},
      {"fedadam", agg::Rule::kFedAdam, false, false, nullptr},
      {"median", agg::Rule::kMedian, false, false, nullptr},
      {"trimmed_mean", agg::Rule::kTrimmedMean, false, false, [](agg::RuleOptions& o) { o.trim_beta = 0.1; }},
      {"krum", agg::Rule::kKrum, false, false, [](agg::RuleOptions& o) { o.krum_f = 2; }},
      {"fedavg_bf16", agg::Rule::kFedAvg, true, false, nullptr},
  };
  for (const auto& c : cases) {
    if (("," + a.rules + ",").find("," + std::string(c.name) + ",") == std::string::npos) continue;
    double mib = 0;
    const auto& hashes = c.bf ? bf16 : f32;
    const auto* n = c.checked ? nullptr : (c.bf ? &norms_bf16 : &norms);
    Timing t = run(c.rule, hashes, n, c.tweak, &mib);
    std::printf("   %-15s wall %5.2f GB/s (%5.2f s)  cpu %5.2f GB/s  peak RssAnon +%.1f MiB%s\n", c.name, gbs(t.wall), t.wall,
                gbs(t.cpu), mib, c.checked ? "  (values and norms checked in Aggregate: one more pass)" : "");
  }

  if (own_dir) {
    std::error_code ec;
    std::filesystem::remove_all(a.dir, ec);
  }
  return 0;
}
