// LibTorch training: init-model, strict weight loading, training that lowers
// the loss on real Fashion-MNIST, bitwise-identical updates for the same seed,
// trainable subsets, FedProx, bf16 updates, cancellation, TorchScript modules.
#include <torch/script.h>

#include <cmath>

#include "core/safetensors.h"
#include "core/sha256.h"
#include "test_util.h"
#include "worker/dataset.h"
#include "worker/torch_trainer.h"

namespace hanse::train {
namespace {

using hanse::testing::ReadFile;
using hanse::testing::TempDir;

// Fashion-MNIST, 2000 train and 1000 test examples, loaded once for the suite.
class TrainTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!hanse::testing::HaveFashionMnist()) return;
    auto d = site::LoadDataset(hanse::testing::FashionMnistConfig(2000, 1000));
    if (d.ok()) data_ = new site::Dataset(std::move(d).value());
  }
  static void TearDownTestSuite() {
    delete data_;
    data_ = nullptr;
  }
  void SetUp() override {
    if (!data_) GTEST_SKIP() << "dataset-fashion-mnist not installed";
    task_.task_id = "t1";
    task_.job_id = "job1";
    task_.round = 3;
    task_.architecture = "mlp";
    task_.training.hidden = {32};
    task_.training.epochs = 1;
    task_.training.batch_size = 32;
    task_.training.lr = 0.05;
    task_.seed = 7;
  }

  site::TrainInput Input(const std::filesystem::path& model) {
    site::TrainInput in;
    in.task = &task_;
    in.model_file = model;
    in.dataset = data_;
    in.site_name = "paris";
    in.threads = 1;
    in.devices = {"cpu"};
    return in;
  }

  std::filesystem::path InitMlp(uint64_t seed = 1) {
    auto p = dir_ / ("init-" + std::to_string(seed) + ".safetensors");
    EXPECT_OK(InitModel("mlp", task_.training.hidden, 784, 10, seed, p));
    return p;
  }

  static site::Dataset* data_;
  proto::Task task_;
  TempDir dir_;
  std::atomic<bool> not_cancelled_{false};
};
site::Dataset* TrainTest::data_ = nullptr;

// global + update, written as a new model (F32 updates).
std::filesystem::path ApplyUpdate(const std::filesystem::path& global, const std::filesystem::path& update,
                                  const std::filesystem::path& out) {
  auto g = SafetensorsFile::Open(global);
  auto u = SafetensorsFile::Open(update);
  EXPECT_TRUE(g.ok() && u.ok());
  std::vector<OwnedTensor> tensors;
  for (const auto& t : (*g)->tensors()) {
    OwnedTensor o{t.name, t.dtype, t.shape, {}};
    auto gb = (*g)->Data(t);
    o.bytes.assign(reinterpret_cast<const char*>(gb.data()), gb.size());
    if (const TensorInfo* ut = (*u)->Find(t.name)) {
      auto ub = (*u)->Data(*ut);
      for (size_t i = 0; i < t.numel(); ++i) {
        float a, b;
        std::memcpy(&a, o.bytes.data() + 4 * i, 4);
        std::memcpy(&b, ub.data() + 4 * i, 4);
        a += b;
        std::memcpy(o.bytes.data() + 4 * i, &a, 4);
      }
    }
    tensors.push_back(std::move(o));
  }
  EXPECT_OK(WriteSafetensorsFile(out, tensors));
  return out;
}

double Norm(const std::filesystem::path& update) {
  auto u = SafetensorsFile::Open(update);
  EXPECT_TRUE(u.ok());
  double s = 0;
  for (const auto& t : (*u)->tensors()) {
    auto b = (*u)->Data(t);
    for (size_t i = 0; i < t.numel(); ++i) {
      float v;
      std::memcpy(&v, b.data() + 4 * i, 4);
      s += double{v} * v;
    }
  }
  return std::sqrt(s);
}

std::vector<std::string> Names(const std::filesystem::path& file) {
  auto f = SafetensorsFile::Open(file);
  EXPECT_TRUE(f.ok()) << f.status().ToString();
  std::vector<std::string> out;
  if (f.ok())
    for (const auto& t : (*f)->tensors()) out.push_back(t.name);
  std::sort(out.begin(), out.end());
  return out;
}

