// TorchTrainer: local training and evaluation with LibTorch (CPU; CUDA and
// multi-GPU NCCL data parallelism when built with them).
#include <dlfcn.h>
#include <fnmatch.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>

#include "core/fsutil.h"
#include "core/sha256.h"
#include "worker/models.h"
#include "worker/torch_trainer.h"

#ifdef HANSE_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#endif
#ifdef HANSE_WITH_NCCL
#include "worker/nccl_group.h"
#endif

namespace hanse::train {
namespace {

using site::EvalOutput;
using site::Split;
using site::TrainInput;
using site::TrainOutput;

// ------------------------------------------------------------------ seeding

uint64_t SplitMix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t Fnv1a(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

// The training seed of a (job seed, round, site): stable across machines.
uint64_t TrainSeed(uint64_t job_seed, uint32_t round, std::string_view site) {
  return SplitMix(SplitMix(SplitMix(job_seed) ^ round) ^ Fnv1a(site));
}

// Own Fisher-Yates: std::shuffle's draws are implementation-defined.
void Shuffle(std::vector<int64_t>& v, std::mt19937_64& rng) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[static_cast<size_t>(rng() % i)]);
}

// ------------------------------------------------------------------ usage

double CpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

class UsageMeter {
 public:
  UsageMeter() : wall0_(std::chrono::steady_clock::now()), cpu0_(CpuSeconds()) {}
  proto::Usage Finish(const torch::Device& device, int gpus, std::vector<std::string> names) const {
    proto::Usage u;
    u.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0_).count();
    u.cpu_seconds = CpuSeconds() - cpu0_;
    u.device_kind = device.is_cuda() ? "cuda" : "cpu";
    u.gpu_seconds = device.is_cuda() ? u.wall_seconds * gpus : 0.0;  // device-seconds held
    u.devices = std::move(names);
    return u;
  }

 private:
  std::chrono::steady_clock::time_point wall0_;
  double cpu0_;
};

std::string CpuName(int threads) { return "cpu (" + std::to_string(threads) + " threads)"; }

std::vector<std::string> CudaNames(int gpus) {
  std::vector<std::string> names;
#ifdef HANSE_WITH_CUDA
  for (int i = 0; i < gpus; ++i) names.emplace_back(at::cuda::getDeviceProperties(i)->name);
#else
  (void)gpus;
#endif
  return names;
}

int CudaDeviceCount() {
#ifdef HANSE_WITH_CUDA
  return torch::cuda::is_available() ? static_cast<int>(torch::cuda::device_count()) : 0;
#else
  return 0;
#endif
}

std::string FirstLine(const char* what) {
  std::string s = what;
  if (auto nl = s.find('\n'); nl != std::string::npos) s.resize(nl);
  return s;
}

// ------------------------------------------------------------------ batches

// Copies rows of a split into one reused pinned-size buffer: no allocation
// (and no first-touch page cost) per batch. A batch aliases the buffer, so it
// is valid until the next Get; autograd has released it by then (backward ran).
class Batcher {
 public:
  Batcher(const Split& split, const std::vector<int64_t>& sample_shape, int64_t max_batch)
      : split_(split), feature_count_(std::max<int64_t>(1, [&] {
          int64_t p = 1;
          for (auto d : sample_shape) p *= d;
          return p;
        }())),
        sample_shape_(sample_shape),
        x_(torch::empty({max_batch, feature_count_}, torch::kFloat32)),
        y_(torch::empty({max_batch}, torch::kInt64)) {}

  std::pair<torch::Tensor, torch::Tensor> Get(const int64_t* rows, int64_t n) {
    float* x = x_.data_ptr<float>();
    int64_t* y = y_.data_ptr<int64_t>();
    const auto fc = static_cast<size_t>(feature_count_);
    for (int64_t i = 0; i < n; ++i) {
      const auto r = static_cast<size_t>(rows[i]);
      std::memcpy(x + static_cast<size_t>(i) * fc, split_.features.data() + r * fc, fc * sizeof(float));
      y[i] = split_.labels[r];
    }
    std::vector<int64_t> shape{n};
    shape.insert(shape.end(), sample_shape_.begin(), sample_shape_.end());
    return {x_.narrow(0, 0, n).view(shape), y_.narrow(0, 0, n)};
  }

