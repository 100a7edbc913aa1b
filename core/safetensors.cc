#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include "core/fsutil.h"

namespace hanse {
namespace {

using Json = nlohmann::json;

// The reference implementation refuses headers above 100 MB; so do we (a
// hostile length must not make us allocate or parse gigabytes).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr std::string_view kMetadataKey = "__metadata__";

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

std::string OffsetsString(uint64_t begin, uint64_t end) {
  std::string s = "[";  // appended: "[" + std::string trips a GCC 12 -Wrestrict false positive
  s += std::to_string(begin);
  s += ", ";
  s += std::to_string(end);
  s += ']';
  return s;
}

// Names from untrusted headers are quoted with control characters escaped, so an
// error message cannot forge log lines.
std::string Quoted(std::string_view name) {
  std::string s = "'";
  for (char c : name.substr(0, 200)) {
    auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", u);
      s += buf;
    } else {
      s += c;
    }
  }
  if (name.size() > 200) s += "...";
  return s + "'";
}

// Product of dims x element size, or nullopt on overflow.
std::optional<uint64_t> ByteSize(const std::vector<int64_t>& shape, size_t elem) {
  uint64_t n = elem;
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return std::nullopt;
  }
  return n;
}

// Tracks keys per JSON object while parsing: nlohmann keeps the last of duplicate
// keys silently, and a duplicated tensor name would hide a tensor.
class DuplicateKeyFinder {
 public:
  bool operator()(int depth, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
        stack_.push_back({{}, stack_.empty() ? std::string() : stack_.back().last_key, {}});
        break;
      case Json::parse_event_t::object_end:
        if (!stack_.empty()) stack_.pop_back();
        break;
      case Json::parse_event_t::key:
        if (!stack_.empty() && parsed.is_string()) {
          Level& level = stack_.back();
          level.last_key = parsed.get<std::string>();
          if (!level.keys.insert(level.last_key).second && !found_) {
            found_ = true;
            message_ = depth <= 1 ? "duplicate tensor name " + Quoted(level.last_key) + " in header"
                                  : "duplicate key " + Quoted(level.last_key) + " in " + Quoted(level.owner);
          }
        }
        break;
      default:
        break;
    }
    return true;
  }
  bool found() const { return found_; }
  const std::string& message() const { return message_; }

 private:
  struct Level {
    std::set<std::string> keys;
    std::string owner;     // the key whose value this object is
    std::string last_key;  // the key being parsed at this level
  };
  std::vector<Level> stack_;
  bool found_ = false;
  std::string message_;
};

Result<TensorInfo> ParseTensorEntry(const std::string& name, const Json& v, uint64_t data_len) {
  const std::string who = "tensor " + Quoted(name) + ": ";
  if (!v.is_object()) return Status::Corruption(who + "entry is not an object but " + v.type_name());
  for (const auto& [key, unused] : v.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets")
      return Status::Corruption(who + "unknown key " + Quoted(key));
  }
  TensorInfo t;
  t.name = name;

  auto dt = v.find("dtype");
  if (dt == v.end()) return Status::Corruption(who + "missing dtype");
  if (!dt->is_string()) return Status::Corruption(who + "dtype is not a string");
  auto parsed = ParseDType(dt->get_ref<const std::string&>());
  if (!parsed.ok()) return Status::Corruption(who + parsed.status().message());
  t.dtype = *parsed;

  auto sh = v.find("shape");
  if (sh == v.end()) return Status::Corruption(who + "missing shape");
  if (!sh->is_array()) return Status::Corruption(who + "shape is not a list of non-negative integers");
  for (const Json& d : *sh) {
    if (!d.is_number_unsigned() || d.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      return Status::Corruption(who + "shape " + sh->dump() + " is not a list of non-negative integers");
    t.shape.push_back(static_cast<int64_t>(d.get<uint64_t>()));
  }
  auto need = ByteSize(t.shape, DTypeSize(t.dtype));
  if (!need) return Status::Corruption(who + "shape " + ShapeString(t.shape) + " x " + DTypeName(t.dtype) +
                                       " overflows 64-bit byte size");

  auto off = v.find("data_offsets");
  if (off == v.end()) return Status::Corruption(who + "missing data_offsets");
  if (!off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() || !(*off)[1].is_number_unsigned())
    return Status::Corruption(who + "data_offsets " + off->dump() + " is not [begin, end] of non-negative integers");
  t.begin = (*off)[0].get<uint64_t>();
  t.end = (*off)[1].get<uint64_t>();
  if (t.begin > t.end)
    return Status::Corruption(who + "data_offsets " + OffsetsString(t.begin, t.end) + " has begin after end");
  if (t.end > data_len)
    return Status::Corruption(who + "data_offsets " + OffsetsString(t.begin, t.end) +
                              " out of bounds of the data section (" + std::to_string(data_len) + " bytes)");
  if (t.end - t.begin != *need)
    return Status::Corruption(who + "data_offsets " + OffsetsString(t.begin, t.end) + " hold " +
                              std::to_string(t.end - t.begin) + " bytes but shape " + ShapeString(t.shape) + " x " +
                              DTypeName(t.dtype) + " needs " + std::to_string(*need));
  return t;
}

}  // namespace

