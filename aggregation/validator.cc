// Streaming validation of a safetensors update against the expected schema.
#include <fcntl.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>

#include <nlohmann/json.hpp>

#include "aggregation/aggregate.h"
#include "aggregation/kernels.h"
#include "core/fsutil.h"

namespace hanse::agg {
namespace {

constexpr uint64_t kMaxHeaderBytes = 16u << 20;
constexpr size_t kStage = 4096;  // elements converted and checked at a time

struct DTypeInfo {
  const char* name;
  std::optional<DType> dtype;  // nullopt: a safetensors dtype hanse never accepts in an update
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {"F32", DType::kF32, 4},  {"F16", DType::kF16, 2},    {"BF16", DType::kBF16, 2},
    {"I64", DType::kI64, 8},  {"I32", DType::kI32, 4},    {"F64", std::nullopt, 8},
    {"I16", std::nullopt, 2}, {"I8", std::nullopt, 1},    {"U8", std::nullopt, 1},
    {"U16", std::nullopt, 2}, {"U32", std::nullopt, 4},   {"U64", std::nullopt, 8},
    {"BOOL", std::nullopt, 1}, {"F8_E4M3", std::nullopt, 1}, {"F8_E5M2", std::nullopt, 1},
};

std::string Num(double v) {
  std::ostringstream os;
  os.precision(9);
  os << v;
  return os.str();
}

std::string ShapeStr(const std::vector<int64_t>& s) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < s.size(); ++i) os << (i ? "," : "") << s[i];
  os << ']';
  return os.str();
}

std::string Quote(const std::string& name) { return "tensor '" + name + "'"; }

}  // namespace

struct UpdateValidator::State {
  enum class Phase { kLength, kHeader, kData, kDone };
  struct Entry {
    std::string name;
    std::string dtype_name;
    std::optional<DType> dtype;
    size_t elem_size = 0;
    std::vector<int64_t> shape;
    uint64_t begin = 0;
    uint64_t end = 0;
    double sumsq = 0;
  };
  Phase phase = Phase::kLength;
  std::byte length_buf[8];
  size_t length_have = 0;
  uint64_t header_len = 0;
  std::string header;
  std::vector<Entry> entries;  // by data offset
  uint64_t data_total = 0;
  size_t current = 0;          // entry being filled
  uint64_t data_pos = 0;       // bytes of the data section seen
  std::byte carry[8];
  size_t carry_n = 0;
  std::vector<float> stage = std::vector<float>(kStage);
  std::vector<uint16_t> half = std::vector<uint16_t>(kStage);
  size_t stage_n = 0;
  uint64_t stage_first = 0;    // element index (in the tensor) of stage[0]
  kernels::SumSq sumsq;
};

UpdateValidator::UpdateValidator(const ModelSchema& expected, std::optional<double> max_norm)
    : expected_(expected), max_norm_(max_norm), state_(std::make_unique<State>()) {}
UpdateValidator::~UpdateValidator() = default;

Status UpdateValidator::Fail(RejectReason reason, Status status) {
  reason_ = reason;
  failure_ = std::move(status);
  return failure_;
}

