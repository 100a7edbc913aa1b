// bench/train: local training speed of hanse's TorchTrainer against PyTorch
// (Debian's python3-torch) on the same model, data, initial weights, batch
// size, optimizer and thread count, measured in the same run.
//
//   bench_train [--arch mlp|cnn|both] [--mlp-examples N] [--cnn-examples N]
//               [--threads T] [--batch B] [--repeats R] [--python /usr/bin/python3]
//               [--malloc-heap]
//
// hanse's figure is one whole Train() call: read the global model (safetensors),
// train one epoch, write the update (the time to load, train and package one
// update); PyTorch's is its training loop only. Best of R repeats each.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "worker/dataset.h"
#include "worker/torch_trainer.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

const fs::path kFashion = "/usr/share/datasets/fashion-mnist";

struct Options {
  std::string arch = "both";
  uint64_t mlp_examples = 60000;
  uint64_t cnn_examples = 10000;
  int threads = 2;
  uint32_t batch = 64;
  int repeats = 3;
  std::string python = "/usr/bin/python3";
};

double Seconds(Clock::time_point a) { return std::chrono::duration<double>(Clock::now() - a).count(); }

std::string RunCapture(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  pclose(p);
  return out;
}

struct Row {
  std::string arch;
  uint64_t examples = 0;
  double hanse_s = 0, torch_s = 0, hanse_loss = 0, torch_loss = 0;
};