TEST(InitModel, WritesCnnWithDocumentedNamesAndShapes) {
  TempDir dir;
  ASSERT_OK(InitModel("cnn", {}, 0, 10, 5, dir / "cnn.safetensors"));
  auto f = SafetensorsFile::Open(dir / "cnn.safetensors");
  ASSERT_OK(f.status());
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& t : (*f)->tensors()) {
    EXPECT_EQ(t.dtype, DType::kF32) << t.name;
    shapes[t.name] = t.shape;
  }
  std::map<std::string, std::vector<int64_t>> want{
      {"conv1.weight", {16, 1, 3, 3}}, {"conv1.bias", {16}},     {"conv2.weight", {32, 16, 3, 3}},
      {"conv2.bias", {32}},            {"fc1.weight", {128, 1568}}, {"fc1.bias", {128}},
      {"fc2.weight", {10, 128}},       {"fc2.bias", {10}}};
  EXPECT_EQ(shapes, want);
  // Same seed, same bytes; another seed, other weights.
  ASSERT_OK(InitModel("cnn", {}, 0, 10, 5, dir / "again.safetensors"));
  ASSERT_OK(InitModel("cnn", {}, 0, 10, 6, dir / "other.safetensors"));
  EXPECT_EQ(ReadFile(dir / "cnn.safetensors"), ReadFile(dir / "again.safetensors"));
  EXPECT_NE(ReadFile(dir / "cnn.safetensors"), ReadFile(dir / "other.safetensors"));
}

TEST(InitModel, WritesMlpLayersFromHiddenSizes) {
  TempDir dir;
  ASSERT_OK(InitModel("mlp", {64, 32}, 20, 3, 1, dir / "m.safetensors"));
  auto f = SafetensorsFile::Open(dir / "m.safetensors");
  ASSERT_OK(f.status());
  EXPECT_EQ((*f)->Find("fc1.weight")->shape, (std::vector<int64_t>{64, 20}));
  EXPECT_EQ((*f)->Find("fc2.weight")->shape, (std::vector<int64_t>{32, 64}));
  EXPECT_EQ((*f)->Find("fc3.weight")->shape, (std::vector<int64_t>{3, 32}));
  EXPECT_EQ((*f)->Find("fc3.bias")->shape, (std::vector<int64_t>{3}));
  EXPECT_EQ((*f)->tensors().size(), 6u);
}

TEST(InitModel, RejectsUnknownArchAndMissingInputSize) {
  TempDir dir;
  EXPECT_EQ(InitModel("resnet", {}, 0, 10, 1, dir / "x").code(), Code::kInvalidArgument);
  EXPECT_EQ(InitModel("mlp", {8}, 0, 10, 1, dir / "x").code(), Code::kInvalidArgument);
}

TEST_F(TrainTest, MlpTrainingLowersTheLossAndReportsMetrics) {
  auto init = InitMlp();
  auto before = EvaluateModel("mlp", {32}, init, data_->test, data_->sample_shape, 1);
  ASSERT_OK(before.status());
  EXPECT_EQ(before->examples, 1000u);
  task_.training.epochs = 2;
  auto trainer = MakeTorchTrainer(1);
  auto out = trainer->Train(Input(init), dir_ / "update.safetensors", not_cancelled_);
  ASSERT_OK(out.status());
  EXPECT_EQ(out->examples, 2000u);
  EXPECT_EQ(out->update_file, dir_ / "update.safetensors");
  ASSERT_EQ(out->metrics.size(), 2u);
  EXPECT_EQ(out->metrics[0].name, "train_loss");
  EXPECT_EQ(out->metrics[1].name, "train_accuracy");
  EXPECT_GT(out->metrics[1].value, 0.3);
  EXPECT_GT(out->usage.wall_seconds, 0);
  EXPECT_GT(out->usage.cpu_seconds, 0);
  EXPECT_EQ(out->usage.gpu_seconds, 0);
  EXPECT_EQ(out->usage.device_kind, "cpu");
  EXPECT_EQ(Names(out->update_file), Names(init));
  auto trained = ApplyUpdate(init, out->update_file, dir_ / "trained.safetensors");
  auto after = EvaluateModel("mlp", {32}, trained, data_->test, data_->sample_shape, 1);
  ASSERT_OK(after.status());
  EXPECT_LT(after->loss, before->loss * 0.7) << before->loss << " -> " << after->loss;
  EXPECT_GT(after->accuracy, 0.5);
  EXPECT_GT(after->accuracy, before->accuracy + 0.3);
  // mlp hidden sizes can be left to the file.
  auto inferred = EvaluateModel("mlp", {}, trained, data_->test, data_->sample_shape, 1);
  ASSERT_OK(inferred.status());
  EXPECT_DOUBLE_EQ(inferred->accuracy, after->accuracy);
  // The trainer's own evaluation task agrees with the free function.
  auto eval = trainer->Evaluate(Input(trained));
  ASSERT_OK(eval.status());
  EXPECT_EQ(eval->examples, 1000u);
  EXPECT_DOUBLE_EQ(eval->accuracy, after->accuracy);
  EXPECT_NEAR(eval->loss, after->loss, 1e-9);
}

