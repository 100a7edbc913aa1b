// Commands that need no coordinator: keygen, audit, aggregate.
#include <iostream>
#include <sstream>

#include "aggregation/aggregate.h"
#include "cli/commands.h"
#include "cli/format.h"
#include "core/keys.h"
#include "worker/audit_log.h"

namespace hanse::cli {

Outcome RunKeygen(const std::string& name, const fs::path& out_dir, std::ostream& out) {
  if (name.empty() || name.find('/') != std::string::npos || name.front() == '.') {
    return Outcome::Usage("--name '" + name + "' is not a usable file name (no '/', not starting with '.')");
  }
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return Outcome::Local("cannot create folder " + out_dir.string() + ": " + ec.message());
  auto kp = WriteKeyPair(name, out_dir);
  if (!kp.ok()) return Outcome::Local(kp.status());
  out << "public key   " << kp->public_key << "\n";
  out << "public file  " << (out_dir / (name + ".pub")).string() << "  (send it to the coordinator admin)\n";
  out << "secret file  " << (out_dir / (name + ".key")).string() << "  (mode 0600; keep it private)\n";
  return Outcome::Ok();
}

Outcome RunAuditVerify(const std::vector<fs::path>& logs, std::ostream& out) {
  Outcome result = Outcome::Ok();
  for (const auto& log : logs) {
    auto n = site::VerifyAuditLog(log);
    if (n.ok()) {
      out << "audit ok: " << log.string() << " (" << n.value() << " entries, chain intact)\n";
    } else if (n.status().code() == Code::kNotFound) {
      if (result.ok()) result = Outcome::Local("no audit log at " + log.string());
    } else {
      out << "audit FAILED: " << n.status().message() << "\n";
      if (result.ok()) result = Outcome::Local("audit log " + log.string() + " does not verify: " + n.status().message());
    }
  }
  return result;
}

Outcome RunAuditShow(const fs::path& log, std::ostream& out) {
  Status s = site::ShowAuditLog(log, out);
  if (!s.ok()) return Outcome::Local("audit log " + log.string() + ": " + s.message());
  return Outcome::Ok();
}

Outcome RunAggregate(const AggregateArgs& a, std::ostream& out) {
  if (a.inputs.empty()) return Outcome::Usage("aggregate needs at least one input model");
  if (a.output.empty()) return Outcome::Usage("aggregate needs -o OUTPUT");
  if (!a.weights.empty() && a.weights.size() != a.inputs.size()) {
    return Outcome::Usage("--weights has " + std::to_string(a.weights.size()) + " values for " +
                          std::to_string(a.inputs.size()) + " inputs");
  }
  auto rule = agg::ParseRule(a.rule);
  if (!rule.ok()) return Outcome::Usage("--rule: " + rule.status().message());
  agg::OfflineRequest req;
  req.options.rule = rule.value();
  req.options.server_lr = a.server_lr;
  req.options.beta1 = a.beta1;
  req.options.beta2 = a.beta2;
  req.options.tau = a.tau;
  req.options.trim_beta = a.trim_beta;
  req.options.krum_f = a.krum_f;
  req.options.krum_m = a.krum_m;
  req.options.max_update_norm = a.max_update_norm;
  req.options.clip_norm = a.clip_norm;
  if (Status s = agg::ValidateRuleOptions(req.options); !s.ok()) return Outcome::Usage(s.message());
  req.inputs = a.inputs;
  req.weights = a.weights;
  req.inputs_are_deltas = a.deltas;
  req.base = a.base;
  req.output = a.output;
  req.state_in = a.state_in;
  req.state_out = a.state_out;
  for (const auto& in : a.inputs) {
    if (!fs::exists(in)) return Outcome::Local("input model " + in.string() + " does not exist");
  }
  auto r = agg::AggregateFiles(req);
  if (!r.ok()) {
    if (r.status().code() == Code::kInvalidArgument) return Outcome::Usage(r.status().message());
    return Outcome::Local(r.status().message());
  }
  out << "wrote " << a.output.string() << " (" << agg::RuleName(rule.value()) << " of " << a.inputs.size()
      << " models, " << r->model_bytes << " bytes, sha256 " << r->model_hash << ")\n";
  if (!r->clipped_sites.empty()) out << "clipped to clip_norm: " << r->clipped_sites.size() << " input(s)\n";
  if (r->used_sites.size() != r->accepted_sites.size()) {
    out << "used " << r->used_sites.size() << " of " << r->accepted_sites.size() << " inputs:";
    for (const auto& s : r->used_sites) out << " " << s;
    out << "\n";
  }
  if (r->state_hash) out << "optimizer state sha256 " << *r->state_hash << "\n";
  return Outcome::Ok();
}

}  // namespace hanse::cli
