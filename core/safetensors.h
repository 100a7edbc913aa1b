// safetensors: 8-byte little-endian header length, a JSON header
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//  "__metadata__": {"k": "v"}}, then raw little-endian tensor data.
//
// SafetensorsFile maps a file read-only and validates the whole header on open
// (offsets in bounds, non-overlapping, size = shape x dtype size, no overflow):
// every later access is in bounds. Errors name the tensor and the problem.
// The data section must be covered exactly (no holes, no overlaps, no trailing
// bytes), as the reference implementation requires. The file must not be
// truncated while open (it is mapped; blob store files never change).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"

namespace hanse {

enum class DType : uint8_t { kF32, kF16, kBF16, kI64, kI32 };
const char* DTypeName(DType d);                 // "F32", "F16", "BF16", "I64", "I32"
Result<DType> ParseDType(std::string_view name);
size_t DTypeSize(DType d);

// bf16/fp16 <-> fp32 conversions (round to nearest even on the way down).
float BF16ToF32(uint16_t v);
uint16_t F32ToBF16(float v);
float F16ToF32(uint16_t v);
uint16_t F32ToF16(float v);

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;   // byte offsets relative to the start of the data section
  uint64_t end = 0;
  uint64_t numel() const;
  uint64_t nbytes() const { return end - begin; }
};

class SafetensorsFile {
 public:
  static Result<std::unique_ptr<SafetensorsFile>> Open(const std::filesystem::path& path);
  // Parses an in-memory buffer (copied); for tests and small blobs.
  static Result<std::unique_ptr<SafetensorsFile>> FromBytes(std::string bytes);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;             // owns a mapping
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // Tensors in header order of their data offsets (ascending begin).
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* Find(std::string_view name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Raw little-endian bytes of a tensor (a view into the mapping, valid while this
  // object lives). Not necessarily aligned for the element type: memcpy out of it.
  std::span<const std::byte> Data(const TensorInfo& t) const;
  uint64_t data_offset() const { return data_offset_; }   // file offset of the data section
  const std::filesystem::path& path() const { return path_; }

 private:
  SafetensorsFile() = default;
  Status Parse();  // validates the header of [base_, base_ + size_)
  std::filesystem::path path_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, size_t, std::less<>> index_;  // name -> position in tensors_
  const std::byte* base_ = nullptr;   // start of the mapping
  uint64_t size_ = 0;
  uint64_t data_offset_ = 0;
  std::string owned_;                 // FromBytes storage
  bool mapped_ = false;
};

// Writes tensors in the given order, streaming: the header is computed from
// the specs, then each tensor's bytes are produced by the caller.
struct TensorSpec {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
};

class SafetensorsWriter {
 public:
  // `sink` receives the bytes in file order (header first).
  using Sink = std::function<Status(std::span<const std::byte>)>;
  static Result<std::unique_ptr<SafetensorsWriter>> Begin(std::vector<TensorSpec> specs,
                                                          std::map<std::string, std::string> metadata, Sink sink);
  // Appends bytes of the current tensor; tensors are filled in spec order.
  Status Write(std::span<const std::byte> bytes);
  // Checks that every tensor received exactly its size.
  Status Finish();
  uint64_t total_size() const { return total_size_; }

 private:
  SafetensorsWriter() = default;
  std::vector<TensorSpec> specs_;
  std::vector<uint64_t> sizes_;
  Sink sink_;
  size_t current_ = 0;
  uint64_t written_in_current_ = 0;
  uint64_t total_size_ = 0;
};

// Convenience for small models and tests: whole tensors in memory.
struct OwnedTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::string bytes;
};
Result<std::string> SerializeSafetensors(const std::vector<OwnedTensor>& tensors,
                                         const std::map<std::string, std::string>& metadata = {});
Status WriteSafetensorsFile(const std::filesystem::path& path, const std::vector<OwnedTensor>& tensors,
                            const std::map<std::string, std::string>& metadata = {});

}  // namespace hanse
