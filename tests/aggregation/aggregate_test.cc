#include <algorithm>
#include <functional>
#include <cmath>
#include <numeric>
#include <random>

#include <gtest/gtest.h>

#include "aggregation/aggregate.h"
#include "aggregation/engine.h"
#include "core/sha256.h"
#include "agg_test_util.h"

namespace hanse::agg {
namespace {

using testing::Read;
using testing::T;

// Global model: w [2,2], b [1] (both trained) and a non-float counter that is copied.
std::vector<T> Global(DType dtype = DType::kF32) {
  return {{"w", {2, 2}, {1, 2, 3, 4}, dtype}, {"b", {1}, {0.5f}, dtype}, {"steps", {1}, {7}, DType::kI64}};
}

class AggregateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = BlobStore::Open(dir_ / "store");
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(s).value();
    global_ = testing::Write(dir_ / "global.safetensors", Global());
  }

  // An update (delta) with w and b values.
  UpdateRef Update(const std::string& site, uint64_t examples, std::vector<float> w, float b,
                   DType dtype = DType::kF32) {
    auto p = testing::Write(dir_ / ("u-" + site + "-" + std::to_string(counter_++) + ".safetensors"),
                            {{"w", {2, 2}, std::move(w), dtype}, {"b", {1}, {b}, dtype}});
    return {site, examples, p, std::nullopt};
  }
  // A 1-D update (both tensors shifted by the same delta) for robust-rule tests.
  UpdateRef Scalar(const std::string& site, float d) { return Update(site, 1, {d, d, d, d}, d); }

  Result<AggregateResult> Run(Rule rule, std::vector<UpdateRef> updates, RuleOptions o = {}) {
    AggregateRequest req;
    req.global_model = global_;
    o.rule = rule;
    req.options = o;
    req.updates = std::move(updates);
    if (state_) req.optimizer_state = store_->PathOf(*state_);
    return Aggregate(req, *store_);
  }
  std::vector<float> W(const AggregateResult& r) { return Read(store_->PathOf(r.model_hash), "w"); }
  float B(const AggregateResult& r) { return Read(store_->PathOf(r.model_hash), "b")[0]; }

  hanse::testing::TempDir dir_;
  std::unique_ptr<BlobStore> store_;
  std::filesystem::path global_;
  std::optional<std::string> state_;
  int counter_ = 0;
};

TEST_F(AggregateTest, FedAvgWeightsByExamples) {
  auto r = Run(Rule::kFedAvg, {Update("a", 100, {1, 1, 1, 1}, 2), Update("b", 300, {2, 0, -2, 4}, -2)});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  // delta = 0.25 a + 0.75 b = [1.75, 0.25, -1.25, 3.25], -1
  EXPECT_EQ(W(*r), (std::vector<float>{2.75f, 2.25f, 1.75f, 7.25f}));
  EXPECT_EQ(B(*r), -0.5f);
  EXPECT_EQ(r->used_sites, (std::vector<std::string>{"a", "b"}));
  EXPECT_FALSE(r->state_hash.has_value());
  EXPECT_TRUE(store_->Verify(r->model_hash).ok());
  // Tensors outside the trainable set come through unchanged, metadata too.
  auto f = SafetensorsFile::Open(store_->PathOf(r->model_hash));
  ASSERT_TRUE(f.ok());
  const TensorInfo* steps = (*f)->Find("steps");
  ASSERT_NE(steps, nullptr);
  EXPECT_EQ(steps->dtype, DType::kI64);
  int64_t v = 0;
  std::memcpy(&v, (*f)->Data(*steps).data(), 8);
  EXPECT_EQ(v, 7);
}

TEST_F(AggregateTest, FedProxIsFedAvgOnTheServer) {
  auto a = Run(Rule::kFedAvg, {Update("a", 100, {1, 1, 1, 1}, 2), Update("b", 300, {2, 0, -2, 4}, -2)});
  auto p = Run(Rule::kFedProx, {Update("a", 100, {1, 1, 1, 1}, 2), Update("b", 300, {2, 0, -2, 4}, -2)});
  ASSERT_TRUE(a.ok() && p.ok());
  EXPECT_EQ(a->model_hash, p->model_hash);
}