// ---- dtypes ----

const char* DTypeName(DType d) {
  switch (d) {
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    case DType::kI64: return "I64";
    case DType::kI32: return "I32";
  }
  return "?";
}

Result<DType> ParseDType(std::string_view name) {
  if (name == "F32") return DType::kF32;
  if (name == "F16") return DType::kF16;
  if (name == "BF16") return DType::kBF16;
  if (name == "I64") return DType::kI64;
  if (name == "I32") return DType::kI32;
  return Status::InvalidArgument("unsupported dtype " + Quoted(name) + " (supported: F32, F16, BF16, I64, I32)");
}

size_t DTypeSize(DType d) {
  switch (d) {
    case DType::kF32: return 4;
    case DType::kF16: return 2;
    case DType::kBF16: return 2;
    case DType::kI64: return 8;
    case DType::kI32: return 4;
  }
  return 0;
}

float BF16ToF32(uint16_t v) { return std::bit_cast<float>(static_cast<uint32_t>(v) << 16); }

uint16_t F32ToBF16(float v) {
  uint32_t x = std::bit_cast<uint32_t>(v);
  if ((x & 0x7fffffffu) > 0x7f800000u) {
    // NaN: keep sign and top payload bits, force the quiet bit so that a payload
    // living only in the low bits does not turn into infinity.
    return static_cast<uint16_t>((x >> 16) | 0x0040u);
  }
  // Round to nearest, ties to even; overflow rounds up to infinity as it should.
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

float F16ToF32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    // Zero or subnormal: mant x 2^-24, exact in float.
    float f = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -f : f;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));  // inf / NaN (payload kept)
  return std::bit_cast<float>(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t F32ToF16(float v) {
  uint32_t x = std::bit_cast<uint32_t>(v);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));  // quiet NaN
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to infinity
  if (ax >= 0x38800000u) {                                              // normal half
    uint32_t h = (((ax >> 23) - 112) << 10) | ((ax >> 13) & 0x3ffu);
    uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is correct
    return static_cast<uint16_t>(sign | h);
  }
  if (ax <= 0x33000000u) return static_cast<uint16_t>(sign);  // <= 2^-25 rounds (ties to even) to zero
  // Subnormal half: value / 2^-24, rounded to nearest even.
  uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
  uint32_t shift = 126 - (ax >> 23);  // 14..24
  uint32_t h = mant >> shift;
  uint32_t rem = mant & ((1u << shift) - 1);
  uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

uint64_t TensorInfo::numel() const {
  uint64_t n = 1;
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);  // validated against overflow at parse
  return n;
}

// ---- reading ----

SafetensorsFile::~SafetensorsFile() {
  if (mapped_ && base_ != nullptr) ::munmap(const_cast<std::byte*>(base_), size_);
}

Result<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::filesystem::path& path) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  HANSE_ASSIGN_OR_RETURN(UniqueFd fd, OpenFd(path, O_RDONLY));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus("stat", path, errno);
  if (!S_ISREG(st.st_mode)) return Status::InvalidArgument("safetensors " + path.string() + ": not a regular file");
  f->size_ = static_cast<uint64_t>(st.st_size);
  if (f->size_ > 0) {
    void* p = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd.get(), 0);
    if (p == MAP_FAILED) return ErrnoStatus("mmap", path, errno);
    f->base_ = static_cast<const std::byte*>(p);
    f->mapped_ = true;
  }
  HANSE_RETURN_IF_ERROR(f->Parse());
  return f;
}

Result<std::unique_ptr<SafetensorsFile>> SafetensorsFile::FromBytes(std::string bytes) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = "<memory>";
  f->owned_ = std::move(bytes);
  f->base_ = reinterpret_cast<const std::byte*>(f->owned_.data());
  f->size_ = f->owned_.size();
  HANSE_RETURN_IF_ERROR(f->Parse());
  return f;
}

