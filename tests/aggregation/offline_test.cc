#include <gtest/gtest.h>

#include "aggregation/aggregate.h"
#include "core/sha256.h"
#include "agg_test_util.h"

namespace hanse::agg {
namespace {

using testing::Read;
using testing::T;

class OfflineTest : public ::testing::Test {
 protected:
  std::filesystem::path Model(const std::string& name, std::vector<float> w, float b) {
    return testing::Write(dir_ / name, {{"w", {2, 2}, std::move(w)}, {"b", {1}, {b}}, {"n", {1}, {3}, DType::kI64}});
  }
  std::filesystem::path Delta(const std::string& name, float d) {
    return testing::Write(dir_ / name, {{"w", {2, 2}, {d, d, d, d}}, {"b", {1}, {d}}});
  }
  hanse::testing::TempDir dir_;
};

TEST_F(OfflineTest, FedAvgOfFullModelsWithWeights) {
  OfflineRequest r;
  r.options.rule = Rule::kFedAvg;
  r.inputs = {Model("a.safetensors", {1, 2, 3, 4}, 1), Model("b.safetensors", {5, 6, 7, 8}, 5)};
  r.weights = {100, 300};
  r.output = dir_ / "out.safetensors";
  auto res = AggregateFiles(r);
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(Read(r.output, "w"), (std::vector<float>{4, 5, 6, 7}));
  EXPECT_EQ(Read(r.output, "b"), (std::vector<float>{4}));
  EXPECT_EQ(res->model_hash, Sha256Hex(hanse::testing::ReadFile(r.output)));
  // With a base: base + FedAvg(models - base) gives the same values here.
  r.base = Model("base.safetensors", {0, 0, 1, 1}, 0);
  r.output = dir_ / "out2.safetensors";
  ASSERT_TRUE(AggregateFiles(r).ok());
  EXPECT_EQ(Read(r.output, "w"), (std::vector<float>{4, 5, 6, 7}));
}

TEST_F(OfflineTest, DeltasNeedABase) {
  OfflineRequest r;
  r.options.rule = Rule::kMedian;
  r.inputs = {Delta("d1.safetensors", 1), Delta("d2.safetensors", 2), Delta("d3.safetensors", 9)};
  r.inputs_are_deltas = true;
  r.output = dir_ / "out.safetensors";
  auto no_base = AggregateFiles(r);
  ASSERT_FALSE(no_base.ok());
  EXPECT_NE(no_base.status().message().find("--base"), std::string::npos);
  r.base = Model("base.safetensors", {10, 20, 30, 40}, 0);
  auto res = AggregateFiles(r);
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(Read(r.output, "w"), (std::vector<float>{12, 22, 32, 42}));
  // A full model given as a delta carries a tensor that is not trained: rejected.
  r.inputs.push_back(Model("m.safetensors", {1, 1, 1, 1}, 1));
  auto extra = AggregateFiles(r);
  ASSERT_FALSE(extra.ok());
  EXPECT_NE(extra.status().message().find("extra_tensor"), std::string::npos) << extra.status().ToString();
}

TEST_F(OfflineTest, FedAdamWritesStateNextToTheOutputAndResumes) {
  OfflineRequest r;
  r.options.rule = Rule::kFedAdam;
  r.options.beta1 = 0.5;
  r.options.beta2 = 0.75;
  r.options.tau = 1;
  r.inputs = {Model("a.safetensors", {3, 4, 5, 6}, 2)};
  r.output = dir_ / "out.safetensors";
  auto need_base = AggregateFiles(r);
  ASSERT_FALSE(need_base.ok());
  r.base = Model("base.safetensors", {1, 2, 3, 4}, 0);  // delta 2 everywhere
  auto res = AggregateFiles(r);
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  ASSERT_TRUE(res->state_hash.has_value());
  auto state = dir_ / "out.safetensors.state.safetensors";
  ASSERT_TRUE(std::filesystem::exists(state));
  EXPECT_EQ(Read(r.output, "w"), (std::vector<float>{1.5f, 2.5f, 3.5f, 4.5f}));
  r.state_in = state;
  r.state_out = dir_ / "state2.safetensors";
  r.output = dir_ / "out2.safetensors";
  ASSERT_TRUE(AggregateFiles(r).ok());
  EXPECT_TRUE(std::filesystem::exists(r.state_out));
}

TEST_F(OfflineTest, AnyBadInputFailsTheCallAndWritesNothing) {
  OfflineRequest r;
  r.options.rule = Rule::kFedAvg;
  r.inputs = {Model("a.safetensors", {1, 2, 3, 4}, 1),
              testing::Write(dir_ / "b.safetensors", {{"w", {4}, {1, 2, 3, 4}}, {"b", {1}, {1}}, {"n", {1}, {3}, DType::kI64}})};
  r.output = dir_ / "out.safetensors";
  auto res = AggregateFiles(r);
  ASSERT_FALSE(res.ok());
  EXPECT_NE(res.status().message().find("input-001 rejected (wrong_shape)"), std::string::npos) << res.status().ToString();
  EXPECT_FALSE(std::filesystem::exists(r.output));
  r.inputs.pop_back();
  r.weights = {1, 2};
  EXPECT_EQ(AggregateFiles(r).status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace hanse::agg