TEST_F(AggregateTest, FedAvgOfIdenticalUpdatesIsThatUpdate) {
  std::vector<float> w = {0.1f, -0.3f, 1e-3f, 7.7f};
  auto r = Run(Rule::kFedAvg, {Update("a", 3, w, 0.3f), Update("b", 5, w, 0.3f), Update("c", 11, w, 0.3f)});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  auto single = Run(Rule::kFedAvg, {Update("z", 1, w, 0.3f)});
  ASSERT_TRUE(single.ok());
  std::vector<float> want = {1 + 0.1f, 2 - 0.3f, 3 + 1e-3f, 4 + 7.7f};
  auto got = W(*r);
  for (size_t i = 0; i < 4; ++i) EXPECT_NEAR(got[i], want[i], 1e-6f) << i;
  EXPECT_EQ(W(*single), want);
}

TEST_F(AggregateTest, CoordinateWiseMedian) {
  auto odd = Run(Rule::kMedian, {Update("a", 1, {1, 1, 1, 1}, 1), Update("b", 1, {2, 0, -2, 4}, 5),
                                 Update("c", 1, {3, -1, 0, 100}, 3)});
  ASSERT_TRUE(odd.ok()) << odd.status().ToString();
  EXPECT_EQ(W(*odd), (std::vector<float>{1 + 2.0f, 2 + 0.0f, 3 + 0.0f, 4 + 4.0f}));
  EXPECT_EQ(B(*odd), 0.5f + 3);
  auto even = Run(Rule::kMedian, {Update("a", 1, {1, 1, 1, 1}, 1), Update("b", 1, {2, 0, -2, 4}, 5),
                                  Update("c", 1, {3, -1, 0, 100}, 3), Update("d", 1, {0, 0, 0, 0}, 0)});
  ASSERT_TRUE(even.ok());
  EXPECT_EQ(W(*even), (std::vector<float>{1 + 1.5f, 2 + 0.0f, 3 + 0.0f, 4 + 2.5f}));
  EXPECT_EQ(B(*even), 0.5f + 2);
}