 private:
  const Split& split_;
  int64_t feature_count_;
  std::vector<int64_t> sample_shape_;
  torch::Tensor x_, y_;
};

// ------------------------------------------------------------------ model setup

struct Loaded {
  std::unique_ptr<SafetensorsFile> file;
  std::unique_ptr<Model> model;
  ModelSpec spec;
};

// Builds the model for `spec` (classes taken from the weights when the file
// tells them) and loads the weights strictly.
Result<Loaded> LoadModel(ModelSpec spec, const std::filesystem::path& model_file, int64_t fallback_classes) {
  Loaded l;
  HANSE_ASSIGN_OR_RETURN(l.file, SafetensorsFile::Open(model_file));
  const int64_t from_file = ClassesFromWeights(*l.file, spec);
  spec.num_classes = from_file > 0 ? from_file : fallback_classes;
  HANSE_ASSIGN_OR_RETURN(l.model, MakeModel(spec));
  HANSE_RETURN_IF_ERROR(LoadWeights(*l.file, *l.model));
  l.spec = std::move(spec);
  return l;
}

Status CheckLabels(const Split& split, int64_t num_classes, const std::string& what) {
  for (size_t i = 0; i < split.labels.size(); ++i) {
    const int64_t l = split.labels[i];
    if (l < 0 || l >= num_classes)
      return Status::InvalidArgument(what + ": label " + std::to_string(l) + " of example " + std::to_string(i) +
                                     " is outside the model's " + std::to_string(num_classes) + " classes");
  }
  return Status::Ok();
}

Result<std::unique_ptr<torch::optim::Optimizer>> MakeOptimizer(const proto::TrainingConfig& t,
                                                               const std::vector<torch::Tensor>& params) {
  if (!(t.lr > 0)) return Status::InvalidArgument("training: lr must be > 0");
  if (t.optimizer == "sgd") {
    return std::unique_ptr<torch::optim::Optimizer>(std::make_unique<torch::optim::SGD>(
        params, torch::optim::SGDOptions(t.lr).momentum(t.momentum).weight_decay(t.weight_decay)));
  }
  if (t.optimizer == "adam") {
    return std::unique_ptr<torch::optim::Optimizer>(std::make_unique<torch::optim::Adam>(
        params, torch::optim::AdamOptions(t.lr).weight_decay(t.weight_decay)));
  }
  return Status::InvalidArgument("training: unknown optimizer '" + t.optimizer + "' (sgd, adam)");
}

bool MatchesAny(const std::vector<std::string>& patterns, const std::string& name) {
  if (patterns.empty()) return true;
  for (const auto& p : patterns)
    if (fnmatch(p.c_str(), name.c_str(), 0) == 0) return true;
  return false;
}

// ------------------------------------------------------------------ evaluation

struct EvalSums {
  double loss_sum = 0;
  int64_t correct = 0;
  int64_t n = 0;
};

