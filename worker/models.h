// Models for hanse_train: the built-in architectures (mlp, cnn) and TorchScript
// modules behind one small interface, plus strict safetensors <-> parameter
// transfer. Internal to hanse_train: it includes LibTorch, so only models.cc
// and trainer.cc include it (the public entry points are in torch_trainer.h).
#pragma once

#include <torch/torch.h>

#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/safetensors.h"
#include "core/status.h"

namespace hanse::train {

struct ModelSpec {
  std::string arch;                   // "mlp" | "cnn" | "torchscript"
  std::vector<uint32_t> hidden;       // mlp hidden sizes (may be empty: one Linear layer)
  std::vector<int64_t> sample_shape;  // e.g. {1, 28, 28} or {F}
  int64_t num_classes = 10;
  std::filesystem::path module_file;  // torchscript
};

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

class Model {
 public:
  virtual ~Model() = default;
  // Logits [B, classes] for a batch [B, sample_shape...] (any shape with B rows).
  virtual torch::Tensor Forward(const torch::Tensor& x) = 0;
  // Parameters in registration order; names are the safetensors tensor names.
  // The tensors alias the model's storage.
  virtual NamedTensors Parameters() = 0;
  virtual void SetTraining(bool on) = 0;
  virtual void To(const torch::Device& device) = 0;
};

// Builds a model with default (freshly initialized) weights; the caller seeds
// torch beforehand. Errors: unknown arch, input shape unfit for the arch,
// unreadable TorchScript file.
Result<std::unique_ptr<Model>> MakeModel(const ModelSpec& spec);

// Number of classes a built-in model file was made for (shape[0] of its last
// layer's weight), or 0 when it cannot be told.
int64_t ClassesFromWeights(const SafetensorsFile& file, const ModelSpec& spec);

// Copies every parameter from `file`, checking strictly: same set of names,
// same shapes and dtypes. Errors (kInvalidArgument) name the tensor.
Status LoadWeights(const SafetensorsFile& file, Model& model);

// Writes all parameters as safetensors (their own dtype; F32 for built-ins).
Status SaveWeights(Model& model, const std::filesystem::path& out,
                   const std::map<std::string, std::string>& metadata = {});

// "fc3.weight" = LayerName("fc", 3, ".weight").
std::string LayerName(std::string_view prefix, size_t k, std::string_view suffix);

// safetensors dtype of a torch dtype; kInvalidArgument for unsupported ones.
Result<DType> ToDType(torch::ScalarType t);

// Streams tensors (CPU-contiguous on the way) into a safetensors file.
// `dtype` kF32 or kBF16 for float tensors; other tensors keep their dtype.
Status WriteTensors(const NamedTensors& tensors, DType float_dtype, const std::filesystem::path& out,
                    const std::map<std::string, std::string>& metadata);

}  // namespace hanse::train