TEST_F(AggregateTest, TrimmedMeanDropsTheExtremes) {
  RuleOptions o;
  o.trim_beta = 0.2;  // floor(0.2 * 5) = 1 at each end
  auto r = Run(Rule::kTrimmedMean,
               {Update("a", 1, {1, 10, 0, 0}, 0), Update("b", 1, {2, 20, 0, 0}, 0), Update("c", 1, {3, 30, 0, 0}, 0),
                Update("d", 1, {4, 40, 0, 0}, 0), Update("e", 1, {-100, 50, 0, 9}, 0)},
               o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  // w0: drop -100 and 4 -> (1+2+3)/3 = 2; w1: drop 10, 50 -> 30; w3: drop 0, 9 -> 0.
  EXPECT_EQ(W(*r), (std::vector<float>{1 + 2.0f, 2 + 30.0f, 3, 4}));
}

TEST_F(AggregateTest, TrimmedMeanWithBetaZeroIsTheMean) {
  RuleOptions o;
  o.trim_beta = 0;
  std::vector<UpdateRef> u = {Update("a", 1, {0.1f, 0.2f, 0.3f, 0.4f}, 1), Update("b", 1, {1.5f, -2, 3, 1}, 2),
                              Update("c", 1, {-0.7f, 0, 0.01f, 2}, 4)};
  auto t = Run(Rule::kTrimmedMean, u, o);
  auto m = Run(Rule::kFedAvg, u);  // equal examples: the plain mean
  ASSERT_TRUE(t.ok() && m.ok());
  auto tw = W(*t), mw = W(*m);
  for (size_t i = 0; i < 4; ++i) EXPECT_NEAR(tw[i], mw[i], 1e-6f) << i;
  EXPECT_NEAR(B(*t), 0.5f + 7.0f / 3, 1e-6f);
}

TEST_F(AggregateTest, KrumPicksTheUpdateClosestToItsNeighbours) {
  RuleOptions o;
  o.krum_f = 0;  // K = 4 > 2: scores over K - f - 2 = 2 nearest
  // Squared distances: ab 1, ac 9, ad 100, bc 4, bd 81, cd 49 (x4 coordinates + b, so x5; ranks unchanged).
  // Scores: a 10, b 5, c 13, d 130 -> b.
  std::vector<UpdateRef> u = {Scalar("a", 0), Scalar("b", 1), Scalar("c", 3), Scalar("d", 10)};
  auto r = Run(Rule::kKrum, u, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->used_sites, (std::vector<std::string>{"b"}));
  EXPECT_EQ(W(*r), (std::vector<float>{2, 3, 4, 5}));
  o.krum_m = 2;  // Multi-Krum: mean of b and a
  auto mk = Run(Rule::kMultiKrum, u, o);
  ASSERT_TRUE(mk.ok()) << mk.status().ToString();
  EXPECT_EQ(mk->used_sites, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(W(*mk), (std::vector<float>{1.5f, 2.5f, 3.5f, 4.5f}));
}

TEST_F(AggregateTest, KrumWithThreeUpdatesAndFZeroBreaksTiesBySite) {
  RuleOptions o;
  o.krum_f = 0;  // K = 3 > 2: scores over the K - f - 2 = 1 nearest
  auto three = Run(Rule::kKrum, {Scalar("a", 0), Scalar("b", 1), Scalar("c", 5)}, o);
  ASSERT_TRUE(three.ok()) << three.status().ToString();
  EXPECT_EQ(three->used_sites, (std::vector<std::string>{"a"}));  // a and b tie (distance 1), a first
}

TEST_F(AggregateTest, KrumWithFOneAndFiveUpdates) {
  RuleOptions o;
  o.krum_f = 1;  // K = 5 > 4; 2 nearest. a 3.25, b 1.25, c 2.5, d 6.25, e huge -> b
  auto r = Run(Rule::kKrum, {Scalar("a", 0), Scalar("b", 1), Scalar("c", 1.5f), Scalar("d", 3), Scalar("e", 100)}, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->used_sites, (std::vector<std::string>{"b"}));
}

TEST_F(AggregateTest, RulesRefuseWhenTheirPreconditionFails) {
  RuleOptions o;
  o.krum_f = 1;
  auto r = Run(Rule::kKrum, {Scalar("a", 0), Scalar("b", 1), Scalar("c", 2)}, o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("krum needs K > 2f + 2: K = 3 valid updates, f = 1"), std::string::npos)
      << r.status().ToString();
  o.krum_f = 0;
  o.krum_m = 3;
  auto mk = Run(Rule::kMultiKrum, {Scalar("a", 0), Scalar("b", 1), Scalar("c", 2)}, o);
  EXPECT_TRUE(mk.ok()) << mk.status().ToString();
  o.krum_m = 4;
  mk = Run(Rule::kMultiKrum, {Scalar("a", 0), Scalar("b", 1), Scalar("c", 2)}, o);
  ASSERT_FALSE(mk.ok());
  EXPECT_NE(mk.status().message().find("1 <= m <= K - f"), std::string::npos);
  auto zero = Run(Rule::kFedAvg, {Update("a", 0, {1, 1, 1, 1}, 1)});
  ASSERT_FALSE(zero.ok());
  EXPECT_NE(zero.status().message().find("example counts"), std::string::npos);
  auto none = Run(Rule::kFedAvg, {});
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), Code::kFailedPrecondition);
}