EvalSums EvaluateOn(Model& model, const Split& split, const std::vector<int64_t>& sample_shape,
                    const torch::Device& device) {
  torch::NoGradGuard no_grad;
  model.SetTraining(false);
  constexpr int64_t kBatch = 1000;
  Batcher batcher(split, sample_shape, kBatch);
  std::vector<int64_t> rows(split.size());
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<int64_t>(i);
  EvalSums s;
  for (int64_t b = 0; b < static_cast<int64_t>(rows.size()); b += kBatch) {
    const int64_t n = std::min<int64_t>(kBatch, static_cast<int64_t>(rows.size()) - b);
    auto [x, y] = batcher.Get(rows.data() + b, n);
    x = x.to(device);
    y = y.to(device);
    auto logits = model.Forward(x);
    s.loss_sum += torch::nn::functional::cross_entropy(
                      logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                      .item<double>();
    s.correct += logits.argmax(1).eq(y).sum().item<int64_t>();
    s.n += n;
  }
  return s;
}

// ------------------------------------------------------------------ the trainer

class TorchTrainer final : public site::Trainer {
 public:
  explicit TorchTrainer(int threads) : threads_(std::max(1, threads)) {}

  Result<TrainOutput> Train(const TrainInput& in, const std::filesystem::path& out_file,
                            const std::atomic<bool>& cancelled) override {
    try {
      return TrainImpl(in, out_file, cancelled);
    } catch (const std::exception& e) {
      // c10::Error from a torch op: e.g. a TorchScript module whose forward does
      // not fit the data. Reported, not fatal to the daemon.
      return Status::InvalidArgument("training failed: " + FirstLine(e.what()));
    }
  }

  Result<EvalOutput> Evaluate(const TrainInput& in) override {
    try {
      return EvaluateImpl(in);
    } catch (const std::exception& e) {
      return Status::InvalidArgument("evaluation failed: " + FirstLine(e.what()));
    }
  }

  std::vector<proto::DeviceInfo> Devices() const override {
    std::vector<proto::DeviceInfo> out{{"cpu", CpuName(threads_)}};
    for (const auto& n : CudaNames(CudaDeviceCount())) out.push_back({"cuda", n});
    return out;
  }

 private:
  struct Placement {
    torch::Device device = torch::kCPU;
    int gpus = 0;  // 0 = cpu
  };

  Result<Placement> Place(const TrainInput& in) const {
    const auto& d = in.devices;
    const bool allow_cpu = d.empty() || std::find(d.begin(), d.end(), "cpu") != d.end();
    // "cuda" or "cuda:N" (the policy compares devices by kind).
    const bool allow_cuda =
        std::any_of(d.begin(), d.end(), [](const std::string& x) { return x.rfind("cuda", 0) == 0; });
    const int gpus = allow_cuda ? CudaDeviceCount() : 0;
    if (gpus > 0) return Placement{torch::Device(torch::kCUDA, 0), gpus};
    if (allow_cpu) return Placement{};
    return Status::FailedPrecondition("task allows only cuda, and no CUDA device is available in this build");
  }

  Result<ModelSpec> SpecFor(const TrainInput& in) const {
    if (!in.task) return Status::InvalidArgument("no task");
    if (!in.dataset) return Status::InvalidArgument("no dataset");
    ModelSpec spec;
    spec.arch = in.task->architecture;
    spec.hidden = in.task->training.hidden;
    spec.sample_shape = in.dataset->sample_shape;
    spec.module_file = in.module_file;
    return spec;
  }

  Result<TrainOutput> TrainImpl(const TrainInput& in, const std::filesystem::path& out_file,
                                const std::atomic<bool>& cancelled) {
    UsageMeter meter;
    HANSE_ASSIGN_OR_RETURN(ModelSpec spec, SpecFor(in));
    const proto::TrainingConfig& tc = in.task->training;
    if (tc.epochs < 1) return Status::InvalidArgument("training: epochs must be >= 1");
    if (tc.batch_size < 1) return Status::InvalidArgument("training: batch_size must be >= 1");
    if (tc.prox_mu < 0) return Status::InvalidArgument("training: prox_mu must be >= 0");
    DType update_dtype;
    if (tc.update_dtype == "f32" || tc.update_dtype == "F32") {
      update_dtype = DType::kF32;
    } else if (tc.update_dtype == "bf16" || tc.update_dtype == "BF16") {
      update_dtype = DType::kBF16;
    } else {
      return Status::InvalidArgument("training: update_dtype '" + tc.update_dtype + "' (f32, bf16)");
    }
    const Split& data = in.dataset->train;
    if (data.size() == 0) return Status::FailedPrecondition("dataset " + in.dataset->name + ": no training examples");

    torch::set_num_threads(std::max(1, in.threads > 0 ? in.threads : threads_));
    const uint64_t seed = TrainSeed(in.task->seed, in.task->round, in.site_name);
    torch::manual_seed(seed);  // TorchScript modules may draw (dropout)
    HANSE_ASSIGN_OR_RETURN(Placement place, Place(in));

    HANSE_ASSIGN_OR_RETURN(Loaded loaded, LoadModel(spec, in.model_file, in.dataset->num_classes));
    HANSE_RETURN_IF_ERROR(CheckLabels(data, loaded.spec.num_classes, "dataset " + in.dataset->name));
    Model& model = *loaded.model;

    // Trainable subset: frozen tensors get no gradient, no optimizer state, and
    // are not part of the update.
    std::vector<std::string> names;
    std::vector<torch::Tensor> trainable, global;
    for (auto& [name, p] : model.Parameters()) {
      const bool train = MatchesAny(tc.trainable, name);
      p.set_requires_grad(train);
      if (!train) continue;
      if (!p.is_floating_point())
        return Status::InvalidArgument("trainable tensor '" + name + "' is not floating point");
      names.push_back(name);
    }
    if (names.empty()) return Status::InvalidArgument("training: trainable patterns match no tensor of the model");

    // Example order: an optional per-round subset, reshuffled every epoch.
    std::mt19937_64 rng(seed);
    std::vector<int64_t> order(data.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
    if (tc.max_examples > 0 && tc.max_examples < order.size()) {
      Shuffle(order, rng);
      order.resize(tc.max_examples);
      std::sort(order.begin(), order.end());
    }

    EvalSums last_epoch;
    if (place.gpus > 1) {
#ifdef HANSE_WITH_NCCL
      HANSE_RETURN_IF_ERROR(TrainMultiGpu(loaded, place.gpus, tc, in, order, rng, cancelled, &last_epoch));
#else
      place.gpus = 1;  // built without NCCL: one GPU
#endif
    }
    if (place.gpus <= 1) {
      model.To(place.device);
      for (auto& [name, p] : model.Parameters())
        if (p.requires_grad()) trainable.push_back(p);
      for (const auto& p : trainable) global.push_back(p.detach().clone());
      HANSE_ASSIGN_OR_RETURN(auto opt, MakeOptimizer(tc, trainable));
      model.SetTraining(true);
      Batcher batcher(data, in.dataset->sample_shape, tc.batch_size);
      const auto n = static_cast<int64_t>(order.size());
      for (uint32_t epoch = 0; epoch < tc.epochs; ++epoch) {
        Shuffle(order, rng);
        const bool last = epoch + 1 == tc.epochs;
        for (int64_t b = 0; b < n; b += tc.batch_size) {
          if (cancelled.load(std::memory_order_relaxed)) return Status::FailedPrecondition("task cancelled");
          const int64_t m = std::min<int64_t>(tc.batch_size, n - b);
          auto [x, y] = batcher.Get(order.data() + b, m);
          if (place.device.is_cuda()) {
            x = x.to(place.device);
            y = y.to(place.device);
          }
          opt->zero_grad();
          auto logits = model.Forward(x);
          auto loss = torch::nn::functional::cross_entropy(logits, y);
          loss.backward();
          if (tc.prox_mu > 0) {
            // FedProx: d/dw mu/2 ||w - w_global||^2 = mu (w - w_global), added to the gradient.
            torch::NoGradGuard no_grad;
            for (size_t i = 0; i < trainable.size(); ++i)
              trainable[i].mutable_grad().add_(trainable[i].detach() - global[i], tc.prox_mu);
          }
          opt->step();
          if (last) {
            torch::NoGradGuard no_grad;
            last_epoch.loss_sum += loss.item<double>() * static_cast<double>(m);
            last_epoch.correct += logits.argmax(1).eq(y).sum().item<int64_t>();
            last_epoch.n += m;
          }
        }
      }
    }

    // Update = trained - global, trainable tensors only, in model order.
    NamedTensors update;
    {
      torch::NoGradGuard no_grad;
      size_t k = 0;
      for (auto& [name, p] : model.Parameters()) {
        if (!p.requires_grad()) continue;
        const TensorInfo* g = loaded.file->Find(name);
        HANSE_CHECK(g != nullptr, "checked by LoadWeights", name);
        torch::Tensor base = global.empty() ? torch::Tensor() : global[k];
        if (!base.defined()) {
          // Multi-GPU path keeps no device copy: re-read the global tensor.
          base = torch::empty(p.sizes(), torch::TensorOptions().dtype(p.scalar_type()));
          const auto bytes = loaded.file->Data(*g);
          std::memcpy(base.data_ptr(), bytes.data(), bytes.size());
        }
        update.emplace_back(name, p.detach().to(torch::kCPU) - base.to(torch::kCPU));
        ++k;
      }
    }
    std::map<std::string, std::string> meta{{"hanse.kind", "update"},
                                            {"hanse.job", in.task->job_id},
                                            {"hanse.round", std::to_string(in.task->round)},
                                            {"hanse.site", in.site_name}};
    HANSE_RETURN_IF_ERROR(WriteTensors(update, update_dtype, out_file, meta));

    TrainOutput out;
    out.update_file = out_file;
    out.examples = order.size();
    const double n = static_cast<double>(std::max<int64_t>(1, last_epoch.n));
    out.metrics = {{"train_loss", last_epoch.loss_sum / n},
                   {"train_accuracy", static_cast<double>(last_epoch.correct) / n}};
    const int gpus = std::max(1, place.gpus);
    out.usage = meter.Finish(place.device, gpus,
                             place.device.is_cuda() ? CudaNames(gpus) : std::vector<std::string>{CpuName(
                                                                            at::get_num_threads())});
    return out;
  }

#ifdef HANSE_WITH_NCCL
  // Data parallel over `gpus` local GPUs: each replica takes a contiguous slice
  // of every batch, gradients are summed with NCCL (each slice's loss is scaled
  // by its share of the batch, so the sum is the full-batch mean gradient), and
  // every replica takes the same optimizer step. Replica 0 is `loaded.model`.
  Status TrainMultiGpu(Loaded& loaded, int gpus, const proto::TrainingConfig& tc, const TrainInput& in,
                       std::vector<int64_t>& order, std::mt19937_64& rng, const std::atomic<bool>& cancelled,
                       EvalSums* last_epoch) {
    std::vector<Model*> models{loaded.model.get()};
    std::vector<std::unique_ptr<Model>> owned;
    for (int r = 1; r < gpus; ++r) {
      HANSE_ASSIGN_OR_RETURN(auto m, MakeModel(loaded.spec));
      HANSE_RETURN_IF_ERROR(LoadWeights(*loaded.file, *m));
      for (auto& [name, p] : m->Parameters()) p.set_requires_grad(MatchesAny(tc.trainable, name));
      models.push_back(m.get());
      owned.push_back(std::move(m));
    }
    std::vector<int> devices(static_cast<size_t>(gpus));
    for (int r = 0; r < gpus; ++r) devices[static_cast<size_t>(r)] = r;
    HANSE_ASSIGN_OR_RETURN(auto nccl, NcclGroup::Create(devices));
    std::vector<std::vector<torch::Tensor>> params(static_cast<size_t>(gpus)), globals(static_cast<size_t>(gpus));
    std::vector<std::unique_ptr<torch::optim::Optimizer>> opts;
    std::vector<void*> streams;
    for (int r = 0; r < gpus; ++r) {
      const auto ru = static_cast<size_t>(r);
      models[ru]->To(torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(r)));
      models[ru]->SetTraining(true);
      for (auto& [name, p] : models[ru]->Parameters())
        if (p.requires_grad()) params[ru].push_back(p);
      for (const auto& p : params[ru]) globals[ru].push_back(p.detach().clone());
      HANSE_ASSIGN_OR_RETURN(auto opt, MakeOptimizer(tc, params[ru]));
      opts.push_back(std::move(opt));
      streams.push_back(at::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(r)).stream());
    }
    Batcher batcher(in.dataset->train, in.dataset->sample_shape, tc.batch_size);
    const auto n = static_cast<int64_t>(order.size());
    std::vector<double> losses(static_cast<size_t>(gpus));
    std::vector<int64_t> corrects(static_cast<size_t>(gpus));
    for (uint32_t epoch = 0; epoch < tc.epochs; ++epoch) {
      Shuffle(order, rng);
      const bool last = epoch + 1 == tc.epochs;
      for (int64_t b = 0; b < n; b += tc.batch_size) {
        if (cancelled.load(std::memory_order_relaxed)) return Status::FailedPrecondition("task cancelled");
        const int64_t m = std::min<int64_t>(tc.batch_size, n - b);
        auto [x, y] = batcher.Get(order.data() + b, m);
        std::vector<std::thread> workers;
        std::vector<std::string> errors(static_cast<size_t>(gpus));
        for (int r = 0; r < gpus; ++r) {
          const int64_t lo = m * r / gpus, hi = m * (r + 1) / gpus;
          workers.emplace_back([&, r, lo, hi] {
            const auto ru = static_cast<size_t>(r);
            try {
              c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(r));
              opts[ru]->zero_grad();
              if (hi <= lo) return;  // batch smaller than the GPU count: zero gradient
              const torch::Device dev(torch::kCUDA, static_cast<c10::DeviceIndex>(r));
              auto xs = x.narrow(0, lo, hi - lo).to(dev);
              auto ys = y.narrow(0, lo, hi - lo).to(dev);
              auto logits = models[ru]->Forward(xs);
              auto loss = torch::nn::functional::cross_entropy(logits, ys);
              (loss * (static_cast<double>(hi - lo) / static_cast<double>(m))).backward();
              if (last) {
                losses[ru] += loss.item<double>() * static_cast<double>(hi - lo);
                corrects[ru] += logits.argmax(1).eq(ys).sum().item<int64_t>();
              }
            } catch (const std::exception& e) {
              errors[ru] = FirstLine(e.what());
            }
          });
        }
        for (auto& w : workers) w.join();
        for (const auto& e : errors)
          if (!e.empty()) return Status::InvalidArgument("training failed: " + e);
        std::vector<std::vector<NcclGroup::Buffer>> bufs(static_cast<size_t>(gpus));
        for (int r = 0; r < gpus; ++r) {
          const auto ru = static_cast<size_t>(r);
          for (auto& p : params[ru]) {
            if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
            bufs[ru].push_back({p.mutable_grad().data_ptr<float>(), static_cast<size_t>(p.numel())});
          }
        }
        HANSE_RETURN_IF_ERROR(nccl->AllReduceSum(bufs, streams));
        for (int r = 0; r < gpus; ++r) {
          const auto ru = static_cast<size_t>(r);
          c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(r));
          if (tc.prox_mu > 0) {
            torch::NoGradGuard no_grad;
            for (size_t i = 0; i < params[ru].size(); ++i)
              params[ru][i].mutable_grad().add_(params[ru][i].detach() - globals[ru][i], tc.prox_mu);
          }
          opts[ru]->step();
        }
        if (last) last_epoch->n += m;
      }
    }
    for (int r = 0; r < gpus; ++r) {
      last_epoch->loss_sum += losses[static_cast<size_t>(r)];
      last_epoch->correct += corrects[static_cast<size_t>(r)];
    }
    return Status::Ok();
  }
