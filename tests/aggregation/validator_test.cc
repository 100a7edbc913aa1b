#include <cmath>
#include <cstring>

#include <gtest/gtest.h>

#include "aggregation/aggregate.h"
#include "agg_test_util.h"

namespace hanse::agg {
namespace {

using testing::Bytes;
using testing::T;

ModelSchema Schema() {
  ModelSchema s;
  s.tensors = {{"a.bias", {3}}, {"a.weight", {2, 3}}};
  return s;
}

std::vector<T> Good() {
  return {{"a.weight", {2, 3}, {1, 2, 3, 4, 5, 6}}, {"a.bias", {3}, {0, 0, 2}}};
}

struct Outcome {
  Status status;
  std::optional<RejectReason> reason;
  double norm = -1;
};

// Feeds the bytes in `chunk`-byte pieces.
Outcome Validate(const std::string& bytes, size_t chunk, std::optional<double> max_norm = std::nullopt,
                 const ModelSchema& schema = Schema()) {
  UpdateValidator v(schema, max_norm);
  Outcome o;
  for (size_t i = 0; i < bytes.size(); i += chunk) {
    size_t n = std::min(chunk, bytes.size() - i);
    o.status = v.Feed(std::as_bytes(std::span(bytes.data() + i, n)));
    if (!o.status.ok()) {
      o.reason = v.reason();
      return o;
    }
  }
  auto r = v.Finish();
  o.status = r.status();
  o.reason = v.reason();
  if (r.ok()) o.norm = r->l2_norm;
  return o;
}

TEST(UpdateValidator, AcceptsAValidUpdateWhateverTheChunking) {
  std::string b = Bytes(Good());
  const double want = std::sqrt(1 + 4 + 9 + 16 + 25 + 36 + 4.0);
  double first = -1;
  for (size_t chunk : {1u, 2u, 3u, 5u, 7u, 64u, 100000u}) {
    Outcome o = Validate(b, chunk);
    ASSERT_TRUE(o.status.ok()) << chunk << ": " << o.status.ToString();
    EXPECT_DOUBLE_EQ(o.norm, want);
    if (first < 0) first = o.norm;
    EXPECT_EQ(o.norm, first) << "norm must not depend on chunking";
  }
}

TEST(UpdateValidator, AcceptsBF16AndF16Updates) {
  auto t = Good();
  t[0].dtype = DType::kBF16;
  t[1].dtype = DType::kF16;
  Outcome o = Validate(Bytes(t), 3);
  ASSERT_TRUE(o.status.ok()) << o.status.ToString();
  EXPECT_DOUBLE_EQ(o.norm, std::sqrt(95.0));
}

struct Case {
  const char* label;
  std::function<void(std::vector<T>&)> mutate;
  RejectReason reason;
  const char* message_part;
};

class UpdateValidatorRejects : public ::testing::TestWithParam<Case> {};

TEST_P(UpdateValidatorRejects, WithItsReasonNamingTheTensor) {
  auto t = Good();
  GetParam().mutate(t);
  std::string b = Bytes(t);
  for (size_t chunk : {1u, 7u, 1000000u}) {
    Outcome o = Validate(b, chunk, 100.0);
    ASSERT_FALSE(o.status.ok()) << GetParam().label;
    ASSERT_TRUE(o.reason.has_value());
    EXPECT_EQ(*o.reason, GetParam().reason) << GetParam().label << ": " << o.status.ToString();
    EXPECT_NE(o.status.message().find(GetParam().message_part), std::string::npos) << o.status.ToString();
  }
}

INSTANTIATE_TEST_SUITE_P(
    Failures, UpdateValidatorRejects,
    ::testing::Values(
        Case{"nan", [](auto& t) { t[0].values[4] = NAN; }, RejectReason::kNonFinite,
             "tensor 'a.weight': element 4 is NaN"},
        Case{"inf", [](auto& t) { t[1].values[2] = -INFINITY; }, RejectReason::kNonFinite,
             "tensor 'a.bias': element 2 is -Inf"},
        Case{"bf16 inf", [](auto& t) { t[1].dtype = DType::kBF16; t[1].values[0] = INFINITY; },
             RejectReason::kNonFinite, "tensor 'a.bias': element 0 is +Inf"},
        Case{"shape", [](auto& t) { t[0].shape = {3, 2}; }, RejectReason::kWrongShape,
             "tensor 'a.weight': shape [3,2], expected [2,3]"},
        Case{"dtype", [](auto& t) { t[1].dtype = DType::kI32; }, RejectReason::kWrongDType,
             "tensor 'a.bias': dtype I32 is not allowed"},
        Case{"missing", [](auto& t) { t.pop_back(); }, RejectReason::kMissingTensor, "tensor 'a.bias': missing"},
        Case{"extra", [](auto& t) { t.push_back({"b.weight", {1}, {1}}); }, RejectReason::kExtraTensor,
             "tensor 'b.weight'"},
        Case{"norm", [](auto& t) { t[0].values[0] = 200; }, RejectReason::kNormTooLarge,
             "exceeds max_update_norm 100 (largest: tensor 'a.weight'"}),
    [](const auto& info) {
      std::string s = info.param.label;
      std::replace(s.begin(), s.end(), ' ', '_');
      return s;
    });

TEST(UpdateValidator, NormAtTheLimitIsAccepted) {
  std::vector<T> t = {{"a.weight", {2, 3}, {3, 4, 0, 0, 0, 0}}, {"a.bias", {3}, {0, 0, 0}}};
  EXPECT_TRUE(Validate(Bytes(t), 5, 5.0).status.ok());
  Outcome o = Validate(Bytes(t), 5, 4.999);
  EXPECT_EQ(o.reason, RejectReason::kNormTooLarge);
}

TEST(UpdateValidator, RejectsMalformedStreams) {
  std::string good = Bytes(Good());
  // Truncated in the data.
  Outcome o = Validate(good.substr(0, good.size() - 3), 4);
  EXPECT_EQ(o.reason, RejectReason::kMalformed);
  EXPECT_NE(o.status.message().find("truncated"), std::string::npos) << o.status.ToString();
  // Truncated in the header.
  EXPECT_EQ(Validate(good.substr(0, 20), 4).reason, RejectReason::kMalformed);
  // Trailing bytes.
  o = Validate(good + "xx", 4);
  EXPECT_EQ(o.reason, RejectReason::kMalformed);
  EXPECT_NE(o.status.message().find("trailing"), std::string::npos);
  // Header length beyond the limit.
  std::string huge(8, '\0');
  huge[3] = 0x10;  // 256 MiB
  EXPECT_EQ(Validate(huge, 8).reason, RejectReason::kMalformed);
  // Not JSON.
  std::string bad = std::string("\x04\0\0\0\0\0\0\0", 8) + "{{{{";
  EXPECT_EQ(Validate(bad, 8).reason, RejectReason::kMalformed);
}

std::string WithHeader(const std::string& json, size_t data_bytes) {
  std::string out(8, '\0');
  uint64_t n = json.size();
  std::memcpy(out.data(), &n, 8);
  return out + json + std::string(data_bytes, '\0');
}

TEST(UpdateValidator, RejectsDuplicateNamesAndGaps) {
  ModelSchema s;
  s.tensors = {{"x", {1}}};
  // A duplicate key: the JSON parser keeps one entry, leaving a hole in the data.
  std::string dup = WithHeader(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                               R"("x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                               8);
  Outcome o = Validate(dup, 3, std::nullopt, s);
  EXPECT_EQ(o.reason, RejectReason::kMalformed) << o.status.ToString();
  // Offsets that do not match the shape.
  std::string wrong = WithHeader(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 4);
  o = Validate(wrong, 3, std::nullopt, s);
  EXPECT_EQ(o.reason, RejectReason::kMalformed);
  EXPECT_NE(o.status.message().find("tensor 'x'"), std::string::npos);
  // An unknown dtype name.
  std::string unk = WithHeader(R"({"x":{"dtype":"Q7","shape":[1],"data_offsets":[0,4]}})", 4);
  EXPECT_EQ(Validate(unk, 3, std::nullopt, s).reason, RejectReason::kMalformed);
  // A known safetensors dtype that updates may not use.
  std::string f64 = WithHeader(R"({"x":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", 8);
  EXPECT_EQ(Validate(f64, 3, std::nullopt, s).reason, RejectReason::kWrongDType);
}

TEST(UpdateValidator, SchemaCanNarrowTheAllowedDTypes) {
  ModelSchema s = Schema();
  s.allowed_dtypes = {DType::kBF16};
  Outcome o = Validate(Bytes(Good()), 64, std::nullopt, s);
  EXPECT_EQ(o.reason, RejectReason::kWrongDType);
  EXPECT_NE(o.status.message().find("F32 is not allowed (BF16)"), std::string::npos) << o.status.ToString();
}

TEST(UpdateValidator, FailureSticks) {
  auto t = Good();
  t[0].values[0] = NAN;
  std::string b = Bytes(t);
  UpdateValidator v(Schema(), std::nullopt);
  Status first = v.Feed(std::as_bytes(std::span(b.data(), b.size())));
  ASSERT_FALSE(first.ok());
  EXPECT_EQ(v.Feed(std::as_bytes(std::span(b.data(), 1))), first);
  EXPECT_EQ(v.Finish().status(), first);
}

TEST(ValidateUpdateFile, ValidatesAFileAndNamesTheTensor) {
  hanse::testing::TempDir dir;
  auto good = testing::Write(dir / "good.safetensors", Good());
  auto r = ValidateUpdateFile(good, Schema(), std::nullopt);
  ASSERT_OK(r.status());
  EXPECT_DOUBLE_EQ(r->l2_norm, std::sqrt(95.0));
  EXPECT_EQ(r->tensors, 2u);
  EXPECT_EQ(r->bytes, std::filesystem::file_size(good));

  auto t = Good();
  t[1].values[1] = NAN;
  auto bad = testing::Write(dir / "bad.safetensors", t);
  RejectReason reason = RejectReason::kMalformed;
  auto b = ValidateUpdateFile(bad, Schema(), std::nullopt, &reason);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(reason, RejectReason::kNonFinite);
  EXPECT_NE(b.status().message().find("tensor 'a.bias'"), std::string::npos);

  auto missing = ValidateUpdateFile(dir / "nope.safetensors", Schema(), std::nullopt, &reason);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(reason, RejectReason::kUnreadable);
}

TEST(SchemaFromModel, TakesFloatTensorsMatchingThePatterns) {
  hanse::testing::TempDir dir;
  auto p = testing::Write(dir / "m.safetensors", {{"enc.weight", {2}, {1, 2}},
                                                  {"enc.bias", {1}, {0}},
                                                  {"head.weight", {2}, {1, 2}, DType::kBF16},
                                                  {"bn.steps", {1}, {3}, DType::kI64}});
  auto f = SafetensorsFile::Open(p);
  ASSERT_OK(f.status());
  auto all = SchemaFromModel(**f);
  ASSERT_OK(all.status());
  ASSERT_EQ(all->tensors.size(), 3u);  // the I64 tensor is not trainable
  EXPECT_EQ(all->tensors[0].name, "enc.bias");
  std::vector<std::string> pats = {"head.*"};
  auto head = SchemaFromModel(**f, pats);
  ASSERT_OK(head.status());
  ASSERT_EQ(head->tensors.size(), 1u);
  EXPECT_EQ(head->tensors[0].name, "head.weight");
  std::vector<std::string> none = {"dec.*"};
  auto bad = SchemaFromModel(**f, none);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("'dec.*' matches no tensor"), std::string::npos);
  std::vector<std::string> ints = {"bn.*"};
  EXPECT_FALSE(SchemaFromModel(**f, ints).ok());
}

TEST(RuleOptions, ParsesNamesAndChecksRanges) {
  for (const char* n : {"fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "median", "trimmed_mean", "krum",
                        "multi_krum"}) {
    auto r = ParseRule(n);
    ASSERT_OK(r.status());
    EXPECT_STREQ(RuleName(*r), n);
  }
  auto bad = ParseRule("fedsgd");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("known: fedavg"), std::string::npos);

  RuleOptions o;
  EXPECT_OK(ValidateRuleOptions(o));
  o.clip_norm = 5;
  o.max_update_norm = 4;
  Status s = ValidateRuleOptions(o);
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("clip_norm 5 must be <= max_update_norm 4"), std::string::npos);
  o = RuleOptions{};
  o.rule = Rule::kTrimmedMean;
  o.trim_beta = 0.5;
  EXPECT_FALSE(ValidateRuleOptions(o).ok());
  o = RuleOptions{};
  o.rule = Rule::kFedAdam;
  o.beta2 = 1.0;
  EXPECT_FALSE(ValidateRuleOptions(o).ok());
  o.beta2 = 0.99;
  o.tau = 0;
  EXPECT_FALSE(ValidateRuleOptions(o).ok());
}

}  // namespace
}  // namespace hanse::agg