TEST_F(AggregateTest, RejectsBadUpdatesAndGoesOnWithTheOthers) {
  auto nan = Update("n", 10, {1, NAN, 1, 1}, 1);
  auto shape = testing::Write(dir_ / "shape.safetensors", {{"w", {4}, {1, 1, 1, 1}}, {"b", {1}, {1}}});
  auto extra = testing::Write(dir_ / "extra.safetensors", {{"w", {2, 2}, {1, 1, 1, 1}}, {"b", {1}, {1}}, {"z", {1}, {1}}});
  auto missing = testing::Write(dir_ / "missing.safetensors", {{"w", {2, 2}, {1, 1, 1, 1}}});
  auto dtype = testing::Write(dir_ / "dtype.safetensors", {{"w", {2, 2}, {1, 1, 1, 1}}, {"b", {1}, {1}, DType::kI32}});
  hanse::testing::WriteFile(dir_ / "garbage.safetensors", "not a safetensors file");
  RuleOptions o;
  o.max_update_norm = 10;
  auto r = Run(Rule::kFedAvg,
               {Update("good", 1, {1, 1, 1, 1}, 1), nan, Update("big", 1, {100, 0, 0, 0}, 0),
                {"s", 1, shape, std::nullopt}, {"x", 1, extra, std::nullopt}, {"m", 1, missing, std::nullopt},
                {"t", 1, dtype, std::nullopt}, {"g", 1, dir_ / "garbage.safetensors", std::nullopt},
                {"gone", 1, dir_ / "absent.safetensors", std::nullopt}, Update("dup", 1, {0, 0, 0, 0}, 0),
                Update("dup", 1, {0, 0, 0, 0}, 0)},
               o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->used_sites, (std::vector<std::string>{"good"}));
  EXPECT_EQ(W(*r), (std::vector<float>{2, 3, 4, 5}));
  std::map<std::string, RejectReason> want = {
      {"n", RejectReason::kNonFinite},      {"big", RejectReason::kNormTooLarge},
      {"s", RejectReason::kWrongShape},     {"x", RejectReason::kExtraTensor},
      {"m", RejectReason::kMissingTensor},  {"t", RejectReason::kWrongDType},
      {"g", RejectReason::kMalformed},      {"gone", RejectReason::kUnreadable},
      {"dup", RejectReason::kDuplicateSite}};
  std::map<std::string, RejectReason> got;
  for (const auto& rej : r->rejected) {
    got.emplace(rej.site, rej.reason);
    std::map<RejectReason, std::string> names = {
        {RejectReason::kNonFinite, "tensor 'w': element 1 is NaN"}, {RejectReason::kNormTooLarge, "tensor 'w'"},
        {RejectReason::kWrongShape, "tensor 'w'"},  {RejectReason::kExtraTensor, "tensor 'z'"},
        {RejectReason::kMissingTensor, "tensor 'b'"}, {RejectReason::kWrongDType, "tensor 'b'"}};
    auto it = names.find(rej.reason);
    if (it != names.end()) {
      EXPECT_NE(rej.message.find(it->second), std::string::npos) << rej.message;
    }
  }
  EXPECT_EQ(got, want);
  EXPECT_TRUE(std::is_sorted(r->rejected.begin(), r->rejected.end(),
                             [](const auto& a, const auto& b) { return a.site < b.site; }));
}

TEST_F(AggregateTest, TrustsTheNormMeasuredOnArrival) {
  // A prevalidated update skips the value pass; its norm still meets max_update_norm.
  UpdateRef u = Update("a", 1, {3, 4, 0, 0}, 0);
  auto v = ValidateUpdateFile(u.file, *SchemaFromModel(**SafetensorsFile::Open(global_)), std::nullopt);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->l2_norm, 5.0);
  u.l2_norm = v->l2_norm;
  RuleOptions o;
  o.max_update_norm = 4;
  auto r = Run(Rule::kFedAvg, {u, Update("b", 1, {0, 0, 0, 0}, 0)}, o);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->rejected.size(), 1u);
  EXPECT_EQ(r->rejected[0].reason, RejectReason::kNormTooLarge);
}

