#include "aggregation/kernels.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <random>

#include <gtest/gtest.h>

#include "core/safetensors.h"

namespace hanse::agg::kernels {
namespace {

TEST(Kernels, HalfConversionsMatchCoreForEveryValue) {
  std::vector<uint16_t> all(65536);
  for (uint32_t i = 0; i < 65536; ++i) all[i] = static_cast<uint16_t>(i);
  std::vector<float> bf(65536), hf(65536);
  BF16ToF32(bf.data(), all.data(), all.size());
  F16ToF32(hf.data(), all.data(), all.size());
  for (uint32_t i = 0; i < 65536; ++i) {
    float want_bf = hanse::BF16ToF32(static_cast<uint16_t>(i));
    float want_hf = hanse::F16ToF32(static_cast<uint16_t>(i));
    if (std::isnan(want_bf)) {
      EXPECT_TRUE(std::isnan(bf[i])) << i;
    } else {
      EXPECT_EQ(std::bit_cast<uint32_t>(bf[i]), std::bit_cast<uint32_t>(want_bf)) << i;
    }
    if (std::isnan(want_hf)) {
      EXPECT_TRUE(std::isnan(hf[i])) << i;
    } else {
      EXPECT_EQ(std::bit_cast<uint32_t>(hf[i]), std::bit_cast<uint32_t>(want_hf)) << i;
    }
  }
}

TEST(Kernels, DownConversionsRoundLikeCore) {
  std::mt19937 rng(7);
  std::vector<float> x;
  for (int i = 0; i < 200000; ++i) x.push_back(std::bit_cast<float>(static_cast<uint32_t>(rng())));
  for (float v : {0.0f, -0.0f, 1.0f, 65504.0f, 65520.0f, 1e-8f, 6e-5f, INFINITY, -INFINITY}) x.push_back(v);
  std::vector<uint16_t> b(x.size()), h(x.size());
  F32ToBF16(b.data(), x.data(), x.size());
  F32ToF16(h.data(), x.data(), x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i])) {
      EXPECT_TRUE(std::isnan(hanse::BF16ToF32(b[i])));
      EXPECT_TRUE(std::isnan(hanse::F16ToF32(h[i])));
      continue;
    }
    EXPECT_EQ(b[i], hanse::F32ToBF16(x[i])) << x[i];
    EXPECT_EQ(h[i], hanse::F32ToF16(x[i])) << x[i];
  }
}

TEST(Kernels, FoldsMatchPlainLoop) {
  std::vector<float> x = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f};
  std::vector<float> acc = {1, 1, 1, 1, 1};
  FoldF32(acc.data(), x.data(), 0.5f, x.size());
  EXPECT_EQ(acc, (std::vector<float>{1.75f, 0.0f, 2.625f, 1.0f, 4.5f}));
  std::vector<uint16_t> b, h;
  for (float v : x) {
    b.push_back(hanse::F32ToBF16(v));
    h.push_back(hanse::F32ToF16(v));
  }
  std::vector<float> acc_b(5, 1.0f), acc_h(5, 1.0f);
  FoldBF16(acc_b.data(), b.data(), 0.5f, 5);
  FoldF16(acc_h.data(), h.data(), 0.5f, 5);
  EXPECT_EQ(acc_b, acc);
  EXPECT_EQ(acc_h, acc);
}

TEST(Kernels, AllFiniteFindsFirstBadElement) {
  std::vector<float> x(1000, 1.0f);
  size_t bad = 99;
  EXPECT_TRUE(AllFinite(x.data(), x.size(), &bad));
  x[517] = NAN;
  x[900] = INFINITY;
  EXPECT_FALSE(AllFinite(x.data(), x.size(), &bad));
  EXPECT_EQ(bad, 517u);
  x[517] = 0;
  EXPECT_FALSE(AllFinite(x.data(), x.size(), &bad));
  EXPECT_EQ(bad, 900u);
}

TEST(Kernels, SumSqDoesNotDependOnChunking) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-3, 3);
  std::vector<float> x(10007);
  for (auto& v : x) v = u(rng);
  SumSq whole;
  whole.Add(x.data(), x.size());
  for (size_t chunk : {1u, 3u, 7u, 8u, 13u, 4096u}) {
    SumSq parts;
    for (size_t i = 0; i < x.size(); i += chunk) parts.Add(x.data() + i, std::min(chunk, x.size() - i));
    EXPECT_EQ(std::bit_cast<uint64_t>(parts.Total()), std::bit_cast<uint64_t>(whole.Total())) << chunk;
  }
  double ref = 0;
  for (float v : x) ref += static_cast<double>(v) * v;
  EXPECT_NEAR(whole.Total(), ref, 1e-9 * ref);
}

TEST(Kernels, SquaredDistance) {
  std::vector<float> a = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  std::vector<float> b(10, 0.0f);
  EXPECT_EQ(SquaredDistance(a.data(), b.data(), 10), 385.0);
  EXPECT_EQ(SquaredDistance(a.data(), a.data(), 10), 0.0);
}

// Zero-one principle: a comparator network sorts everything iff it sorts all 0/1 inputs.
TEST(Kernels, SortingNetworkSortsEveryZeroOneInput) {
  for (uint32_t n = 1; n <= 14; ++n) {
    auto net = SortingNetwork(n);
    const size_t cols = size_t{1} << n;
    std::vector<std::vector<float>> rows(n, std::vector<float>(cols));
    for (size_t c = 0; c < cols; ++c) {
      for (uint32_t r = 0; r < n; ++r) rows[r][c] = static_cast<float>((c >> r) & 1);
    }
    std::vector<float*> ptrs;
    for (auto& r : rows) ptrs.push_back(r.data());
    SortColumns(ptrs.data(), net, cols);
    for (size_t c = 0; c < cols; ++c) {
      for (uint32_t r = 1; r < n; ++r) ASSERT_LE(rows[r - 1][c], rows[r][c]) << "n=" << n << " column " << c;
    }
  }
}

TEST(Kernels, SortColumnsKeepsTheValues) {
  std::vector<float> a = {3, -0.0f, 5}, b = {1, 0.0f, 5}, c = {2, -1, -5};
  float* rows[] = {a.data(), b.data(), c.data()};
  SortColumns(rows, SortingNetwork(3), 3);
  EXPECT_EQ(a, (std::vector<float>{1, -1, -5}));
  EXPECT_EQ(c, (std::vector<float>{3, 0, 5}));
  // -0 and +0 compare equal but both survive.
  EXPECT_NE(std::signbit(b[1]), std::signbit(c[1]));
}

}  // namespace
}  // namespace hanse::agg::kernels
