// Built-in architectures, TorchScript modules and strict weight transfer.
#include "worker/models.h"

#include <fcntl.h>
#include <torch/script.h>

#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "core/fsutil.h"

namespace hanse::train {
namespace {

std::string ShapeString(const std::vector<int64_t>& s) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << ']';
  return os.str();
}

int64_t Product(const std::vector<int64_t>& s) {
  int64_t p = 1;
  for (auto d : s) p *= d;
  return p;
}

// mlp: fc1..fcK with ReLU between; input flattened.
struct MlpNet : torch::nn::Module {
  MlpNet(int64_t in, const std::vector<uint32_t>& hidden, int64_t classes) {
    int64_t prev = in;
    size_t k = 1;
    for (uint32_t h : hidden) {
      layers.push_back(register_module(LayerName("fc", k++, ""), torch::nn::Linear(prev, int64_t{h})));
      prev = h;
    }
    layers.push_back(register_module(LayerName("fc", k, ""), torch::nn::Linear(prev, classes)));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = x.reshape({x.size(0), -1});
    for (size_t i = 0; i + 1 < layers.size(); ++i) x = torch::relu(layers[i]->forward(x));
    return layers.back()->forward(x);
  }
  std::vector<torch::nn::Linear> layers;
};

// cnn: conv(C->16,3x3,pad1)-relu-maxpool2 -> conv(16->32,3x3,pad1)-relu-maxpool2
//      -> fc(32*(H/4)*(W/4) -> 128)-relu -> fc(128 -> classes). 1x28x28: fc1 in = 1568.
struct CnnNet : torch::nn::Module {
  CnnNet(int64_t channels, int64_t height, int64_t width, int64_t classes)
      : c(channels), h(height), w(width) {
    conv1 = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(channels, 16, 3).padding(1)));
    conv2 = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(16, 32, 3).padding(1)));
    fc1 = register_module("fc1", torch::nn::Linear(32 * (height / 4) * (width / 4), 128));
    fc2 = register_module("fc2", torch::nn::Linear(128, classes));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = x.reshape({x.size(0), c, h, w});
    x = torch::max_pool2d(torch::relu(conv1->forward(x)), 2);
    x = torch::max_pool2d(torch::relu(conv2->forward(x)), 2);
    x = x.reshape({x.size(0), -1});
    return fc2->forward(torch::relu(fc1->forward(x)));
  }
  int64_t c, h, w;
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};

template <class Net>
class BuiltinModel final : public Model {
 public:
  explicit BuiltinModel(std::shared_ptr<Net> net) : net_(std::move(net)) {}
  torch::Tensor Forward(const torch::Tensor& x) override { return net_->forward(x); }
  NamedTensors Parameters() override {
    NamedTensors out;
    for (const auto& item : net_->named_parameters(/*recurse=*/true)) out.emplace_back(item.key(), item.value());
    return out;
  }
  void SetTraining(bool on) override { net_->train(on); }
  void To(const torch::Device& device) override { net_->to(device); }

 private:
  std::shared_ptr<Net> net_;
};

class ScriptModel final : public Model {
 public:
  explicit ScriptModel(torch::jit::Module m) : m_(std::move(m)) {}
  torch::Tensor Forward(const torch::Tensor& x) override { return m_.forward({x}).toTensor(); }
  NamedTensors Parameters() override {
    NamedTensors out;
    for (const auto& p : m_.named_parameters(/*recurse=*/true)) out.emplace_back(p.name, p.value);
    return out;
  }
  void SetTraining(bool on) override { m_.train(on); }
  void To(const torch::Device& device) override { m_.to(device); }

 private:
  torch::jit::Module m_;
};

}  // namespace

std::string LayerName(std::string_view prefix, size_t k, std::string_view suffix) {
  // Appends rather than `"fc" + std::to_string(k)`, which trips g++ 12's
  // -Wrestrict false positive (GCC PR 105329).
  std::string s(prefix);
  s += std::to_string(k);
  s += suffix;
  return s;
}

Result<DType> ToDType(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return DType::kF32;
    case torch::kFloat16: return DType::kF16;
    case torch::kBFloat16: return DType::kBF16;
    case torch::kInt64: return DType::kI64;
    case torch::kInt32: return DType::kI32;
    default: return Status::InvalidArgument(std::string("unsupported tensor dtype ") + c10::toString(t));
  }
}