#endif

  Result<EvalOutput> EvaluateImpl(const TrainInput& in) {
    UsageMeter meter;
    HANSE_ASSIGN_OR_RETURN(ModelSpec spec, SpecFor(in));
    torch::set_num_threads(std::max(1, in.threads > 0 ? in.threads : threads_));
    HANSE_ASSIGN_OR_RETURN(Placement place, Place(in));
    HANSE_ASSIGN_OR_RETURN(Loaded loaded, LoadModel(spec, in.model_file, in.dataset->num_classes));
    const Split& test = in.dataset->test;
    HANSE_RETURN_IF_ERROR(CheckLabels(test, loaded.spec.num_classes, "dataset " + in.dataset->name));
    loaded.model->To(place.device);
    const EvalSums s = EvaluateOn(*loaded.model, test, in.dataset->sample_shape, place.device);
    EvalOutput out;
    out.examples = static_cast<uint64_t>(s.n);
    if (s.n > 0) {
      out.loss = s.loss_sum / static_cast<double>(s.n);
      out.accuracy = static_cast<double>(s.correct) / static_cast<double>(s.n);
    }
    out.usage = meter.Finish(place.device, 1,
                             place.device.is_cuda() ? CudaNames(1)
                                                    : std::vector<std::string>{CpuName(at::get_num_threads())});
    return out;
  }

  int threads_;
};

}  // namespace