TEST_F(TrainTest, CnnTrainingLowersTheLoss) {
  task_.architecture = "cnn";
  task_.training.hidden.clear();
  task_.training.epochs = 2;
  ASSERT_OK(InitModel("cnn", {}, 0, 10, 3, dir_ / "cnn.safetensors"));
  auto before = EvaluateModel("cnn", {}, dir_ / "cnn.safetensors", data_->test, data_->sample_shape, 1);
  ASSERT_OK(before.status());
  auto out = MakeTorchTrainer(1)->Train(Input(dir_ / "cnn.safetensors"), dir_ / "u.safetensors", not_cancelled_);
  ASSERT_OK(out.status());
  EXPECT_EQ(out->examples, 2000u);
  auto trained = ApplyUpdate(dir_ / "cnn.safetensors", out->update_file, dir_ / "trained.safetensors");
  auto after = EvaluateModel("cnn", {}, trained, data_->test, data_->sample_shape, 1);
  ASSERT_OK(after.status());
  EXPECT_LT(after->loss, before->loss * 0.7) << before->loss << " -> " << after->loss;
}

TEST_F(TrainTest, SameSeedGivesBitwiseIdenticalUpdate) {
  auto init = InitMlp();
  task_.training.momentum = 0.9;
  task_.training.epochs = 2;
  task_.training.max_examples = 500;
  for (int threads : {1, 2}) {
    auto in = Input(init);
    in.threads = threads;
    auto a = MakeTorchTrainer(threads)->Train(in, dir_ / "a.safetensors", not_cancelled_);
    auto b = MakeTorchTrainer(threads)->Train(in, dir_ / "b.safetensors", not_cancelled_);
    ASSERT_OK(a.status());
    ASSERT_OK(b.status());
    EXPECT_EQ(ReadFile(dir_ / "a.safetensors"), ReadFile(dir_ / "b.safetensors")) << threads << " threads";
    EXPECT_EQ(a->metrics[0].value, b->metrics[0].value);
  }
  // Another site (or round) shuffles differently: another update.
  auto in = Input(init);
  in.site_name = "berlin";
  ASSERT_OK(MakeTorchTrainer(1)->Train(in, dir_ / "c.safetensors", not_cancelled_).status());
  EXPECT_NE(ReadFile(dir_ / "a.safetensors"), ReadFile(dir_ / "c.safetensors"));
}

TEST_F(TrainTest, CnnSameSeedGivesBitwiseIdenticalUpdate) {
  task_.architecture = "cnn";
  task_.training.hidden.clear();
  task_.training.max_examples = 300;
  ASSERT_OK(InitModel("cnn", {}, 0, 10, 3, dir_ / "cnn.safetensors"));
  auto in = Input(dir_ / "cnn.safetensors");
  in.threads = 2;
  ASSERT_OK(MakeTorchTrainer(2)->Train(in, dir_ / "a.safetensors", not_cancelled_).status());
  ASSERT_OK(MakeTorchTrainer(2)->Train(in, dir_ / "b.safetensors", not_cancelled_).status());
  EXPECT_EQ(ReadFile(dir_ / "a.safetensors"), ReadFile(dir_ / "b.safetensors"));
}

TEST_F(TrainTest, TrainablePatternsLimitTheUpdate) {
  task_.training.hidden = {32, 16};
  auto init = dir_ / "m.safetensors";
  ASSERT_OK(InitModel("mlp", {32, 16}, 784, 10, 1, init));
  task_.training.trainable = {"fc3.*", "fc2.bias"};
  task_.training.max_examples = 200;
  auto out = MakeTorchTrainer(1)->Train(Input(init), dir_ / "u.safetensors", not_cancelled_);
  ASSERT_OK(out.status());
  EXPECT_EQ(Names(out->update_file), (std::vector<std::string>{"fc2.bias", "fc3.bias", "fc3.weight"}));
  EXPECT_GT(Norm(out->update_file), 0);
  task_.training.trainable = {"nothing*"};
  auto none = MakeTorchTrainer(1)->Train(Input(init), dir_ / "v.safetensors", not_cancelled_);
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("match no tensor"), std::string::npos);
}

