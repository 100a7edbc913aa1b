// Usage ledger queries: sums of device seconds per site, lead or job over a
// period, priced at the coordinator's rates (GPU-hours and CPU-hours).
#pragma once

#include <string>
#include <vector>

#include "core/config.h"
#include "core/status.h"
#include "coordinator/store.h"

namespace hanse::coord {

struct LedgerRow {
  std::string key;        // site, lead or job id
  uint64_t tasks = 0;
  double cpu_hours = 0;
  double gpu_hours = 0;
  double cost = 0;        // gpu_hours x gpu rate + cpu_hours x cpu rate
};

// Reads the ledger; errors come from the store.
Result<std::vector<LedgerRow>> QueryLedger(Store& store, const UsageQuery& query, const CostRates& rates);

// Cost of one usage sum at `rates`.
double CostOf(double cpu_seconds, double gpu_seconds, const CostRates& rates);

}  // namespace hanse::coord
