#include "aggregation/kernels.h"

#include <bit>
#include <cmath>

namespace hanse::agg::kernels {
namespace {

inline float Bf16Bits(uint16_t v) { return std::bit_cast<float>(static_cast<uint32_t>(v) << 16); }

// Branch-free so the loop vectorizes: the exponent is rebiased by a multiply,
// which also turns half denormals into the right float; Inf/NaN are patched.
inline float F16Bits(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t em = h & 0x7fffu;
  const float f = std::bit_cast<float>(em << 13) * 0x1p112f;
  uint32_t r = std::bit_cast<uint32_t>(f);
  r = em >= 0x7c00u ? (0x7f800000u | ((em & 0x3ffu) << 13)) : r;
  return std::bit_cast<float>(r | sign);
}

inline uint16_t ToBf16(float x) {
  const uint32_t b = std::bit_cast<uint32_t>(x);
  const uint32_t rounded = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
  const uint32_t nan = (b >> 16) | 0x40u;  // keep NaN a (quiet) NaN
  return static_cast<uint16_t>((b & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

// Round to nearest even (F. Giesen's float_to_half_fast3_rtne).
inline uint16_t ToF16(float x) {
  constexpr uint32_t kF32Infty = 255u << 23;
  constexpr uint32_t kF16Max = (127u + 16u) << 23;
  constexpr uint32_t kDenormMagic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  uint32_t f = std::bit_cast<uint32_t>(x);
  const uint32_t sign = f & 0x80000000u;
  f ^= sign;
  uint32_t o;
  if (f >= kF16Max) {
    o = f > kF32Infty ? 0x7e00u : 0x7c00u;
  } else if (f < (113u << 23)) {
    const float d = std::bit_cast<float>(f) + std::bit_cast<float>(kDenormMagic);
    o = std::bit_cast<uint32_t>(d) - kDenormMagic;
  } else {
    const uint32_t mant_odd = (f >> 13) & 1u;
    f += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu;
    f += mant_odd;
    o = f >> 13;
  }
  return static_cast<uint16_t>(o | (sign >> 16));
}

}  // namespace

void FoldF32(float* __restrict acc, const float* __restrict x, float c, size_t n) {
  for (size_t i = 0; i < n; ++i) acc[i] += c * x[i];
}
void FoldBF16(float* __restrict acc, const uint16_t* __restrict x, float c, size_t n) {
  for (size_t i = 0; i < n; ++i) acc[i] += c * Bf16Bits(x[i]);
}
void FoldF16(float* __restrict acc, const uint16_t* __restrict x, float c, size_t n) {
  for (size_t i = 0; i < n; ++i) acc[i] += c * F16Bits(x[i]);
}

void BF16ToF32(float* __restrict out, const uint16_t* __restrict x, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = Bf16Bits(x[i]);
}
void F16ToF32(float* __restrict out, const uint16_t* __restrict x, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = F16Bits(x[i]);
}
void F32ToBF16(uint16_t* __restrict out, const float* __restrict x, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = ToBf16(x[i]);
}
void F32ToF16(uint16_t* __restrict out, const float* __restrict x, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = ToF16(x[i]);
}

void Scale(float* x, float c, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] *= c;
}
void Sub(float* __restrict x, const float* __restrict g, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] -= g[i];
}
void Add(float* __restrict out, const float* __restrict a, const float* __restrict b, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

bool AllFinite(const float* x, size_t n, size_t* first_bad) {
  uint32_t bad = 0;
  for (size_t i = 0; i < n; ++i) {
    bad |= static_cast<uint32_t>((std::bit_cast<uint32_t>(x[i]) & 0x7f800000u) == 0x7f800000u);
  }
  if (bad == 0) return true;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i])) {
      if (first_bad) *first_bad = i;
      return false;
    }
  }
  return true;  // unreachable
}

void SumSq::Add(const float* x, size_t n) {
  double l[8];
  for (int k = 0; k < 8; ++k) l[k] = lanes_[k];
  size_t i = 0;
  for (; i < n && (pos_ + i) % 8 != 0; ++i) l[(pos_ + i) % 8] += static_cast<double>(x[i]) * x[i];
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) l[k] += static_cast<double>(x[i + k]) * static_cast<double>(x[i + k]);
  }
  for (; i < n; ++i) l[(pos_ + i) % 8] += static_cast<double>(x[i]) * x[i];
  for (int k = 0; k < 8; ++k) lanes_[k] = l[k];
  pos_ += n;
}

double SumSq::Total() const {
  return ((lanes_[0] + lanes_[1]) + (lanes_[2] + lanes_[3])) + ((lanes_[4] + lanes_[5]) + (lanes_[6] + lanes_[7]));
}

double SquaredDistance(const float* a, const float* b, size_t n) {
  // 16 fp32 lanes (fast; the callers pass blocks of <= 2^16 elements, so each lane
  // sums <= 4096 terms), combined in double in a fixed order.
  float l[16] = {};
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    for (int k = 0; k < 16; ++k) {
      const float d = a[i + k] - b[i + k];
      l[k] += d * d;
    }
  }
  for (; i < n; ++i) {
    const float d = a[i] - b[i];
    l[i % 16] += d * d;
  }
  double sum = 0;
  for (int k = 0; k < 16; ++k) sum += l[k];
  return sum;
}

std::vector<std::pair<uint32_t, uint32_t>> SortingNetwork(uint32_t n) {
  // Batcher's odd-even merge sort, in the form that works for any n (comparators
  // reaching past n are simply absent).
  std::vector<std::pair<uint32_t, uint32_t>> net;
  for (uint32_t p = 1; p < n; p <<= 1) {
    for (uint32_t k = p; k >= 1; k >>= 1) {
      for (uint32_t j = k % p; j + k < n; j += 2 * k) {
        for (uint32_t i = 0; i < k && i + j + k < n; ++i) {
          if ((i + j) / (2 * p) == (i + j + k) / (2 * p)) net.emplace_back(i + j, i + j + k);
        }
      }
    }
  }
  return net;
}

namespace {
// One comparator over whole rows. restrict on parameters (not locals) is what
// lets GCC vectorize it.
void CompareSwap(float* __restrict a, float* __restrict b, size_t n) {
  for (size_t e = 0; e < n; ++e) {
    const float x = a[e];
    const float y = b[e];
    // A swap, not min/max: keeps the multiset of values (e.g. -0 and +0) intact.
    // Written as a bit mask because GCC does not if-convert the float selects.
    const uint32_t m = 0u - static_cast<uint32_t>(y < x);
    const uint32_t xb = std::bit_cast<uint32_t>(x);
    const uint32_t yb = std::bit_cast<uint32_t>(y);
    a[e] = std::bit_cast<float>((yb & m) | (xb & ~m));
    b[e] = std::bit_cast<float>((xb & m) | (yb & ~m));
  }
}
}  // namespace

void SortColumns(float* const* rows, const std::vector<std::pair<uint32_t, uint32_t>>& network, size_t n) {
  for (const auto& [i, j] : network) CompareSwap(rows[i], rows[j], n);
}

}  // namespace hanse::agg::kernels
