// AggregateFiles: the offline entry point behind `hanse aggregate`.
#include <cstdio>

#include "aggregation/aggregate.h"
#include "aggregation/engine.h"

namespace hanse::agg {

Result<AggregateResult> AggregateFiles(const OfflineRequest& r) {
  if (r.inputs.empty()) return Status::InvalidArgument("aggregate: no input files");
  if (r.output.empty()) return Status::InvalidArgument("aggregate: no output file");
  if (!r.weights.empty() && r.weights.size() != r.inputs.size()) {
    return Status::InvalidArgument("aggregate: " + std::to_string(r.weights.size()) + " weights for " +
                                   std::to_string(r.inputs.size()) + " inputs");
  }
  if (r.inputs_are_deltas && r.base.empty()) {
    return Status::InvalidArgument("aggregate: deltas need the global model they apply to (--base)");
  }
  if (IsFedOpt(r.options.rule) && r.base.empty()) {
    return Status::InvalidArgument(std::string("aggregate: ") + RuleName(r.options.rule) +
                                   " needs the global model (--base): its step applies to base");
  }
  if (!r.state_in.empty() && !IsFedOpt(r.options.rule)) {
    return Status::InvalidArgument(std::string("aggregate: ") + RuleName(r.options.rule) +
                                   " has no optimizer state to resume from");
  }
  AggregateRequest req;
  req.options = r.options;
  EngineMode mode;
  mode.fail_on_reject = true;
  if (r.base.empty()) {
    req.global_model = r.inputs[0];
    mode.layout = r.inputs[0];
    mode.global_is_zero = true;
  } else {
    req.global_model = r.base;
    mode.inputs_are_models = !r.inputs_are_deltas;
  }
  for (size_t i = 0; i < r.inputs.size(); ++i) {
    char site[32];
    std::snprintf(site, sizeof site, "input-%03zu", i);
    req.updates.push_back({site, r.weights.empty() ? 1 : r.weights[i], r.inputs[i], std::nullopt});
  }
  if (!r.state_in.empty()) req.optimizer_state = r.state_in;
  std::filesystem::path state_out = r.state_out;
  if (state_out.empty() && IsFedOpt(r.options.rule)) {
    state_out = r.output;
    state_out += ".state.safetensors";
  }
  // Nothing is written when an input is rejected: the check runs before the output.
  auto make_model = [&]() { return NewFileWriter(r.output); };
  auto make_state = [&]() { return NewFileWriter(state_out); };
  HANSE_ASSIGN_OR_RETURN(AggregateResult res, RunEngine(req, mode, make_model, make_state));
  return res;
}

}  // namespace hanse::agg
