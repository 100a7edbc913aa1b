// Helpers for aggregation tests: small safetensors models and updates on disk.
#pragma once

#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "test_util.h"

namespace hanse::agg::testing {

struct T {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;
  DType dtype = DType::kF32;
};

inline OwnedTensor Own(const T& t) {
  OwnedTensor o;
  o.name = t.name;
  o.dtype = t.dtype;
  o.shape = t.shape;
  if (t.dtype == DType::kF32) {
    o.bytes.assign(reinterpret_cast<const char*>(t.values.data()), t.values.size() * sizeof(float));
  } else if (t.dtype == DType::kBF16 || t.dtype == DType::kF16) {
    std::vector<uint16_t> h;
    for (float v : t.values) h.push_back(t.dtype == DType::kBF16 ? F32ToBF16(v) : F32ToF16(v));
    o.bytes.assign(reinterpret_cast<const char*>(h.data()), h.size() * 2);
  } else if (t.dtype == DType::kI64) {
    std::vector<int64_t> h;
    for (float v : t.values) h.push_back(static_cast<int64_t>(v));
    o.bytes.assign(reinterpret_cast<const char*>(h.data()), h.size() * 8);
  } else {
    std::vector<int32_t> h;
    for (float v : t.values) h.push_back(static_cast<int32_t>(v));
    o.bytes.assign(reinterpret_cast<const char*>(h.data()), h.size() * 4);
  }
  return o;
}

inline std::string Bytes(const std::vector<T>& tensors, const std::map<std::string, std::string>& md = {}) {
  std::vector<OwnedTensor> owned;
  for (const auto& t : tensors) owned.push_back(Own(t));
  auto r = SerializeSafetensors(owned, md);
  if (!r.ok()) throw std::runtime_error(r.status().ToString());
  return *r;
}

inline std::filesystem::path Write(const std::filesystem::path& p, const std::vector<T>& tensors,
                                   const std::map<std::string, std::string>& md = {}) {
  hanse::testing::WriteFile(p, Bytes(tensors, md));
  return p;
}

// All values of tensor `name` as fp32.
inline std::vector<float> Read(const std::filesystem::path& p, const std::string& name) {
  auto f = SafetensorsFile::Open(p);
  if (!f.ok()) throw std::runtime_error(f.status().ToString());
  const TensorInfo* t = (*f)->Find(name);
  if (!t) throw std::runtime_error("no tensor " + name);
  auto data = (*f)->Data(*t);
  std::vector<float> out(t->numel());
  for (size_t i = 0; i < out.size(); ++i) {
    if (t->dtype == DType::kF32) {
      std::memcpy(&out[i], data.data() + 4 * i, 4);
    } else {
      uint16_t h;
      std::memcpy(&h, data.data() + 2 * i, 2);
      out[i] = t->dtype == DType::kBF16 ? BF16ToF32(h) : F16ToF32(h);
    }
  }
  return out;
}

}  // namespace hanse::agg::testing
