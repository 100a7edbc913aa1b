#include "coordinator/ledger.h"

namespace hanse::coord {

double CostOf(double cpu_seconds, double gpu_seconds, const CostRates& rates) {
  return cpu_seconds / 3600.0 * rates.cpu_hour + gpu_seconds / 3600.0 * rates.gpu_hour;
}

Result<std::vector<LedgerRow>> QueryLedger(Store& store, const UsageQuery& query, const CostRates& rates) {
  HANSE_ASSIGN_OR_RETURN(auto sums, store.QueryUsage(query));
  std::vector<LedgerRow> rows;
  rows.reserve(sums.size());
  for (const auto& s : sums) {
    LedgerRow r;
    r.key = s.key;
    r.tasks = s.tasks;
    r.cpu_hours = s.cpu_seconds / 3600.0;
    r.gpu_hours = s.gpu_seconds / 3600.0;
    r.cost = CostOf(s.cpu_seconds, s.gpu_seconds, rates);
    rows.push_back(r);
  }
  return rows;
}

}  // namespace hanse::coord
