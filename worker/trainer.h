// The interface between the site daemon (hanse_site, no LibTorch) and the
// LibTorch training code (hanse_train). hanse-worker's main() wires the real
// TorchTrainer into the daemon.
#pragma once

#include <atomic>
#include <filesystem>
#include <string>
#include <vector>

#include "core/status.h"
#include "protocol/messages.h"
#include "worker/dataset.h"

namespace hanse::site {

struct TrainInput {
  const proto::Task* task = nullptr;          // kind, architecture, training config, seed, round
  std::filesystem::path model_file;           // global model (safetensors, in the blob store)
  std::filesystem::path module_file;          // TorchScript module when architecture = torchscript
  const Dataset* dataset = nullptr;
  std::string site_name;                      // part of the seed: (job seed, round, site)
  int threads = 1;
  std::vector<std::string> devices;           // allowed by policy: "cpu", "cuda"
};

struct TrainOutput {
  std::filesystem::path update_file;          // safetensors: new weights minus global (trainable tensors only)
  uint64_t examples = 0;
  std::vector<proto::Metric> metrics;         // train_loss, train_accuracy
  proto::Usage usage;
};

struct EvalOutput {
  uint64_t examples = 0;
  double loss = 0;
  double accuracy = 0;
  proto::Usage usage;
};

class Trainer {
 public:
  virtual ~Trainer() = default;
  // Writes the update to `out_file`. Errors: kInvalidArgument when the model does
  // not fit the architecture (names the tensor), kCancelled-like kFailedPrecondition
  // when `cancelled` turned true during training.
  virtual Result<TrainOutput> Train(const TrainInput& input, const std::filesystem::path& out_file,
                                    const std::atomic<bool>& cancelled) = 0;
  virtual Result<EvalOutput> Evaluate(const TrainInput& input) = 0;
  virtual std::vector<proto::DeviceInfo> Devices() const = 0;
};

}  // namespace hanse::site