Status UpdateValidator::Feed(std::span<const std::byte> bytes) {
  if (reason_) return failure_;
  State& s = *state_;
  while (!bytes.empty()) {
    switch (s.phase) {
      case State::Phase::kLength: {
        size_t take = std::min(bytes.size(), 8 - s.length_have);
        std::memcpy(s.length_buf + s.length_have, bytes.data(), take);
        s.length_have += take;
        bytes = bytes.subspan(take);
        if (s.length_have == 8) {
          uint64_t n = 0;
          for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(s.length_buf[i]);
          if (n == 0 || n > kMaxHeaderBytes) {
            return Fail(RejectReason::kMalformed,
                        Status::InvalidArgument("safetensors header length " + std::to_string(n) +
                                                " is not in [1, 16 MiB]"));
          }
          s.header_len = n;
          s.header.reserve(n);
          s.phase = State::Phase::kHeader;
        }
        break;
      }
      case State::Phase::kHeader: {
        size_t take = std::min<uint64_t>(bytes.size(), s.header_len - s.header.size());
        s.header.append(reinterpret_cast<const char*>(bytes.data()), take);
        bytes = bytes.subspan(take);
        if (s.header.size() == s.header_len) {
          HANSE_RETURN_IF_ERROR(ParseHeader());
          std::string().swap(s.header);
          HANSE_RETURN_IF_ERROR(CheckTensorDone());  // leading empty tensors, or no data at all
        }
        break;
      }
      case State::Phase::kData: {
        uint64_t room = s.entries[s.current].end - s.data_pos;
        size_t take = static_cast<size_t>(std::min<uint64_t>(room, bytes.size()));
        HANSE_RETURN_IF_ERROR(FeedData(bytes.first(take)));
        bytes = bytes.subspan(take);
        HANSE_RETURN_IF_ERROR(CheckTensorDone());
        break;
      }
      case State::Phase::kDone:
        return Fail(RejectReason::kMalformed,
                    Status::InvalidArgument("trailing bytes after the last tensor (data section is " +
                                            std::to_string(s.data_total) + " bytes)"));
    }
  }
  return Status::Ok();
}