TEST_F(AggregateTest, ClippingScalesExactlyToClipNorm) {
  RuleOptions o;
  o.clip_norm = 2.5;  // the update has norm 5 -> scaled by 0.5
  auto r = Run(Rule::kFedAvg, {Update("a", 1, {3, 0, 0, 0}, 4)}, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->clipped_sites, (std::vector<std::string>{"a"}));
  EXPECT_EQ(W(*r), (std::vector<float>{1 + 1.5f, 2, 3, 4}));
  EXPECT_EQ(B(*r), 0.5f + 2.0f);
  // A non-round norm: the applied delta has norm clip_norm up to fp32 rounding.
  o.clip_norm = 1.0;
  auto q = Run(Rule::kFedAvg, {Update("a", 1, {0.3f, -1.7f, 2.2f, 0.9f}, -0.4f), Update("b", 1, {0.01f, 0, 0, 0}, 0)}, o);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->clipped_sites, (std::vector<std::string>{"a"}));  // b is below the clip
  auto w = W(*q);
  std::vector<float> base = {1, 2, 3, 4};
  // mean of clipped a and b: recover clipped a = 2 * delta - b
  double sq = 0;
  std::vector<float> bw = {0.01f, 0, 0, 0};
  for (size_t i = 0; i < 4; ++i) {
    double d = 2.0 * (w[i] - base[i]) - bw[i];
    sq += d * d;
  }
  double db = 2.0 * (B(*q) - 0.5);
  sq += db * db;
  EXPECT_NEAR(std::sqrt(sq), 1.0, 2e-6);
  // clip_norm above max_update_norm is refused.
  o.max_update_norm = 0.5;
  EXPECT_EQ(Run(Rule::kFedAvg, {Update("a", 1, {1, 1, 1, 1}, 1)}, o).status().code(), Code::kInvalidArgument);
}

TEST_F(AggregateTest, AcceptsBF16AndF16Updates) {
  auto bf = Run(Rule::kFedAvg, {Update("a", 100, {1, 1, 1, 1}, 2, DType::kBF16), Update("b", 300, {2, 0, -2, 4}, -2, DType::kF16)});
  ASSERT_TRUE(bf.ok()) << bf.status().ToString();
  EXPECT_EQ(W(*bf), (std::vector<float>{2.75f, 2.25f, 1.75f, 7.25f}));
  auto med = Run(Rule::kMedian, {Update("a", 1, {1, 1, 1, 1}, 1, DType::kBF16), Update("b", 1, {2, 0, -2, 4}, 5, DType::kF16),
                                 Update("c", 1, {3, -1, 0, 100}, 3)});
  ASSERT_TRUE(med.ok()) << med.status().ToString();
  EXPECT_EQ(W(*med), (std::vector<float>{3, 2, 3, 8}));
}

TEST_F(AggregateTest, KeepsTheGlobalModelDType) {
  global_ = testing::Write(dir_ / "global-bf16.safetensors", Global(DType::kBF16));
  auto r = Run(Rule::kFedAvg, {Update("a", 1, {0.5f, 0.5f, 0.5f, 0.5f}, 0.25f)});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  auto f = SafetensorsFile::Open(store_->PathOf(r->model_hash));
  ASSERT_TRUE(f.ok());
  EXPECT_EQ((*f)->Find("w")->dtype, DType::kBF16);
  EXPECT_EQ(W(*r), (std::vector<float>{1.5f, 2.5f, 3.5f, 4.5f}));
  EXPECT_EQ(B(*r), 0.75f);
  global_ = testing::Write(dir_ / "global-f16.safetensors", Global(DType::kF16));
  auto h = Run(Rule::kMedian, {Update("a", 1, {0.5f, 0.5f, 0.5f, 0.5f}, 0.25f, DType::kBF16)});
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(W(*h), (std::vector<float>{1.5f, 2.5f, 3.5f, 4.5f}));
}