std::unique_ptr<site::Trainer> MakeTorchTrainer(int threads) {
  // Torch threads around a single-threaded BLAS is the fastest setting measured
  // on small VMs (TOOLCHAIN.md); two thread pools spinning against each other
  // is the slowest. OpenBLAS reads its variable at load time, so set it through
  // its API, unless the admin chose a value.
  if (!std::getenv("OPENBLAS_NUM_THREADS")) {
    using SetThreads = void (*)(int);
    if (auto* set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) set(1);
  }
  return std::make_unique<TorchTrainer>(threads);
}

Status InitModel(const std::string& arch, const std::vector<uint32_t>& hidden, int64_t in_features,
                 int64_t num_classes, uint64_t seed, const std::filesystem::path& out) {
  try {
    ModelSpec spec;
    spec.arch = arch;
    spec.hidden = hidden;
    if (arch == "cnn") {
      spec.sample_shape = {1, 28, 28};
    } else if (arch == "mlp") {
      if (in_features < 1) return Status::InvalidArgument("init-model: mlp needs the input size (>= 1)");
      spec.sample_shape = {in_features};
    } else {
      return Status::InvalidArgument("init-model: unknown built-in architecture '" + arch + "' (mlp, cnn)");
    }
    spec.num_classes = num_classes > 0 ? num_classes : 10;
    torch::manual_seed(seed);
    HANSE_ASSIGN_OR_RETURN(auto model, MakeModel(spec));
    std::string hidden_text;
    for (size_t i = 0; i < hidden.size(); ++i) {
      if (i) hidden_text += ',';
      hidden_text += std::to_string(hidden[i]);
    }
    return SaveWeights(*model, out,
                       {{"hanse.kind", "model"}, {"hanse.arch", arch}, {"hanse.hidden", hidden_text},
                        {"hanse.seed", std::to_string(seed)}});
  } catch (const std::exception& e) {
    return Status::Internal("init-model: " + FirstLine(e.what()));
  }
}

