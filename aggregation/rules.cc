// Rule names, option checks and the update schema.
#include <fnmatch.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

#include "aggregation/aggregate.h"

namespace hanse::agg {
namespace {

struct RuleEntry {
  Rule rule;
  const char* name;
};
constexpr RuleEntry kRules[] = {
    {Rule::kFedAvg, "fedavg"},     {Rule::kFedProx, "fedprox"}, {Rule::kFedAdam, "fedadam"},
    {Rule::kFedYogi, "fedyogi"},   {Rule::kFedAdagrad, "fedadagrad"}, {Rule::kMedian, "median"},
    {Rule::kTrimmedMean, "trimmed_mean"}, {Rule::kKrum, "krum"}, {Rule::kMultiKrum, "multi_krum"},
};

// Same matching as the worker's trainer (fnmatch(3), no flags), so both sides
// agree on the trainable set.
bool GlobMatch(const std::string& pattern, const std::string& text) {
  return fnmatch(pattern.c_str(), text.c_str(), 0) == 0;
}

bool IsFloat(DType d) { return d == DType::kF32 || d == DType::kBF16 || d == DType::kF16; }

}  // namespace

Result<Rule> ParseRule(std::string_view name) {
  for (const auto& e : kRules) {
    if (name == e.name) return e.rule;
  }
  std::string all;
  for (const auto& e : kRules) all += std::string(all.empty() ? "" : ", ") + e.name;
  return Status::InvalidArgument("unknown aggregation rule '" + std::string(name) + "' (known: " + all + ")");
}

const char* RuleName(Rule rule) {
  for (const auto& e : kRules) {
    if (e.rule == rule) return e.name;
  }
  return "?";
}

bool IsFedOpt(Rule rule) { return rule == Rule::kFedAdam || rule == Rule::kFedYogi || rule == Rule::kFedAdagrad; }

Status ValidateRuleOptions(const RuleOptions& o) {
  auto bad = [](const std::string& what) { return Status::InvalidArgument("aggregation options: " + what); };
  auto num = [](double v) {
    std::ostringstream os;
    os << v;
    return os.str();
  };
  if (o.block_elems == 0 || o.block_elems > (size_t{1} << 26)) return bad("block_elems must be in [1, 2^26]");
  if (IsFedOpt(o.rule)) {
    if (!(o.server_lr > 0) || !std::isfinite(o.server_lr)) return bad("server_lr must be > 0, got " + num(o.server_lr));
    if (!(o.beta1 >= 0 && o.beta1 < 1)) return bad("beta1 must be in [0, 1), got " + num(o.beta1));
    if (o.rule != Rule::kFedAdagrad && !(o.beta2 >= 0 && o.beta2 < 1)) {
      return bad("beta2 must be in [0, 1), got " + num(o.beta2));
    }
    if (!(o.tau > 0) || !std::isfinite(o.tau)) return bad("tau must be > 0, got " + num(o.tau));
  }
  if (o.rule == Rule::kTrimmedMean && !(o.trim_beta >= 0 && o.trim_beta < 0.5)) {
    return bad("trim_beta must be in [0, 0.5), got " + num(o.trim_beta));
  }
  if (o.rule == Rule::kMultiKrum && o.krum_m < 1) return bad("krum_m must be >= 1");
  if (o.max_update_norm && !(*o.max_update_norm > 0 && std::isfinite(*o.max_update_norm))) {
    return bad("max_update_norm must be > 0, got " + num(*o.max_update_norm));
  }
  if (o.clip_norm) {
    if (!(*o.clip_norm > 0 && std::isfinite(*o.clip_norm))) return bad("clip_norm must be > 0, got " + num(*o.clip_norm));
    if (o.max_update_norm && *o.clip_norm > *o.max_update_norm) {
      return bad("clip_norm " + num(*o.clip_norm) + " must be <= max_update_norm " + num(*o.max_update_norm));
    }
  }
  return Status::Ok();
}

const TensorSchema* ModelSchema::Find(std::string_view name) const {
  auto it = std::lower_bound(tensors.begin(), tensors.end(), name,
                             [](const TensorSchema& t, std::string_view n) { return t.name < n; });
  if (it == tensors.end() || it->name != name) return nullptr;
  return &*it;
}

Result<ModelSchema> SchemaFromModel(const SafetensorsFile& model, std::span<const std::string> trainable_patterns) {
  ModelSchema schema;
  std::vector<bool> used(trainable_patterns.size(), false);
  for (const auto& t : model.tensors()) {
    bool match = trainable_patterns.empty();
    for (size_t i = 0; i < trainable_patterns.size(); ++i) {
      if (GlobMatch(trainable_patterns[i], t.name)) {
        match = true;
        used[i] = true;
      }
    }
    if (!match) continue;
    if (!IsFloat(t.dtype)) {
      if (trainable_patterns.empty()) continue;  // e.g. BatchNorm step counters: copied unchanged
      return Status::InvalidArgument("trainable tensor '" + t.name + "' has dtype " + DTypeName(t.dtype) +
                                     ": only F32, BF16 and F16 tensors can be trained");
    }
    schema.tensors.push_back({t.name, t.shape});
  }
  for (size_t i = 0; i < trainable_patterns.size(); ++i) {
    if (!used[i]) {
      return Status::InvalidArgument("trainable pattern '" + trainable_patterns[i] + "' matches no tensor of " +
                                     model.path().string());
    }
  }
  std::sort(schema.tensors.begin(), schema.tensors.end(),
            [](const TensorSchema& a, const TensorSchema& b) { return a.name < b.name; });
  if (schema.tensors.empty()) return Status::InvalidArgument("model " + model.path().string() + " has no float tensor");
  return schema;
}

const char* RejectReasonName(RejectReason r) {
  switch (r) {
    case RejectReason::kMalformed: return "malformed";
    case RejectReason::kMissingTensor: return "missing_tensor";
    case RejectReason::kExtraTensor: return "extra_tensor";
    case RejectReason::kWrongShape: return "wrong_shape";
    case RejectReason::kWrongDType: return "wrong_dtype";
    case RejectReason::kNonFinite: return "non_finite";
    case RejectReason::kNormTooLarge: return "norm_too_large";
    case RejectReason::kDuplicateSite: return "duplicate_site";
    case RejectReason::kUnreadable: return "unreadable";
  }
  return "?";
}

}  // namespace hanse::agg