TEST_F(TrainTest, FedProxPullsTowardsTheGlobalModel) {
  auto init = InitMlp();
  task_.training.max_examples = 500;
  task_.training.epochs = 2;
  auto plain = MakeTorchTrainer(1)->Train(Input(init), dir_ / "plain.safetensors", not_cancelled_);
  task_.training.prox_mu = 5.0;
  auto prox = MakeTorchTrainer(1)->Train(Input(init), dir_ / "prox.safetensors", not_cancelled_);
  ASSERT_OK(plain.status());
  ASSERT_OK(prox.status());
  EXPECT_LT(Norm(dir_ / "prox.safetensors"), 0.8 * Norm(dir_ / "plain.safetensors"));
}

TEST_F(TrainTest, AdamAndBf16Updates) {
  auto init = InitMlp();
  task_.training.optimizer = "adam";
  task_.training.lr = 1e-3;
  task_.training.update_dtype = "bf16";
  task_.training.max_examples = 300;
  auto out = MakeTorchTrainer(1)->Train(Input(init), dir_ / "u.safetensors", not_cancelled_);
  ASSERT_OK(out.status());
  auto f = SafetensorsFile::Open(out->update_file);
  ASSERT_OK(f.status());
  for (const auto& t : (*f)->tensors()) EXPECT_EQ(t.dtype, DType::kBF16) << t.name;
  task_.training.optimizer = "lbfgs";
  auto bad = MakeTorchTrainer(1)->Train(Input(init), dir_ / "v.safetensors", not_cancelled_);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("unknown optimizer 'lbfgs'"), std::string::npos);
  task_.training.optimizer = "sgd";
  task_.training.update_dtype = "f8";
  EXPECT_FALSE(MakeTorchTrainer(1)->Train(Input(init), dir_ / "w.safetensors", not_cancelled_).ok());
}

TEST_F(TrainTest, CancelledTaskStopsWithFailedPrecondition) {
  auto init = InitMlp();
  std::atomic<bool> cancelled{true};
  auto out = MakeTorchTrainer(1)->Train(Input(init), dir_ / "u.safetensors", cancelled);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), Code::kFailedPrecondition);
}

// Global models that do not fit the architecture: each error names the tensor.
TEST_F(TrainTest, StrictLoadRejectsModelsThatDoNotFit) {
  auto init = InitMlp();
  auto f = SafetensorsFile::Open(init);
  ASSERT_OK(f.status());
  auto tensors_of = [&] {
    std::vector<OwnedTensor> v;
    for (const auto& t : (*f)->tensors()) {
      auto b = (*f)->Data(t);
      v.push_back({t.name, t.dtype, t.shape, std::string(reinterpret_cast<const char*>(b.data()), b.size())});
    }
    return v;
  };
  struct Case {
    std::string what;
    std::function<void(std::vector<OwnedTensor>&)> edit;
    std::string expect;
  };
  std::vector<Case> cases{
      {"missing", [](auto& v) { std::erase_if(v, [](auto& t) { return t.name == "fc1.bias"; }); },
       "tensor 'fc1.bias' missing"},
      {"shape",
       [](auto& v) {
         for (auto& t : v)
           if (t.name == "fc1.weight") t.shape = {784, 32};
       },
       "tensor 'fc1.weight': shape [784, 32], expected [32, 784]"},
      {"dtype",
       [](auto& v) {
         for (auto& t : v)
           if (t.name == "fc2.bias") {
             t.dtype = DType::kBF16;
             t.bytes.resize(20);
           }
       },
       "tensor 'fc2.bias': dtype BF16, expected F32"},
      {"extra", [](auto& v) { v.push_back({"fc9.weight", DType::kF32, {1}, std::string(4, '\0')}); },
       "unexpected tensor 'fc9.weight'"},
  };
  for (const auto& c : cases) {
    auto v = tensors_of();
    c.edit(v);
    auto path = dir_ / (c.what + ".safetensors");
    ASSERT_OK(WriteSafetensorsFile(path, v));
    auto out = MakeTorchTrainer(1)->Train(Input(path), dir_ / "u.safetensors", not_cancelled_);
    ASSERT_FALSE(out.ok()) << c.what;
    EXPECT_EQ(out.status().code(), Code::kInvalidArgument) << c.what;
    EXPECT_NE(out.status().message().find(c.expect), std::string::npos) << c.what << ": " << out.status().ToString();
    auto ev = EvaluateModel("mlp", {32}, path, data_->test, data_->sample_shape, 1);
    EXPECT_FALSE(ev.ok()) << c.what;
  }
  // A cnn model given to an mlp job.
  ASSERT_OK(InitModel("cnn", {}, 0, 10, 1, dir_ / "cnn.safetensors"));
  auto out = MakeTorchTrainer(1)->Train(Input(dir_ / "cnn.safetensors"), dir_ / "u.safetensors", not_cancelled_);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("tensor 'fc1.weight'"), std::string::npos) << out.status().ToString();
}