Result<std::string> InitModuleWeights(const std::filesystem::path& module_file, const std::filesystem::path& out) {
  try {
    ModelSpec spec;
    spec.arch = "torchscript";
    spec.module_file = module_file;
    HANSE_ASSIGN_OR_RETURN(auto model, MakeModel(spec));
    const NamedTensors params = model->Parameters();
    if (params.empty())
      return Status::InvalidArgument("init-model: " + module_file.string() +
                                     ": the module has no parameters (nothing to train)");
    for (const auto& [name, p] : params) {
      if (p.scalar_type() != torch::kFloat32)
        return Status::InvalidArgument("init-model: " + module_file.string() + ": parameter '" + name + "' is " +
                                       c10::toString(p.scalar_type()) +
                                       "; hanse trains F32 parameters (call .float() before scripting)");
    }
    HANSE_ASSIGN_OR_RETURN(std::string bytes, ReadWholeFile(module_file));
    std::string module_hash = Sha256Hex(bytes);
    HANSE_RETURN_IF_ERROR(SaveWeights(*model, out,
                                      {{"hanse.kind", "model"},
                                       {"hanse.arch", "torchscript"},
                                       {"hanse.module_sha256", module_hash}}));
    return module_hash;
  } catch (const std::exception& e) {
    return Status::Internal("init-model: " + module_file.string() + ": " + FirstLine(e.what()));
  }
}