Status SafetensorsFile::Parse() {
  const std::string where = "safetensors " + path_.string() + ": ";
  auto fail = [&](const std::string& m) { return Status::Corruption(where + m); };

  if (size_ < 8) return fail("file is " + std::to_string(size_) + " bytes, shorter than the 8-byte header length");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(base_[i]);
  if (header_len > size_ - 8)
    return fail("header length " + std::to_string(header_len) + " beyond the end of the file (" +
                std::to_string(size_ - 8) + " bytes follow it)");
  if (header_len > kMaxHeaderBytes)
    return fail("header length " + std::to_string(header_len) + " above the limit of " +
                std::to_string(kMaxHeaderBytes) + " bytes");
  data_offset_ = 8 + header_len;
  const uint64_t data_len = size_ - data_offset_;
  std::string_view header(reinterpret_cast<const char*>(base_ + 8), header_len);

  Json doc;
  DuplicateKeyFinder dups;
  try {
    doc = Json::parse(header.begin(), header.end(), std::ref(dups));
  } catch (const Json::exception& e) {
    return fail(std::string("header is not valid JSON: ") + e.what());
  }
  if (dups.found()) return fail(dups.message());
  if (!doc.is_object()) return fail(std::string("header is not a JSON object but ") + doc.type_name());

  tensors_.clear();
  metadata_.clear();
  index_.clear();
  for (const auto& [name, value] : doc.items()) {
    if (name == kMetadataKey) {
      if (value.is_null()) continue;  // the reference reader accepts a null metadata
      if (!value.is_object()) return fail("__metadata__ is not an object of strings");
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string())
          return fail("__metadata__ key " + Quoted(k) + " is not a string but " + v.type_name() +
                      " (metadata must map strings to strings)");
        metadata_.emplace(k, v.get<std::string>());
      }
      continue;
    }
    auto t = ParseTensorEntry(name, value, data_len);
    if (!t.ok()) return fail(t.status().message());
    tensors_.push_back(std::move(t).value());
  }

  // The data section must be covered exactly: sorted by offsets, each tensor
  // starts where the previous one ended, and the last ends at the end of the file.
  std::sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t covered = 0;
  const TensorInfo* prev = nullptr;
  for (const TensorInfo& t : tensors_) {
    if (t.begin < covered)
      return fail("tensor " + Quoted(t.name) + ": data_offsets " + OffsetsString(t.begin, t.end) +
                  " overlap tensor " + Quoted(prev->name) + " " + OffsetsString(prev->begin, prev->end));
    if (t.begin > covered)
      return fail("tensor " + Quoted(t.name) + ": data_offsets " + OffsetsString(t.begin, t.end) +
                  " leave a hole: bytes [" + std::to_string(covered) + ", " + std::to_string(t.begin) +
                  ") of the data section belong to no tensor");
    covered = t.end;
    prev = &t;
  }
  if (covered != data_len)
    return fail("tensors cover " + std::to_string(covered) + " bytes but the data section holds " +
                std::to_string(data_len) + " (trailing bytes belong to no tensor)");
  for (size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
  return Status::Ok();
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const std::byte> SafetensorsFile::Data(const TensorInfo& t) const {
  // Bounds were validated at open; a TensorInfo from elsewhere is a bug.
  HANSE_CHECK(t.begin <= t.end && t.end <= size_ - data_offset_, "tensor", t.name, "is not from this file");
  if (t.begin == t.end) return {};
  return {base_ + data_offset_ + t.begin, static_cast<size_t>(t.end - t.begin)};
}

// ---- writing ----

Result<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::Begin(std::vector<TensorSpec> specs,
                                                                    std::map<std::string, std::string> metadata,
                                                                    Sink sink) {
  std::unique_ptr<SafetensorsWriter> w(new SafetensorsWriter());
  // Key order in the header: __metadata__ first, then tensors as given (ordered_json
  // keeps insertion order; the plain json type would sort the names).
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header[std::string(kMetadataKey)] = std::move(m);
  }
  std::set<std::string_view> names;
  uint64_t offset = 0;
  for (const TensorSpec& s : specs) {
    const std::string who = "tensor " + Quoted(s.name) + ": ";
    if (s.name.empty()) return Status::InvalidArgument("tensor with an empty name");
    if (s.name == kMetadataKey) return Status::InvalidArgument(who + "name is reserved for metadata");
    if (!names.insert(s.name).second) return Status::InvalidArgument(who + "duplicate tensor name");
    auto bytes = ByteSize(s.shape, DTypeSize(s.dtype));
    if (!bytes) return Status::InvalidArgument(who + "shape " + ShapeString(s.shape) + " has a negative dimension or overflows");
    uint64_t end = 0;
    if (__builtin_add_overflow(offset, *bytes, &end)) return Status::InvalidArgument(who + "total size overflows");
    header[s.name] = {{"dtype", DTypeName(s.dtype)}, {"shape", s.shape}, {"data_offsets", {offset, end}}};
    w->sizes_.push_back(*bytes);
    offset = end;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {  // invalid UTF-8 in a name or metadata
    return Status::InvalidArgument(std::string("safetensors header cannot be written: ") + e.what());
  }
  // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string prefix(8, '\0');
  uint64_t len = text.size();
  for (int i = 0; i < 8; ++i) prefix[static_cast<size_t>(i)] = static_cast<char>((len >> (8 * i)) & 0xff);
  prefix += text;

  w->specs_ = std::move(specs);
  w->sink_ = std::move(sink);
  w->total_size_ = prefix.size() + offset;
  HANSE_RETURN_IF_ERROR(w->sink_(std::as_bytes(std::span<const char>(prefix.data(), prefix.size()))));
  return w;
}

Status SafetensorsWriter::Write(std::span<const std::byte> bytes) {
  // Validate the whole span against what the remaining tensors hold before the
  // sink sees any of it, so a rejected write leaves the output unchanged.
  size_t cur = current_;
  uint64_t in_cur = written_in_current_;
  uint64_t left = bytes.size();
  while (left > 0) {
    if (cur >= sizes_.size())
      return Status::InvalidArgument("safetensors writer: " + std::to_string(left) +
                                     " bytes more than the tensors hold");
    uint64_t room = sizes_[cur] - in_cur;
    uint64_t take = std::min(room, left);
    left -= take;
    in_cur += take;
    if (in_cur == sizes_[cur]) {
      ++cur;
      in_cur = 0;
    }
  }
  // Zero-size tensors after the last full one are complete too.
  while (cur < sizes_.size() && sizes_[cur] == 0 && in_cur == 0) ++cur;
  if (!bytes.empty()) HANSE_RETURN_IF_ERROR(sink_(bytes));
  current_ = cur;
  written_in_current_ = in_cur;
  return Status::Ok();
}

Status SafetensorsWriter::Finish() {
  while (current_ < sizes_.size() && sizes_[current_] == 0) ++current_;
  if (current_ < sizes_.size())
    return Status::FailedPrecondition("safetensors writer: tensor " + Quoted(specs_[current_].name) + " received " +
                                      std::to_string(written_in_current_) + " of " +
                                      std::to_string(sizes_[current_]) + " bytes");
  return Status::Ok();
}

namespace {

Status CheckOwned(const std::vector<OwnedTensor>& tensors, std::vector<TensorSpec>* specs) {
  for (const OwnedTensor& t : tensors) {
    auto need = ByteSize(t.shape, DTypeSize(t.dtype));
    if (need && *need != t.bytes.size())
      return Status::InvalidArgument("tensor " + Quoted(t.name) + ": holds " + std::to_string(t.bytes.size()) +
                                     " bytes but shape " + ShapeString(t.shape) + " x " + DTypeName(t.dtype) +
                                     " needs " + std::to_string(*need));
    specs->push_back({t.name, t.dtype, t.shape});
  }
  return Status::Ok();
}

Status WriteOwned(const std::vector<OwnedTensor>& tensors, const std::map<std::string, std::string>& metadata,
                  SafetensorsWriter::Sink sink) {
  std::vector<TensorSpec> specs;
  HANSE_RETURN_IF_ERROR(CheckOwned(tensors, &specs));
  HANSE_ASSIGN_OR_RETURN(auto w, SafetensorsWriter::Begin(std::move(specs), metadata, std::move(sink)));
  for (const OwnedTensor& t : tensors)
    HANSE_RETURN_IF_ERROR(w->Write(std::as_bytes(std::span<const char>(t.bytes.data(), t.bytes.size()))));
  return w->Finish();
}

}  // namespace

Result<std::string> SerializeSafetensors(const std::vector<OwnedTensor>& tensors,
                                         const std::map<std::string, std::string>& metadata) {
  std::string out;
  HANSE_RETURN_IF_ERROR(WriteOwned(tensors, metadata, [&out](std::span<const std::byte> b) {
    out.append(reinterpret_cast<const char*>(b.data()), b.size());
    return Status::Ok();
  }));
  return out;
}

Status WriteSafetensorsFile(const std::filesystem::path& path, const std::vector<OwnedTensor>& tensors,
                            const std::map<std::string, std::string>& metadata) {
  // Streams into a temp file next to `path` (no second copy of the model in
  // memory), then fsync + rename + fsync of the folder.
  std::filesystem::path tmp = TempPathFor(path);
  auto fd = OpenFd(tmp, O_WRONLY | O_CREAT | O_EXCL, 0644);
  if (!fd.ok()) return Status::Io(fd.status().message());
  Status st = WriteOwned(tensors, metadata,
                         [&](std::span<const std::byte> b) { return WriteAll(fd->get(), b, tmp); });
  if (st.ok()) st = Fsync(fd->get(), tmp);
  if (st.ok()) st = fd->Close(tmp);
  if (st.ok()) st = RenameDurable(tmp, path);
  if (!st.ok()) ::unlink(tmp.c_str());
  return st;
}

}  // namespace hanse
