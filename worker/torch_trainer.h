// LibTorch training for site workers (hanse_train). This header keeps LibTorch
// out: hanse-worker's main() and the tests use it without including torch.
//
// Built-in architectures and their tensor names (the safetensors names of a
// global model and of an update; all F32 in the model file):
//   mlp  (hidden = {h1, h2, ...}; input = feature count of the dataset, output = classes)
//        fc1.weight [h1, in], fc1.bias [h1], fc2.weight [h2, h1], ..., fcK.weight [classes, hK-1]
//        Linear + ReLU between layers; images are flattened.
//   cnn  (input 1x28x28, 10 classes unless the dataset says otherwise)
//        conv1.weight [16,1,3,3], conv1.bias [16], conv2.weight [32,16,3,3], conv2.bias [32],
//        fc1.weight [128, 1568], fc1.bias [128], fc2.weight [classes, 128], fc2.bias [classes]
//   torchscript: the module's named parameters (module_file), e.g. "0.weight", as
//        named_parameters() of the scripted module lists them (recursively, dotted
//        submodule names; buffers are not part of the model file and keep the
//        module's own values). InitModuleWeights writes them.
// Loading a global model checks names, shapes and dtypes strictly: a missing,
// extra or mis-shaped tensor is kInvalidArgument naming the tensor.
//
// Determinism: on CPU the same (model, data, training config, job seed, round,
// site) gives a bitwise-identical update for a given thread count.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "worker/dataset.h"
#include "worker/trainer.h"

namespace hanse::train {

// A Trainer that runs on CPU with `threads` intra-op threads (and on CUDA when
// built with it and the task's devices allow "cuda"). Thread-safe for one call
// at a time (the daemon runs one task at a time).
std::unique_ptr<site::Trainer> MakeTorchTrainer(int threads);

// init-model: writes freshly initialized F32 weights of a built-in arch ("mlp"
// needs `hidden`, `in_features` and `num_classes`; "cnn" uses 1x28x28 input and
// `num_classes`, 10 when <= 0) to `out` as safetensors. Seeded by `seed`.
Status InitModel(const std::string& arch, const std::vector<uint32_t>& hidden, int64_t in_features,
                 int64_t num_classes, uint64_t seed, const std::filesystem::path& out);

// init-model --arch torchscript: writes the named parameters of the TorchScript
// module `module_file` (torch.jit.save'd), with the values the file holds, to `out`
// as F32 safetensors: the initial model of a torchscript job. Returns the
// SHA-256 hex of the module file (the hash sites list in torchscript_hashes).
// Errors: kNotFound (no such file), kInvalidArgument (not a TorchScript
// archive, no parameters, a parameter that is not F32); each names the file.
Result<std::string> InitModuleWeights(const std::filesystem::path& module_file, const std::filesystem::path& out);

// evaluate: mean cross-entropy loss and accuracy of `model` (safetensors) on
// `split`, whose samples have `sample_shape` (e.g. {1,28,28} or {F}). `arch` is
// "mlp", "cnn" or "torchscript" (then `module_file` is the module the weights are
// loaded into). For mlp, an empty `hidden` means: take the hidden sizes from the file.
// Errors: kInvalidArgument when the model does not fit the arch or module (names
// the file and the tensor); kNotFound for a missing module file.
Result<site::EvalOutput> EvaluateModel(const std::string& arch, const std::vector<uint32_t>& hidden,
                                       const std::filesystem::path& model, const site::Split& split,
                                       const std::vector<int64_t>& sample_shape, int threads,
                                       const std::filesystem::path& module_file = {});

}  // namespace hanse::train