Result<site::EvalOutput> EvaluateModel(const std::string& arch, const std::vector<uint32_t>& hidden,
                                       const std::filesystem::path& model, const site::Split& split,
                                       const std::vector<int64_t>& sample_shape, int threads,
                                       const std::filesystem::path& module_file) {
  if (arch != "mlp" && arch != "cnn" && arch != "torchscript")
    return Status::InvalidArgument("evaluate: unknown architecture '" + arch + "' (mlp, cnn, torchscript)");
  if (arch == "torchscript" && module_file.empty())
    return Status::InvalidArgument("evaluate: --arch torchscript needs the module file (--module)");
  try {
    UsageMeter meter;
    torch::set_num_threads(std::max(1, threads));
    ModelSpec spec;
    spec.arch = arch;
    spec.hidden = hidden;
    spec.sample_shape = sample_shape;
    spec.module_file = module_file;
    if (arch == "mlp" && hidden.empty()) {
      // Command-line convenience: take the hidden sizes from the file's layers
      // (fc1..fcK-1 output sizes); the strict load still checks every tensor.
      auto file = SafetensorsFile::Open(model);
      if (!file.ok()) return file.status();
      for (size_t k = 1;; ++k) {
        const TensorInfo* w = (*file)->Find(LayerName("fc", k + 1, ".weight"));
        const TensorInfo* cur = (*file)->Find(LayerName("fc", k, ".weight"));
        if (!w || !cur || cur->shape.size() != 2) break;
        spec.hidden.push_back(static_cast<uint32_t>(cur->shape[0]));
      }
    }
    int64_t max_label = -1;
    for (auto l : split.labels) max_label = std::max(max_label, l);
    auto loaded_or = LoadModel(spec, model, std::max<int64_t>(1, max_label + 1));
    if (!loaded_or.ok()) {
      // A weights file that does not fit the module: say which module.
      if (arch == "torchscript" && loaded_or.status().code() == Code::kInvalidArgument &&
          loaded_or.status().message().rfind("model ", 0) == 0)
        return Status::InvalidArgument(loaded_or.status().message() + " (module " + module_file.string() + ")");
      return loaded_or.status();
    }
    Loaded loaded = std::move(loaded_or).value();
    HANSE_RETURN_IF_ERROR(CheckLabels(split, loaded.spec.num_classes, "evaluate"));
    const EvalSums s = EvaluateOn(*loaded.model, split, sample_shape, torch::kCPU);
    site::EvalOutput out;
    out.examples = static_cast<uint64_t>(s.n);
    if (s.n > 0) {
      out.loss = s.loss_sum / static_cast<double>(s.n);
      out.accuracy = static_cast<double>(s.correct) / static_cast<double>(s.n);
    }
    out.usage = meter.Finish(torch::kCPU, 1, {CpuName(at::get_num_threads())});
    return out;
  } catch (const std::exception& e) {
    return Status::InvalidArgument("evaluate: " + FirstLine(e.what()));
  }
}

}  // namespace hanse::train