TEST_F(TrainTest, MissingModelFileAndUnknownArch) {
  auto out = MakeTorchTrainer(1)->Train(Input(dir_ / "nope.safetensors"), dir_ / "u", not_cancelled_);
  ASSERT_FALSE(out.ok());
  task_.architecture = "transformer";
  auto init = InitMlp();
  out = MakeTorchTrainer(1)->Train(Input(init), dir_ / "u", not_cancelled_);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("unknown architecture 'transformer'"), std::string::npos);
}

// A TorchScript module built and saved from C++ (no Python needed): a linear
// classifier with parameters "weight" and "bias".
void SaveLinearModule(const std::filesystem::path& path) {
  torch::jit::Module m("Linear");
  m.register_parameter("weight", torch::zeros({10, 784}), false);
  m.register_parameter("bias", torch::zeros({10}), false);
  m.define(R"JIT(
def forward(self, x):
    return torch.matmul(x.reshape([x.size(0), -1]), self.weight.t()) + self.bias
)JIT");
  m.save(path.string());
}

TEST_F(TrainTest, TorchScriptModuleTrainsWithStrictParameterCheck) {
  SaveLinearModule(dir_ / "linear.pt");
  std::vector<OwnedTensor> w{{"weight", DType::kF32, {10, 784}, std::string(10 * 784 * 4, '\0')},
                             {"bias", DType::kF32, {10}, std::string(40, '\0')}};
  ASSERT_OK(WriteSafetensorsFile(dir_ / "global.safetensors", w));
  task_.architecture = "torchscript";
  task_.training.max_examples = 500;
  auto in = Input(dir_ / "global.safetensors");
  in.module_file = dir_ / "linear.pt";
  auto out = MakeTorchTrainer(1)->Train(in, dir_ / "u.safetensors", not_cancelled_);
  ASSERT_OK(out.status());
  EXPECT_EQ(Names(out->update_file), (std::vector<std::string>{"bias", "weight"}));
  EXPECT_GT(Norm(out->update_file), 0);
  EXPECT_GT(out->metrics[1].value, 0.3);
  // Strict check against the module's own parameters.
  w[0].shape = {784, 10};
  ASSERT_OK(WriteSafetensorsFile(dir_ / "bad.safetensors", w));
  in.model_file = dir_ / "bad.safetensors";
  auto bad = MakeTorchTrainer(1)->Train(in, dir_ / "v.safetensors", not_cancelled_);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("tensor 'weight': shape"), std::string::npos) << bad.status().ToString();
  // A module file that is not TorchScript.
  hanse::testing::WriteFile(dir_ / "junk.pt", "not a zip");
  in.model_file = dir_ / "global.safetensors";
  in.module_file = dir_ / "junk.pt";
  auto junk = MakeTorchTrainer(1)->Train(in, dir_ / "w.safetensors", not_cancelled_);
  ASSERT_FALSE(junk.ok());
  EXPECT_EQ(junk.status().code(), Code::kInvalidArgument);
}