TEST_F(AggregateTest, TrainableSubsetSchema) {
  ModelSchema s;
  s.tensors = {{"b", {1}}};
  AggregateRequest req;
  req.global_model = global_;
  req.schema = s;
  auto p = testing::Write(dir_ / "bonly.safetensors", {{"b", {1}, {1.5f}}});
  req.updates = {{"a", 1, p, std::nullopt}, Update("full", 1, {1, 1, 1, 1}, 1)};
  auto r = Aggregate(req, *store_);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(W(*r), (std::vector<float>{1, 2, 3, 4}));  // w is frozen: copied
  EXPECT_EQ(B(*r), 2.0f);
  ASSERT_EQ(r->rejected.size(), 1u);
  EXPECT_EQ(r->rejected[0].reason, RejectReason::kExtraTensor);
}

// Reference FedOpt in plain scalar code (Reddi et al., no bias correction).
struct RefOpt {
  Rule rule;
  float b1, b2, lr, tau;
  float m = 0, v = 0;
  float Step(float x, float d) {
    m = b1 * m + (1 - b1) * d;
    if (rule == Rule::kFedAdam) v = b2 * v + (1 - b2) * d * d;
    if (rule == Rule::kFedYogi) {
      float diff = v - d * d;
      v = v - (1 - b2) * d * d * (diff > 0 ? 1.0f : (diff < 0 ? -1.0f : 0.0f));
    }
    if (rule == Rule::kFedAdagrad) v = v + d * d;
    return x + lr * m / (std::sqrt(v) + tau);
  }
};

TEST_F(AggregateTest, FedOptHandComputedFirstStep) {
  // d = 2 everywhere; b1 = 0.5 -> m = 1.
  struct C {
    Rule rule;
    double b2, lr, tau;
    float want;  // x - g after one step
  };
  // Adam: v = 0.75*0 + 0.25*4 = 1 -> 1/(1+1) = 0.5. Yogi: v = 0 + 0.25*4 = 1 -> 0.5.
  // Adagrad: v = 4 -> lr 3: 3*1/(2+1) = 1.
  for (const C& c : {C{Rule::kFedAdam, 0.75, 1, 1, 0.5f}, C{Rule::kFedYogi, 0.75, 1, 1, 0.5f},
                     C{Rule::kFedAdagrad, 0.75, 3, 1, 1.0f}}) {
    RuleOptions o;
    o.beta1 = 0.5;
    o.beta2 = c.b2;
    o.server_lr = c.lr;
    o.tau = c.tau;
    state_.reset();
    auto r = Run(c.rule, {Update("a", 1, {2, 2, 2, 2}, 2), Update("b", 3, {2, 2, 2, 2}, 2)}, o);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ASSERT_TRUE(r->state_hash.has_value());
    EXPECT_EQ(W(*r), (std::vector<float>{1 + c.want, 2 + c.want, 3 + c.want, 4 + c.want})) << RuleName(c.rule);
    // The state holds m and v interleaved on a last axis of 2.
    auto st = Read(store_->PathOf(*r->state_hash), "w");
    ASSERT_EQ(st.size(), 8u);
    EXPECT_EQ(st[0], 1.0f);
    EXPECT_EQ(st[1], c.rule == Rule::kFedAdagrad ? 4.0f : 1.0f);
  }
}

TEST_F(AggregateTest, FedOptStateResumesExactly) {
  for (Rule rule : {Rule::kFedAdam, Rule::kFedYogi, Rule::kFedAdagrad}) {
    RuleOptions o;
    o.beta1 = 0.9;
    o.beta2 = 0.99;
    o.server_lr = 0.1;
    o.tau = 1e-3;
    RefOpt ref{rule, 0.9f, 0.99f, 0.1f, 1e-3f};
    state_.reset();
    float x = 0.5f;  // follow b
    std::vector<float> deltas = {0.3f, -0.2f, 0.05f, 0.4f};
    for (float d : deltas) {
      auto r = Run(rule, {Update("a", 1, {d, d, d, d}, d), Update("b", 1, {d, d, d, d}, d)}, o);
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      x = ref.Step(x, d);
      EXPECT_FLOAT_EQ(B(*r), x) << RuleName(rule);
      // Running the same round twice from the same state gives the same bytes.
      auto again = Run(rule, {Update("b", 1, {d, d, d, d}, d), Update("a", 1, {d, d, d, d}, d)}, o);
      ASSERT_TRUE(again.ok());
      EXPECT_EQ(again->model_hash, r->model_hash);
      EXPECT_EQ(again->state_hash, r->state_hash);
      // Next round continues from this round's model and state.
      global_ = store_->PathOf(r->model_hash);
      state_ = r->state_hash;
    }
    global_ = testing::Write(dir_ / "global.safetensors", Global());
  }
}

