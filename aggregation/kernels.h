// Inner loops of the aggregation rules, over fp32 blocks already in memory.
// Written so that GCC vectorizes them at -O2/-O3 (no function calls, no
// aliasing between `out` and inputs, reductions split into fixed lanes so the
// result does not depend on how the data was chunked). Public for bench/.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace hanse::agg::kernels {

// acc[i] += c * x[i]
void FoldF32(float* __restrict acc, const float* __restrict x, float c, size_t n);
// acc[i] += c * float(bf16 x[i]) / float(fp16 x[i])
void FoldBF16(float* __restrict acc, const uint16_t* __restrict x, float c, size_t n);
void FoldF16(float* __restrict acc, const uint16_t* __restrict x, float c, size_t n);

// out[i] = float(x[i])
void BF16ToF32(float* __restrict out, const uint16_t* __restrict x, size_t n);
void F16ToF32(float* __restrict out, const uint16_t* __restrict x, size_t n);
// out[i] = round-to-nearest-even(x[i]) (NaN stays NaN).
void F32ToBF16(uint16_t* __restrict out, const float* __restrict x, size_t n);
void F32ToF16(uint16_t* __restrict out, const float* __restrict x, size_t n);

void Scale(float* x, float c, size_t n);                                    // x[i] *= c
void Sub(float* __restrict x, const float* __restrict g, size_t n);         // x[i] -= g[i]
void Add(float* __restrict out, const float* __restrict a, const float* __restrict b, size_t n);

// True when every x[i] is finite; on false, *first_bad is the first index that is not.
bool AllFinite(const float* x, size_t n, size_t* first_bad);

// Sum of squares in double, split into 8 lanes by element index (lane = index % 8,
// index counted from the start of the tensor), so the result is bitwise the same
// whatever the pieces the tensor was fed in.
class SumSq {
 public:
  void Add(const float* x, size_t n);
  double Total() const;  // fixed order over lanes
  void Reset() { *this = SumSq(); }

 private:
  double lanes_[8] = {};
  size_t pos_ = 0;  // elements seen so far
};

// Sum over i of (a[i] - b[i])^2: fp32 lanes, combined in double (for Krum's ranking).
double SquaredDistance(const float* a, const float* b, size_t n);

// Comparators (i < j) of Batcher's odd-even merge sort for n inputs: applying
// each (i, j) as "min into i, max into j" sorts any n values.
std::vector<std::pair<uint32_t, uint32_t>> SortingNetwork(uint32_t n);
// For each comparator (i, j): rows[i][e], rows[j][e] = min, max, for e < n.
// After the whole network every column is sorted ascending.
void SortColumns(float* const* rows, const std::vector<std::pair<uint32_t, uint32_t>>& network, size_t n);

}  // namespace hanse::agg::kernels