int RunArch(const Options& o, const std::string& arch, const hanse::site::Dataset& full, const fs::path& dir,
            Row* row) {
  const uint64_t n = arch == "cnn" ? o.cnn_examples : o.mlp_examples;
  // The first n training examples, shared byte for byte with the reference.
  hanse::site::Dataset d;
  d.name = full.name;
  d.sample_shape = full.sample_shape;
  d.feature_count = full.feature_count;
  d.num_classes = full.num_classes;
  const uint64_t m = std::min<uint64_t>(n, full.train.size());
  d.train.features.assign(full.train.features.begin(),
                          full.train.features.begin() + static_cast<std::ptrdiff_t>(m * d.feature_count));
  d.train.labels.assign(full.train.labels.begin(), full.train.labels.begin() + static_cast<std::ptrdiff_t>(m));
  {
    std::ofstream fx(dir / (arch + ".x"), std::ios::binary);
    fx.write(reinterpret_cast<const char*>(d.train.features.data()),
             static_cast<std::streamsize>(d.train.features.size() * sizeof(float)));
    std::ofstream fy(dir / (arch + ".y"), std::ios::binary);
    fy.write(reinterpret_cast<const char*>(d.train.labels.data()),
             static_cast<std::streamsize>(d.train.labels.size() * sizeof(int64_t)));
  }
  const std::vector<uint32_t> hidden = arch == "mlp" ? std::vector<uint32_t>{256} : std::vector<uint32_t>{};
  const fs::path init = dir / (arch + "-init.safetensors");
  auto st = hanse::train::InitModel(arch, hidden, d.feature_count, 10, 1, init);
  if (!st.ok()) {
    std::cerr << "init-model: " << st.ToString() << "\n";
    return 1;
  }
  hanse::proto::Task task;
  task.task_id = "bench";
  task.job_id = "bench";
  task.architecture = arch;
  task.training.hidden = hidden;
  task.training.epochs = 1;
  task.training.batch_size = o.batch;
  task.training.optimizer = "sgd";
  task.training.lr = 0.05;
  task.seed = 1;
  hanse::site::TrainInput in;
  in.task = &task;
  in.model_file = init;
  in.dataset = &d;
  in.site_name = "bench";
  in.threads = o.threads;
  in.devices = {"cpu"};
  auto trainer = hanse::train::MakeTorchTrainer(o.threads);
  std::atomic<bool> cancelled{false};
  row->arch = arch;
  row->examples = m;
  row->hanse_s = 1e300;
  for (int r = 0; r < o.repeats; ++r) {
    auto t0 = Clock::now();
    auto out = trainer->Train(in, dir / (arch + "-update.safetensors"), cancelled);
    const double s = Seconds(t0);
    if (!out.ok()) {
      std::cerr << "train: " << out.status().ToString() << "\n";
      return 1;
    }
    row->hanse_s = std::min(row->hanse_s, s);
    row->hanse_loss = out->metrics[0].value;
  }
  std::ostringstream cmd;
  std::string hidden_arg;
  for (size_t i = 0; i < hidden.size(); ++i) {
    if (i) hidden_arg += ',';
    hidden_arg += std::to_string(hidden[i]);
  }
  fs::path script = fs::path(HANSE_SOURCE_DIR) / "bench/train/reference.py";
  cmd << o.python << " " << script << " --arch " << arch << " --hidden '" << hidden_arg << "' --features "
      << (dir / (arch + ".x")) << " --labels " << (dir / (arch + ".y")) << " --n " << m << " --init " << init
      << " --batch " << o.batch << " --lr 0.05 --threads " << o.threads << " --repeats " << o.repeats;
  const std::string text = RunCapture(cmd.str());
  try {
    auto j = nlohmann::json::parse(text.substr(text.find('{')));
    auto secs = j.at("seconds").get<std::vector<double>>();
    row->torch_s = *std::min_element(secs.begin(), secs.end());
    row->torch_loss = j.at("loss").get<double>();
  } catch (const std::exception& e) {
    std::cerr << "reference failed (" << e.what() << "); output:\n" << text << "\n";
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // One BLAS thread per torch thread (TOOLCHAIN.md): OpenBLAS reads this at
  // load time, so set it and re-exec; the reference inherits the same value.
  bool reexec = false;
  if (!std::getenv("OPENBLAS_NUM_THREADS")) {
    setenv("OPENBLAS_NUM_THREADS", "1", 1);
    reexec = true;
  }
  // --malloc-heap: both processes take big blocks from the heap instead of
  // fresh mmap()s, whose first-touch page faults are costly on these VMs
  // (TOOLCHAIN.md). glibc reads these at start, hence the re-exec.
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--malloc-heap") == 0 && !std::getenv("MALLOC_MMAP_THRESHOLD_")) {
      setenv("MALLOC_MMAP_THRESHOLD_", "1073741824", 1);
      setenv("MALLOC_TRIM_THRESHOLD_", "1073741824", 1);
      reexec = true;
    }
  }
  if (reexec) execv("/proc/self/exe", argv);
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--arch") o.arch = next();
    else if (a == "--mlp-examples") o.mlp_examples = std::stoull(next());
    else if (a == "--cnn-examples") o.cnn_examples = std::stoull(next());
    else if (a == "--threads") o.threads = std::stoi(next());
    else if (a == "--batch") o.batch = static_cast<uint32_t>(std::stoul(next()));
    else if (a == "--repeats") o.repeats = std::stoi(next());
    else if (a == "--python") o.python = next();
    else if (a == "--malloc-heap") continue;
    else {
      std::cerr << "usage: bench_train [--arch mlp|cnn|both] [--mlp-examples N] [--cnn-examples N] [--threads T]"
                   " [--batch B] [--repeats R] [--python PATH] [--malloc-heap]\n";
      return 2;
    }
  }
  hanse::DatasetConfig c;
  c.name = "fashion-mnist";
  c.format = "idx";
  c.train_images = kFashion / "train-images-idx3-ubyte.gz";
  c.train_labels = kFashion / "train-labels-idx1-ubyte.gz";
  auto t0 = Clock::now();
  auto data = hanse::site::LoadDataset(c);
  const double load_s = Seconds(t0);
  if (!data.ok()) {
    std::cerr << data.status().ToString() << "\n";
    return 1;
  }
  char tmpl[] = "/tmp/hanse-bench-train-XXXXXX";
  if (!mkdtemp(tmpl)) return 1;
  const fs::path dir = tmpl;
  std::printf("bench/train: Fashion-MNIST (60000 train images, gzip IDX load %.2f s), batch %u, SGD lr 0.05, "
              "1 epoch, %d torch threads, OPENBLAS_NUM_THREADS=%s, malloc %s, best of %d\n",
              load_s, o.batch, o.threads, std::getenv("OPENBLAS_NUM_THREADS"),
              std::getenv("MALLOC_MMAP_THRESHOLD_") ? "heap (MALLOC_MMAP_THRESHOLD_=1 GiB)" : "glibc default",
              o.repeats);
  std::printf("%-5s %8s %14s %14s %8s %12s %12s %11s %11s\n", "arch", "examples", "hanse samp/s", "torch samp/s",
              "ratio", "hanse s", "torch s", "hanse loss", "torch loss");
  int rc = 0;
  for (std::string arch : {"mlp", "cnn"}) {
    if (o.arch != "both" && o.arch != arch) continue;
    Row r;
    if (RunArch(o, arch, *data, dir, &r) != 0) {
      rc = 1;
      continue;
    }
    const double hs = static_cast<double>(r.examples) / r.hanse_s, ts = static_cast<double>(r.examples) / r.torch_s;
    std::printf("%-5s %8llu %14.0f %14.0f %8.2f %12.3f %12.3f %11.4f %11.4f\n", arch.c_str(),
                static_cast<unsigned long long>(r.examples), hs, ts, hs / ts, r.hanse_s, r.torch_s, r.hanse_loss,
                r.torch_loss);
  }
  std::printf("ratio = hanse / PyTorch samples per second (goal >= 1.0); hanse s = one Train(): read the global "
              "model, train, write the update.\n");
  fs::remove_all(dir);
  return rc;
}