Result<std::unique_ptr<Model>> MakeModel(const ModelSpec& spec) {
  if (spec.num_classes < 1) return Status::InvalidArgument("model: number of classes must be >= 1");
  const int64_t features = Product(spec.sample_shape);
  try {
    if (spec.arch == "mlp") {
      if (spec.sample_shape.empty() || features < 1)
        return Status::InvalidArgument("mlp: input shape " + ShapeString(spec.sample_shape) + " is empty");
      for (uint32_t h : spec.hidden)
        if (h == 0) return Status::InvalidArgument("mlp: hidden sizes must be >= 1");
      return std::unique_ptr<Model>(std::make_unique<BuiltinModel<MlpNet>>(
          std::make_shared<MlpNet>(features, spec.hidden, spec.num_classes)));
    }
    if (spec.arch == "cnn") {
      std::vector<int64_t> s = spec.sample_shape;
      if (s.size() == 2) s.insert(s.begin(), 1);
      if (s.size() != 3 || s[0] < 1 || s[1] < 4 || s[2] < 4)
        return Status::InvalidArgument("cnn: needs images [C, H, W] with H, W >= 4, got input shape " +
                                       ShapeString(spec.sample_shape));
      return std::unique_ptr<Model>(
          std::make_unique<BuiltinModel<CnnNet>>(std::make_shared<CnnNet>(s[0], s[1], s[2], spec.num_classes)));
    }
    if (spec.arch == "torchscript") {
      if (spec.module_file.empty()) return Status::InvalidArgument("torchscript: no module file");
      std::error_code ec;
      if (!std::filesystem::is_regular_file(spec.module_file, ec))
        return Status::NotFound("torchscript: " + spec.module_file.string() + ": no such file");
      // torch.jit.save writes a zip archive; anything else (a pickled nn.Module
      // from torch.save, a safetensors file) gets a message that says so.
      char magic[4] = {};
      {
        std::ifstream f(spec.module_file, std::ios::binary);
        f.read(magic, sizeof magic);
      }
      if (std::memcmp(magic, "PK\x03\x04", 4) != 0)
        return Status::InvalidArgument("torchscript: " + spec.module_file.string() +
                                       ": not a TorchScript archive (no zip header; save it with torch.jit.save)");
      try {
        torch::jit::Module m = torch::jit::load(spec.module_file.string(), torch::kCPU);
        return std::unique_ptr<Model>(std::make_unique<ScriptModel>(std::move(m)));
      } catch (const std::exception& e) {
        std::string what = e.what();
        if (auto nl = what.find('\n'); nl != std::string::npos) what.resize(nl);
        return Status::InvalidArgument("torchscript: " + spec.module_file.string() +
                                       ": not a loadable TorchScript archive: " + what);
      }
    }
  } catch (const std::exception& e) {
    // c10::Error and jit load errors: a bad module file is bad input, not a bug.
    std::string what = e.what();
    if (auto nl = what.find('\n'); nl != std::string::npos) what.resize(nl);
    return Status::InvalidArgument(spec.arch + ": cannot build model: " + what);
  }
  return Status::InvalidArgument("unknown architecture '" + spec.arch + "' (mlp, cnn, torchscript)");
}

int64_t ClassesFromWeights(const SafetensorsFile& file, const ModelSpec& spec) {
  std::string last;
  if (spec.arch == "cnn") last = "fc2.weight";
  if (spec.arch == "mlp") last = LayerName("fc", spec.hidden.size() + 1, ".weight");
  const TensorInfo* t = last.empty() ? nullptr : file.Find(last);
  if (!t || t->shape.size() != 2) return 0;
  return t->shape[0];
}