// init-model --module / evaluate --module: the module's own parameters as the
// initial model; bad inputs name the file.
TEST_F(TrainTest, TorchScriptModuleWeightsAreWrittenAndEvaluated) {
  SaveLinearModule(dir_ / "linear.pt");
  auto hash = InitModuleWeights(dir_ / "linear.pt", dir_ / "init.safetensors");
  ASSERT_OK(hash.status());
  EXPECT_EQ(*hash, Sha256Hex(ReadFile(dir_ / "linear.pt")));
  auto file = SafetensorsFile::Open(dir_ / "init.safetensors");
  ASSERT_OK(file.status());
  ASSERT_EQ((*file)->tensors().size(), 2u);
  EXPECT_EQ((*file)->Find("weight")->dtype, DType::kF32);
  EXPECT_EQ((*file)->Find("weight")->shape, (std::vector<int64_t>{10, 784}));
  EXPECT_EQ((*file)->Find("bias")->shape, (std::vector<int64_t>{10}));

  // All-zero weights: every logit ties, argmax picks class 0 (a tenth of the test set).
  auto ev = EvaluateModel("torchscript", {}, dir_ / "init.safetensors", data_->test, data_->sample_shape, 1,
                          dir_ / "linear.pt");
  ASSERT_OK(ev.status());
  EXPECT_EQ(ev->examples, data_->test.size());
  EXPECT_NEAR(ev->loss, std::log(10.0), 1e-4);

  // Missing module, a module that is not TorchScript, a model that does not fit.
  auto missing = InitModuleWeights(dir_ / "nope.pt", dir_ / "x.safetensors");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
  EXPECT_NE(missing.status().message().find("nope.pt"), std::string::npos) << missing.status().ToString();
  hanse::testing::WriteFile(dir_ / "junk.pt", "not a zip");
  auto junk = InitModuleWeights(dir_ / "junk.pt", dir_ / "x.safetensors");
  ASSERT_FALSE(junk.ok());
  EXPECT_EQ(junk.status().code(), Code::kInvalidArgument);
  EXPECT_NE(junk.status().message().find("junk.pt: not a TorchScript archive"), std::string::npos)
      << junk.status().ToString();
  hanse::testing::WriteFile(dir_ / "zip.pt", std::string("PK\x03\x04", 4) + "truncated");
  auto zip = InitModuleWeights(dir_ / "zip.pt", dir_ / "x.safetensors");
  ASSERT_FALSE(zip.ok());
  EXPECT_NE(zip.status().message().find("zip.pt: not a loadable TorchScript archive"), std::string::npos)
      << zip.status().ToString();
  auto ev_junk = EvaluateModel("torchscript", {}, dir_ / "init.safetensors", data_->test, data_->sample_shape, 1,
                               dir_ / "junk.pt");
  ASSERT_FALSE(ev_junk.ok());
  EXPECT_NE(ev_junk.status().message().find("junk.pt"), std::string::npos) << ev_junk.status().ToString();
  auto ev_none = EvaluateModel("torchscript", {}, dir_ / "init.safetensors", data_->test, data_->sample_shape, 1);
  ASSERT_FALSE(ev_none.ok());
  EXPECT_NE(ev_none.status().message().find("--module"), std::string::npos) << ev_none.status().ToString();
  ASSERT_OK(InitModel("mlp", {32}, 784, 10, 1, dir_ / "mlp.safetensors"));
  auto mismatch = EvaluateModel("torchscript", {}, dir_ / "mlp.safetensors", data_->test, data_->sample_shape, 1,
                                dir_ / "linear.pt");
  ASSERT_FALSE(mismatch.ok());
  EXPECT_EQ(mismatch.status().code(), Code::kInvalidArgument);
  const std::string& m = mismatch.status().message();
  EXPECT_NE(m.find("mlp.safetensors: tensor 'weight' missing"), std::string::npos) << m;
  EXPECT_NE(m.find("linear.pt"), std::string::npos) << m;
}

TEST_F(TrainTest, LabelsOutsideTheModelAreRejected) {
  ASSERT_OK(InitModel("mlp", {32}, 784, 5, 1, dir_ / "five.safetensors"));
  auto out = MakeTorchTrainer(1)->Train(Input(dir_ / "five.safetensors"), dir_ / "u", not_cancelled_);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("outside the model's 5 classes"), std::string::npos)
      << out.status().ToString();
}

TEST_F(TrainTest, DevicesListsTheCpu) {
  auto d = MakeTorchTrainer(2)->Devices();
  ASSERT_FALSE(d.empty());
  EXPECT_EQ(d[0].kind, "cpu");
  // CUDA-only task on a CPU build: refused with a reason, not a crash.
  auto in = Input(InitMlp());
  in.devices = {"cuda"};
  auto out = MakeTorchTrainer(1)->Train(in, dir_ / "u", not_cancelled_);
  const bool have_cuda = std::any_of(d.begin(), d.end(), [](const auto& x) { return x.kind == "cuda"; });
  if (!have_cuda) {
    ASSERT_FALSE(out.ok());
    EXPECT_EQ(out.status().code(), Code::kFailedPrecondition);
  }
}

}  // namespace
}  // namespace hanse::train