Status UpdateValidator::ParseHeader() {
  State& s = *state_;
  auto malformed = [&](const std::string& m) {
    return Fail(RejectReason::kMalformed, Status::InvalidArgument("safetensors header: " + m));
  };
  nlohmann::json j = nlohmann::json::parse(s.header, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return malformed("not valid JSON");
  if (!j.is_object()) return malformed("not a JSON object");
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") continue;
    const auto& v = it.value();
    if (!v.is_object()) return malformed(Quote(name) + ": entry is not an object");
    auto dt = v.find("dtype");
    auto sh = v.find("shape");
    auto off = v.find("data_offsets");
    if (dt == v.end() || !dt->is_string()) return malformed(Quote(name) + ": missing string 'dtype'");
    if (sh == v.end() || !sh->is_array()) return malformed(Quote(name) + ": missing array 'shape'");
    if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned()) {
      return malformed(Quote(name) + ": 'data_offsets' must be two unsigned integers");
    }
    State::Entry e;
    e.name = name;
    e.dtype_name = dt->get<std::string>();
    const DTypeInfo* known = nullptr;
    for (const auto& d : kDTypes) {
      if (e.dtype_name == d.name) known = &d;
    }
    if (!known) return malformed(Quote(name) + ": unknown dtype '" + e.dtype_name + "'");
    e.dtype = known->dtype;
    e.elem_size = known->size;
    uint64_t numel = 1;
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned()) return malformed(Quote(name) + ": shape entries must be unsigned integers");
      uint64_t dim = d.get<uint64_t>();
      if (dim > static_cast<uint64_t>(INT64_MAX) || __builtin_mul_overflow(numel, dim, &numel)) {
        return malformed(Quote(name) + ": shape overflows");
      }
      e.shape.push_back(static_cast<int64_t>(dim));
    }
    e.begin = (*off)[0].get<uint64_t>();
    e.end = (*off)[1].get<uint64_t>();
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(e.elem_size), &nbytes) || e.end < e.begin ||
        e.end - e.begin != nbytes) {
      return malformed(Quote(name) + ": data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                       ") do not hold shape " + ShapeStr(e.shape) + " of " + e.dtype_name);
    }
    s.entries.push_back(std::move(e));
  }
  // The data must tile [0, total) exactly: no gap (which would also hide a
  // duplicate JSON key, since the parser keeps only one of them), no overlap.
  std::stable_sort(s.entries.begin(), s.entries.end(), [](const State::Entry& a, const State::Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t pos = 0;
  for (const auto& e : s.entries) {
    if (e.begin != pos) {
      return malformed(Quote(e.name) + ": data starts at " + std::to_string(e.begin) + ", expected " +
                       std::to_string(pos) + " (gap, overlap or duplicate name)");
    }
    pos = e.end;
  }
  s.data_total = pos;

  // Against the schema, in name order so the first problem reported is stable.
  std::vector<const State::Entry*> by_name;
  for (const auto& e : s.entries) by_name.push_back(&e);
  std::sort(by_name.begin(), by_name.end(), [](auto* a, auto* b) { return a->name < b->name; });
  for (const auto* e : by_name) {
    const TensorSchema* want = expected_.Find(e->name);
    if (!want) {
      return Fail(RejectReason::kExtraTensor,
                  Status::InvalidArgument(Quote(e->name) + ": not part of the model's trainable tensors"));
    }
    bool allowed = e->dtype && std::find(expected_.allowed_dtypes.begin(), expected_.allowed_dtypes.end(),
                                         *e->dtype) != expected_.allowed_dtypes.end();
    if (!allowed) {
      std::string list;
      for (DType d : expected_.allowed_dtypes) list += std::string(list.empty() ? "" : ", ") + DTypeName(d);
      return Fail(RejectReason::kWrongDType,
                  Status::InvalidArgument(Quote(e->name) + ": dtype " + e->dtype_name + " is not allowed (" + list +
                                          ")"));
    }
    if (e->shape != want->shape) {
      return Fail(RejectReason::kWrongShape,
                  Status::InvalidArgument(Quote(e->name) + ": shape " + ShapeStr(e->shape) + ", expected " +
                                          ShapeStr(want->shape)));
    }
  }
  std::vector<std::string> names;
  for (const auto* e : by_name) names.push_back(e->name);
  for (const auto& t : expected_.tensors) {
    bool found = std::binary_search(names.begin(), names.end(), t.name);
    if (!found) return Fail(RejectReason::kMissingTensor, Status::InvalidArgument(Quote(t.name) + ": missing"));
  }
  s.phase = State::Phase::kData;
  s.current = 0;
  return Status::Ok();
}

Status UpdateValidator::FeedData(std::span<const std::byte> bytes) {
  State& s = *state_;
  State::Entry& e = s.entries[s.current];
  const size_t es = e.elem_size;
  s.data_pos += bytes.size();

  auto flush = [&]() -> Status {
    if (s.stage_n == 0) return Status::Ok();
    size_t bad = 0;
    if (!kernels::AllFinite(s.stage.data(), s.stage_n, &bad)) {
      const float v = s.stage[bad];
      return Fail(RejectReason::kNonFinite,
                  Status::InvalidArgument(Quote(e.name) + ": element " + std::to_string(s.stage_first + bad) + " is " +
                                          (std::isnan(v) ? "NaN" : (v > 0 ? "+Inf" : "-Inf"))));
    }
    s.sumsq.Add(s.stage.data(), s.stage_n);
    s.stage_first += s.stage_n;
    s.stage_n = 0;
    return Status::Ok();
  };
  // Converts `count` whole elements at `src` and appends them to the stage.
  auto append = [&](const std::byte* src, size_t count) -> Status {
    while (count > 0) {
      size_t take = std::min(count, kStage - s.stage_n);
      float* dst = s.stage.data() + s.stage_n;
      if (*e.dtype == DType::kF32) {
        std::memcpy(dst, src, take * 4);
      } else {
        std::memcpy(s.half.data(), src, take * 2);
        if (*e.dtype == DType::kBF16) {
          kernels::BF16ToF32(dst, s.half.data(), take);
        } else {
          kernels::F16ToF32(dst, s.half.data(), take);
        }
      }
      s.stage_n += take;
      src += take * es;
      count -= take;
      if (s.stage_n == kStage) HANSE_RETURN_IF_ERROR(flush());
    }
    return Status::Ok();
  };

  if (s.carry_n > 0) {
    size_t take = std::min(bytes.size(), es - s.carry_n);
    std::memcpy(s.carry + s.carry_n, bytes.data(), take);
    s.carry_n += take;
    bytes = bytes.subspan(take);
    if (s.carry_n < es) return Status::Ok();
    s.carry_n = 0;
    HANSE_RETURN_IF_ERROR(append(s.carry, 1));
  }
  size_t whole = bytes.size() / es;
  HANSE_RETURN_IF_ERROR(append(bytes.data(), whole));
  size_t rest = bytes.size() - whole * es;
  std::memcpy(s.carry, bytes.data() + whole * es, rest);
  s.carry_n = rest;
  if (s.data_pos == e.end) return flush();
  return Status::Ok();
}

// Moves past every tensor whose bytes are complete (including empty ones).
Status UpdateValidator::CheckTensorDone() {
  State& s = *state_;
  while (s.current < s.entries.size() && s.data_pos == s.entries[s.current].end) {
    s.entries[s.current].sumsq = s.sumsq.Total();
    s.sumsq.Reset();
    s.stage_first = 0;
    ++s.current;
  }
  if (s.current == s.entries.size()) s.phase = State::Phase::kDone;
  return Status::Ok();
}

Result<ValidatedUpdate> UpdateValidator::Finish() {
  if (reason_) return failure_;
  State& s = *state_;
  if (s.phase != State::Phase::kDone) {
    std::string where = s.phase == State::Phase::kData ? " (in " + Quote(s.entries[s.current].name) + ")" : "";
    return Fail(RejectReason::kMalformed,
                Status::InvalidArgument("truncated safetensors stream" + where));
  }
  std::vector<const State::Entry*> by_name;
  for (const auto& e : s.entries) by_name.push_back(&e);
  std::sort(by_name.begin(), by_name.end(), [](auto* a, auto* b) { return a->name < b->name; });
  double total = 0;
  const State::Entry* largest = nullptr;
  for (const auto* e : by_name) {
    total += e->sumsq;
    if (!largest || e->sumsq > largest->sumsq) largest = e;
  }
  ValidatedUpdate v;
  v.bytes = 8 + s.header_len + s.data_total;
  v.l2_norm = std::sqrt(total);
  v.tensors = s.entries.size();
  if (max_norm_ && v.l2_norm > *max_norm_) {
    return Fail(RejectReason::kNormTooLarge,
                Status::InvalidArgument("update L2 norm " + Num(v.l2_norm) + " exceeds max_update_norm " +
                                        Num(*max_norm_) + " (largest: " + Quote(largest->name) + ", norm " +
                                        Num(std::sqrt(largest->sumsq)) + ")"));
  }
  return v;
}

Result<ValidatedUpdate> ValidateUpdateFile(const std::filesystem::path& file, const ModelSchema& expected,
                                           std::optional<double> max_norm, RejectReason* reason) {
  auto fd = OpenFd(file, O_RDONLY);
  if (!fd.ok()) {
    if (reason) *reason = RejectReason::kUnreadable;
    return fd.status();
  }
  posix_fadvise(fd->get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  UpdateValidator v(expected, max_norm);
  std::vector<std::byte> buf(1 << 20);
  uint64_t offset = 0;
  while (true) {
    auto n = PreadFull(fd->get(), offset, buf, file);
    if (!n.ok()) {
      if (reason) *reason = RejectReason::kUnreadable;
      return n.status();
    }
    if (*n == 0) break;
    offset += *n;
    if (Status st = v.Feed(std::span(buf).first(*n)); !st.ok()) {
      if (reason) *reason = *v.reason();
      return st;
    }
    if (*n < buf.size()) break;
  }
  auto r = v.Finish();
  if (!r.ok() && reason) *reason = *v.reason();
  return r;
}

}  // namespace hanse::agg