Status LoadWeights(const SafetensorsFile& file, Model& model) {
  const auto params = model.Parameters();
  std::set<std::string> expected;
  torch::NoGradGuard no_grad;
  for (const auto& [name, p] : params) {
    expected.insert(name);
    const std::vector<int64_t> shape(p.sizes().begin(), p.sizes().end());
    HANSE_ASSIGN_OR_RETURN(DType want, ToDType(p.scalar_type()));
    const TensorInfo* t = file.Find(name);
    if (!t)
      return Status::InvalidArgument("model " + file.path().string() + ": tensor '" + name + "' missing (expected " +
                                     DTypeName(want) + " " + ShapeString(shape) + ")");
    if (t->dtype != want)
      return Status::InvalidArgument("model " + file.path().string() + ": tensor '" + name + "': dtype " +
                                     DTypeName(t->dtype) + ", expected " + DTypeName(want));
    if (t->shape != shape)
      return Status::InvalidArgument("model " + file.path().string() + ": tensor '" + name + "': shape " +
                                     ShapeString(t->shape) + ", expected " + ShapeString(shape));
    const auto bytes = file.Data(*t);
    HANSE_CHECK(bytes.size() == static_cast<size_t>(p.nbytes()), "size checked by the reader", name);
    if (p.device().is_cpu() && p.is_contiguous()) {
      std::memcpy(p.data_ptr(), bytes.data(), bytes.size());  // the mapping may be unaligned: memcpy
    } else {
      auto tmp = torch::empty(p.sizes(), torch::TensorOptions().dtype(p.scalar_type()));
      std::memcpy(tmp.data_ptr(), bytes.data(), bytes.size());
      p.copy_(tmp);
    }
  }
  for (const auto& t : file.tensors())
    if (!expected.count(t.name))
      return Status::InvalidArgument("model " + file.path().string() + ": unexpected tensor '" + t.name +
                                     "' (not a parameter of the architecture)");
  return Status::Ok();
}

Status WriteTensors(const NamedTensors& tensors, DType float_dtype, const std::filesystem::path& out,
                    const std::map<std::string, std::string>& metadata) {
  if (float_dtype != DType::kF32 && float_dtype != DType::kBF16)
    return Status::InvalidArgument("update dtype must be F32 or BF16");
  std::vector<TensorSpec> specs;
  std::vector<torch::Tensor> cpu;
  for (const auto& [name, t] : tensors) {
    HANSE_ASSIGN_OR_RETURN(DType own, ToDType(t.scalar_type()));
    TensorSpec s;
    s.name = name;
    s.dtype = own == DType::kF32 ? float_dtype : own;
    s.shape.assign(t.sizes().begin(), t.sizes().end());
    specs.push_back(std::move(s));
    cpu.push_back(t.detach().to(torch::kCPU).contiguous());
  }
  HANSE_ASSIGN_OR_RETURN(UniqueFd fd, OpenFd(out, O_WRONLY | O_CREAT | O_TRUNC, 0644));
  const int raw_fd = fd.get();
  auto sink = [raw_fd, &out](std::span<const std::byte> b) { return WriteAll(raw_fd, b, out); };
  HANSE_ASSIGN_OR_RETURN(auto writer, SafetensorsWriter::Begin(specs, metadata, sink));
  std::vector<uint16_t> half;
  for (size_t i = 0; i < cpu.size(); ++i) {
    const auto& t = cpu[i];
    const auto* base = static_cast<const std::byte*>(t.data_ptr());
    if (specs[i].dtype == DType::kBF16 && t.scalar_type() == torch::kFloat32) {
      // Core's conversion (round to nearest even), the one aggregation uses.
      const float* f = t.data_ptr<float>();
      const int64_t n = t.numel();
      constexpr int64_t kChunk = 1 << 16;
      for (int64_t off = 0; off < n; off += kChunk) {
        const int64_t m = std::min(kChunk, n - off);
        half.resize(static_cast<size_t>(m));
        for (int64_t j = 0; j < m; ++j) half[static_cast<size_t>(j)] = F32ToBF16(f[off + j]);
        HANSE_RETURN_IF_ERROR(writer->Write(std::as_bytes(std::span<const uint16_t>(half))));
      }
    } else {
      HANSE_RETURN_IF_ERROR(writer->Write(std::span<const std::byte>(base, static_cast<size_t>(t.nbytes()))));
    }
  }
  HANSE_RETURN_IF_ERROR(writer->Finish());
  return fd.Close(out);
}

Status SaveWeights(Model& model, const std::filesystem::path& out, const std::map<std::string, std::string>& metadata) {
  NamedTensors params;
  for (auto& [name, p] : model.Parameters()) params.emplace_back(name, p.detach());
  return WriteTensors(params, DType::kF32, out, metadata);
}

}  // namespace hanse::train