TEST_F(AggregateTest, FedOptRefusesStateOfAnotherRuleOrShape) {
  RuleOptions o;
  auto r = Run(Rule::kFedAdam, {Update("a", 1, {1, 1, 1, 1}, 1)}, o);
  ASSERT_TRUE(r.ok());
  state_ = r->state_hash;
  auto yogi = Run(Rule::kFedYogi, {Update("a", 1, {1, 1, 1, 1}, 1)}, o);
  ASSERT_FALSE(yogi.ok());
  EXPECT_EQ(yogi.status().code(), Code::kFailedPrecondition);
  EXPECT_NE(yogi.status().message().find("written by fedadam"), std::string::npos) << yogi.status().ToString();
  state_ = store_->Put(testing::Bytes({{"w", {2, 2}, {0, 0, 0, 0}}, {"b", {1}, {0}}}, {{"hanse.optimizer", "fedadam"}})).value();
  auto shape = Run(Rule::kFedAdam, {Update("a", 1, {1, 1, 1, 1}, 1)}, o);
  ASSERT_FALSE(shape.ok());
  EXPECT_NE(shape.status().message().find("tensor 'b'"), std::string::npos) << shape.status().ToString();
}

// Hashes what it is given and keeps nothing: the permutation tests compare
// bytes, and skipping 720 fsyncs keeps them fast (also under sanitizers).
class HashingWriter final : public BlobStore::Writer {
 public:
  Status Write(std::span<const std::byte> b) override {
    sha_.Update(b);
    return Status::Ok();
  }
  Result<std::string> Finish() override { return sha_.Finish(); }

 private:
  Sha256 sha_;
};

// Every rule gives the same bytes for every arrival order, and for any block size.
struct OrderCase {
  const char* label;
  Rule rule;
  RuleOptions options;
};

class OrderIndependence : public AggregateTest, public ::testing::WithParamInterface<OrderCase> {};

TEST_P(OrderIndependence, AllPermutationsOfFiveUpdatesGiveTheSameBytes) {
  std::mt19937 rng(42);
  std::normal_distribution<float> n(0, 1);
  std::vector<UpdateRef> u;
  for (int i = 0; i < 5; ++i) {
    std::vector<float> w(4);
    for (auto& x : w) x = n(rng);
    u.push_back(Update(std::string(1, static_cast<char>('a' + i)), 10 + 7 * static_cast<uint64_t>(i), w, n(rng)));
  }
  const OrderCase& c = GetParam();
  auto by_site = [](const UpdateRef& a, const UpdateRef& b) { return a.site < b.site; };
  std::vector<UpdateRef> perm = u;
  std::sort(perm.begin(), perm.end(), by_site);
  std::optional<std::string> first;
  int count = 0;
  auto run = [&](const std::vector<UpdateRef>& updates, RuleOptions o) {
    AggregateRequest req;
    req.global_model = global_;
    o.rule = c.rule;
    req.options = o;
    req.updates = updates;
    auto make = []() -> Result<std::unique_ptr<BlobStore::Writer>> { return std::make_unique<HashingWriter>(); };
    return RunEngine(req, EngineMode{}, make, make);
  };
  do {
    auto r = run(perm, c.options);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    if (!first) first = r->model_hash;
    ASSERT_EQ(r->model_hash, *first) << c.label << " permutation " << count;
    ++count;
  } while (std::next_permutation(perm.begin(), perm.end(), by_site));
  EXPECT_EQ(count, 120);
  RuleOptions small = c.options;
  small.block_elems = 3;  // blocks cut the tensors differently; the rules are elementwise
  auto r = run(u, small);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->model_hash, *first) << c.label << " with block_elems 3";
  // The store path writes the same bytes.
  r = Run(c.rule, u, c.options);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->model_hash, *first) << c.label << " through the blob store";
}

RuleOptions With(std::function<void(RuleOptions&)> f) {
  RuleOptions o;
  f(o);
  return o;
}

INSTANTIATE_TEST_SUITE_P(
    Rules, OrderIndependence,
    ::testing::Values(OrderCase{"fedavg_clipped", Rule::kFedAvg, With([](auto& o) { o.clip_norm = 1.5; })},
                      OrderCase{"median", Rule::kMedian, {}},
                      OrderCase{"trimmed_mean", Rule::kTrimmedMean, With([](auto& o) { o.trim_beta = 0.2; })},
                      OrderCase{"krum", Rule::kKrum, With([](auto& o) { o.krum_f = 1; })},
                      OrderCase{"multi_krum", Rule::kMultiKrum, With([](auto& o) { o.krum_m = 3; })},
                      OrderCase{"fedadam", Rule::kFedAdam, {}}),
    [](const auto& info) { return std::string(info.param.label); });

TEST_F(AggregateTest, ScalingAttackMovesFedAvgButNotRobustRules) {
  // 6 honest updates near mu (noise in [-0.01, 0.01]), 1 attacker sending 1000 x an honest update.
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> noise(-0.01f, 0.01f);
  const std::vector<float> mu = {0.5f, -0.25f, 1.0f, 0.125f, 0.75f};
  std::vector<UpdateRef> u;
  std::vector<std::vector<float>> honest;
  for (int i = 0; i < 7; ++i) {
    std::vector<float> d(5);
    for (size_t j = 0; j < 5; ++j) d[j] = mu[j] + noise(rng);
    if (i < 6) {
      honest.push_back(d);
    } else {
      for (auto& x : d) x *= 1000;
    }
    u.push_back(Update("site" + std::to_string(i), 100, {d[0], d[1], d[2], d[3]}, d[4]));
  }
  std::vector<float> base = {1, 2, 3, 4, 0.5f};
  std::vector<float> honest_mean(5, 0);
  for (const auto& h : honest) {
    for (size_t j = 0; j < 5; ++j) honest_mean[j] += h[j] / 6;
  }
  auto dist = [&](const AggregateResult& r) {
    auto w = W(r);
    w.push_back(B(r));
    float worst = 0;
    for (size_t j = 0; j < 5; ++j) worst = std::max(worst, std::abs(w[j] - base[j] - honest_mean[j]));
    return worst;
  };
  // Stated tolerance: 0.02 per coordinate (twice the honest noise amplitude).
  constexpr float kTolerance = 0.02f;
  RuleOptions trim;
  trim.trim_beta = 0.15;  // floor(0.15 * 7) = 1 at each end
  RuleOptions krum;
  krum.krum_f = 1;
  auto med = Run(Rule::kMedian, u);
  auto tm = Run(Rule::kTrimmedMean, u, trim);
  auto kr = Run(Rule::kKrum, u, krum);
  auto avg = Run(Rule::kFedAvg, u);
  ASSERT_TRUE(med.ok() && tm.ok() && kr.ok() && avg.ok());
  EXPECT_LE(dist(*med), kTolerance);
  EXPECT_LE(dist(*tm), kTolerance);
  EXPECT_LE(dist(*kr), kTolerance);
  EXPECT_NE(kr->used_sites[0], "site6");
  EXPECT_GT(dist(*avg), 50.0f);  // ~ (1000 - 1) / 7 x |mu|
}

}  // namespace
}  // namespace hanse::agg
